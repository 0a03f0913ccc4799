"""Task events, published on Redis pub/sub: a task's creation (in the pipeline that
enqueues its job) and each transition (once it commits).

The event stream endpoints (`…/events`, `…/tasks/{id}/events`) relay them to clients; a lost
event costs nothing durable (the database has the state), so publishing never fails a caller.
"""

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
    """What an event says about a task: its type, state, attempt and progress (in percent,
    to 0.1, as the console shows it)."""
    return {
        "task_id": task.pk,
        "task_type": task.task_type,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "progress": None if task.progress is None else round(task.progress, 1),
        "progress_message": task.progress_message,
        "error_code": task.error_code,
        "updated_at": task.updated_at,
    }


def task_changed(task: "Task") -> None:
    """Publish the task's new state once the current transaction commits."""
    transaction.on_commit(lambda: _publish(task))


def created(task: "Task") -> tuple[str, str]:
    """The event announcing a new task, as (channel, message), for the MULTI/EXEC that
    enqueues its job (backend.dispatch) to publish: no round trip of its own, and no worker
    can announce the task's lease before it."""
    return channel(task.pk), json.dumps(snapshot(task), cls=DjangoJSONEncoder)


def task_created(task: "Task") -> None:
    """Publish a new task's first event now (where no job is enqueued: inline runs)."""
    _publish(task)


# Events kept by `held()` for the caller's next Redis pipeline: (channel, message).
_held: list[tuple[str, str]] | None = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Keep the events published within, for `send_held(pipeline)` to send in a pipeline
    the caller runs anyway (the worker: no round trip of their own); what is left is
    published on the way out."""
    global _held
    outer, _held = _held, []
    try:
        yield
    finally:
        left, _held = _held, outer
        if left:
            from taskqueue import backend

            try:
                with backend.get_connection().pipeline(transaction=False) as pipeline:
                    send(left, pipeline)
                    pipeline.execute()
            except backend.RedisError as exc:
                logger.debug("%d events not published: %s", len(left), exc)


def forget_held() -> None:
    """In a process forked inside `held()` (a work horse): those events are the parent's to
    send; this process publishes its own at once."""
    global _held  # noqa: PLW0603 (one list per process, by design)
    _held = None


def send_held(pipeline: Any) -> None:
    """Add the events kept so far to `pipeline` (they are sent when it executes)."""
    send(take_held(), pipeline)


def keep(pairs: list[tuple[str, str]]) -> None:
    """Hold `pairs` (taken with `take_held` in an earlier `held()`) in the current one."""
    if pairs:
        _held.extend(pairs)


def take_held() -> list[tuple[str, str]]:
    """The events kept so far, as (channel, message) pairs, for the caller to publish."""
    if not _held:
        return []
    taken = list(_held)
    _held.clear()
    return taken


def send(events: list[tuple[str, str]], pipeline: Any) -> None:
    """Add `events` ((channel, message) pairs) to `pipeline`."""
    for name, message in events:
        pipeline.publish(name, message)


def _publish(task: "Task") -> None:
    from taskqueue import backend

    name = channel(task.pk)
    message = json.dumps(snapshot(task), cls=DjangoJSONEncoder)
    if _held is not None:
        _held.append((name, message))
        return
    try:
        backend.get_connection().publish(name, message)
    except backend.RedisError as exc:
        logger.debug("Event for %s not published: %s", name, exc)
