from django.urls import path

from tests.example_app import views

urlpatterns = [
    path("add", views.enqueue_add, name="example-add"),
    path("results/<str:result_id>", views.show_result, name="example-result"),
]
