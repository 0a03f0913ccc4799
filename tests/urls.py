"""The project's URLs, plus the example app's (tests only)."""

from django.urls import include, path

from project.urls import *  # noqa: F403
from project.urls import urlpatterns as project_urlpatterns

urlpatterns = [path("example/", include("tests.example_app.urls")), *project_urlpatterns]
