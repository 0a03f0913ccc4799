"""The operator's console: tasks, their live pages, bulk actions and the dashboard."""

from taskqueue.admin.task import TaskAdmin

__all__ = ["TaskAdmin"]
