"""Task change events, published on Redis pub/sub after each transition commits.

The event stream endpoint (`…/tasks/{id}/events`) relays them to clients; a lost event
costs nothing durable (the database has the state), so publishing never fails a caller.
"""

import json
import logging
from typing import TYPE_CHECKING

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

if TYPE_CHECKING:
    from taskqueue.models import Task

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "taskqueue:task:"
TERMINAL = ("completed", "failed", "cancelled")


def channel(task_id: int) -> str:
    return f"{CHANNEL_PREFIX}{task_id}"


def snapshot(task: "Task") -> dict:
    """What an event says about a task: its state, attempt and progress."""
    return {
        "task_id": task.pk,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "error_code": task.error_code,
        "updated_at": task.updated_at,
    }


def task_changed(task: "Task") -> None:
    """Publish the task's new state once the current transaction commits."""
    transaction.on_commit(lambda: _publish(task))


def _publish(task: "Task") -> None:
    from taskqueue import backend

    name = channel(task.pk)
    try:
        backend.get_connection().publish(name, json.dumps(snapshot(task), cls=DjangoJSONEncoder))
    except backend.RedisError as exc:
        logger.debug("Event for %s not published: %s", name, exc)
