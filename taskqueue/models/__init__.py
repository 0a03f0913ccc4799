"""The engine's models: tasks, their attempts, and schedules."""

from taskqueue.models.schedule import Schedule
from taskqueue.models.task import MAX_ID, Task, TaskAttempt, TaskQuerySet, job_id_for

__all__ = ["MAX_ID", "Schedule", "Task", "TaskAttempt", "TaskQuerySet", "job_id_for"]
