"""URL configuration."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from taskqueue.admin.views import favicon
from taskqueue.api.docs import redoc_script
from taskqueue.api.exceptions import api_not_found
from taskqueue.api.views import ApiRootView, MetricsView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon, name="favicon"),
    path("api/", ApiRootView.as_view(), name="api-root"),
    path("api/system/maintenance/", ApiRootView.as_view(), name="api-maintenance-root"),
    path("api/system/maintenance/", include("maintenance.api")),
    path("api/system/maintenance/", include("taskqueue.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/redoc/redoc.standalone.js", redoc_script, name="redoc-script"),
    path("api/auth/", include("rest_framework.urls")),
    path("metrics", MetricsView.as_view(), name="metrics"),
    re_path(r"^api/", api_not_found),
]

handler400 = "taskqueue.api.exceptions.bad_request"
handler403 = "taskqueue.api.exceptions.permission_denied"
handler500 = "taskqueue.api.exceptions.server_error"
