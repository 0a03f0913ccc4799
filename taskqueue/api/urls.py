"""Routes under /api/system/maintenance/: tasks and stats."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from taskqueue.api.stream import all_events, task_events
from taskqueue.api.views import ScheduleViewSet, StatsView, TaskViewSet

router = SimpleRouter(trailing_slash=False)
router.register("tasks", TaskViewSet, basename="taskqueue-task")
router.register("schedules", ScheduleViewSet, basename="taskqueue-schedule")

urlpatterns = [
    path("stats", StatsView.as_view(), name="taskqueue-stats"),
    path("tasks/<int:pk>/events", task_events, name="taskqueue-task-events"),
    path("events", all_events, name="taskqueue-events"),
    *router.urls,
]
