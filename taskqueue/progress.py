"""Progress reporting for handlers: `report_progress(42, "3 of 7 files")`.

Inside a running task it records percent and message on the task (throttled to one write
a second); anywhere else it does nothing, so operations stay plain callable functions.
"""

import contextlib
import contextvars
import time
from dataclasses import dataclass

from django.db import DatabaseError

from taskqueue.models import Task

MIN_INTERVAL = 1.0


@dataclass
class _Current:
    task: Task
    attempt: int
    last_write: float = 0.0


_current: contextvars.ContextVar[_Current | None] = contextvars.ContextVar("task", default=None)


def report_progress(percent: float | None, message: str = "") -> None:
    """Record how far the current task is; `percent` None keeps the last percentage."""
    current = _current.get()
    if current is None:
        return
    now = time.monotonic()
    if now - current.last_write < MIN_INTERVAL and (percent is None or percent < 100):
        return
    current.last_write = now
    # Progress is advisory: a failed write must not fail the attempt.
    with contextlib.suppress(DatabaseError):
        current.task.report_progress(attempt=current.attempt, percent=percent, message=message)


def running(task: Task, attempt: int) -> contextvars.Token:
    """Mark `task` as the one progress reports go to (until `finished(token)`)."""
    return _current.set(_Current(task, attempt))


def finished(token: contextvars.Token) -> None:
    _current.reset(token)


def current_attempt() -> tuple[int, int] | None:
    """(task id, attempt number) of the task this code runs in, or None outside a task."""
    current = _current.get()
    return None if current is None else (current.task.pk, current.attempt)
