"""The engine's models: tasks, their attempts, and schedules."""

from taskqueue.models.schedule import Schedule
from taskqueue.models.task import Task, TaskAttempt, TaskQuerySet, job_id_for

__all__ = ["Schedule", "Task", "TaskAttempt", "TaskQuerySet", "job_id_for"]
