"""Public services of the engine."""

from taskqueue.services.lifecycle import (
    CANCELLED,
    STOPPING,
    cancel_task,
    enqueue_task,
    retry_task,
)
from taskqueue.services.reconcile import reconcile_tasks
from taskqueue.services.retention import prune_tasks

__all__ = [
    "CANCELLED",
    "STOPPING",
    "cancel_task",
    "enqueue_task",
    "prune_tasks",
    "reconcile_tasks",
    "retry_task",
]
