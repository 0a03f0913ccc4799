"""The operator's console: tasks, their live pages, bulk actions and the dashboard."""

from taskqueue.admin.schedule import ScheduleAdmin
from taskqueue.admin.task import TaskAdmin

__all__ = ["ScheduleAdmin", "TaskAdmin"]
