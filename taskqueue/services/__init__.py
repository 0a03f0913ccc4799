"""Public services of the engine."""

from taskqueue.services.lifecycle import (
    CANCELLED,
    STOPPING,
    cancel_task,
    enqueue_task,
    retry_task,
)
from taskqueue.services.reconcile import reconcile_tasks

__all__ = [
    "CANCELLED",
    "STOPPING",
    "cancel_task",
    "enqueue_task",
    "reconcile_tasks",
    "retry_task",
]
