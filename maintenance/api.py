"""Routes under /api/system/maintenance/: one POST per operation."""

from django.urls import path

from taskqueue.api.views import enqueue_view

urlpatterns = [
    path("cleanup-runs", enqueue_view("cleanup_runs").as_view(), name="maintenance-cleanup-runs"),
    path("health-check", enqueue_view("health_check").as_view(), name="maintenance-health-check"),
    path(
        "cleanup-temp-files",
        enqueue_view("cleanup_temp_files").as_view(),
        name="maintenance-cleanup-temp-files",
    ),
    path(
        "log-statistics",
        enqueue_view("log_statistics").as_view(),
        name="maintenance-log-statistics",
    ),
]
