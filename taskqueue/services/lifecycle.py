"""Public services of the engine: enqueue, cancel and retry tasks."""

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction

from taskqueue import backend, events
from taskqueue.conf import conf
from taskqueue.exceptions import (
    InvalidTransition,
    QueueUnavailable,
    TaskNotFound,
    TooManyActiveTasks,
)
from taskqueue.models import Task
from taskqueue.registry import get_task_type, queue_for_priority

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
STOPPING = "stopping"


def enqueue_task(
    task_type: str,
    payload: dict[str, Any] | None = None,
    *,
    requested_by: Any = None,
    source: str = "",
    retry_of: Task | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    timeout: int | None = None,
    queue: str | None = None,
    run_after: datetime | None = None,
) -> tuple[Task, bool]:
    """Record a task and enqueue its job once the caller's transaction commits.

    Returns (task, created): for a deduplicated type (exclusive ones are), a request
    identical to an active task returns that task with created=False. Raises UnknownTaskType
    or InvalidPayload. `queue` defaults to the type's, else the priority's; `run_after`
    schedules the first attempt. If Redis is down the task stays queued with no job, for
    the reconciler to dispatch; with USE_TASK_QUEUE off it runs inline before this returns.
    """
    spec = get_task_type(task_type)
    policy = spec.policy
    cleaned = spec.validate_payload(payload)
    dedup_key = _dedup_key(task_type, cleaned) if policy.deduplicates else None
    if dedup_key and (existing := Task.objects.active().filter(dedup_key=dedup_key).first()):
        return existing, False
    if _at_cap(task_type):
        raise TooManyActiveTasks(
            f"{conf.MAX_ACTIVE_PER_TYPE} {task_type} tasks are already waiting or running."
        )
    priority = policy.priority if priority is None else priority
    fields = {
        "task_type": task_type,
        "payload": cleaned,
        "max_attempts": max_attempts or policy.max_attempts,
        "timeout": timeout or policy.timeout,
        "priority": priority,
        "queue": queue or spec.queue or queue_for_priority(priority),
        "next_attempt_at": run_after,
        "dedup_key": dedup_key,
        "exclusive": policy.exclusive,
        "requested_by": requested_by,
        "source": source[:100],
        "retry_of": retry_of,
    }
    try:
        # Only a deduplicated type can collide (and then must not spoil the caller's
        # transaction); others save in autocommit, without BEGIN and COMMIT round trips.
        with transaction.atomic() if dedup_key else nullcontext():
            task = Task.objects.add(**fields)
    except IntegrityError:
        existing = Task.objects.active().filter(dedup_key=dedup_key).first() if dedup_key else None
        if existing is None:
            raise
        return existing, False
    if conf.USE_TASK_QUEUE:
        transaction.on_commit(partial(_dispatch, task))
    else:
        from taskqueue.execution import run_inline  # worker-side module, loaded only here

        transaction.on_commit(partial(events.task_created, task))
        transaction.on_commit(partial(run_inline, task.pk))
    return task, True


# Each process's count of a type's active tasks: (cap, tasks counted + accepted since).
_cap_seen: dict[str, tuple[int, int]] = {}


def _at_cap(task_type: str) -> bool:
    """Whether MAX_ACTIVE_PER_TYPE tasks of this type are active: a soft limit.

    Counting reads up to `cap` index entries and rows (0.9 ms of server time an enqueue in a
    burst of 1,000, measured), so while this process's own tally (its last count plus what
    it accepted since) is under half the cap it is trusted; from there every enqueue counts.
    P processes can thus admit up to P * cap / 2 before their counts catch up.
    """
    cap = conf.MAX_ACTIVE_PER_TYPE
    counted_for, tally = _cap_seen.get(task_type, (cap, cap))
    if counted_for == cap and tally < cap // 2:
        _cap_seen[task_type] = (cap, tally + 1)
        return False
    active = Task.objects.count_active(task_type, up_to=cap)
    _cap_seen[task_type] = (cap, active + 1)
    return active >= cap


def _dedup_key(task_type: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, cls=DjangoJSONEncoder)
    return hashlib.sha256(f"{task_type}\n{canonical}".encode()).hexdigest()


def _dispatch(task: Task) -> None:
    try:
        # announced with its job, in the same round trip
        backend.dispatch(task, delay=task.dispatch_delay(), publish=[events.created(task)])
    except QueueUnavailable as exc:
        logger.warning("Task %s stays queued until Redis is back: %s", task.pk, exc)


def _get(task: Task | int) -> Task:
    if isinstance(task, Task):
        return task
    try:
        return Task.objects.get(pk=task)
    except (Task.DoesNotExist, ValueError, TypeError):
        raise TaskNotFound(f"Task {task} does not exist.") from None


def cancel_task(task: Task | int, *, by: Any = None, wait: float | None = None) -> str:
    """Cancel a waiting task, or stop a running one; says what really happened.

    Returns CANCELLED when the task is now cancelled (it was waiting, or its worker stopped
    it within `wait` seconds: STOP_WAIT_SECONDS by default), or STOPPING when the stop is
    recorded on the task and sent, and its worker has not confirmed it yet (it will: the
    worker honours it at once, or at its next heartbeat, or the reconciler ends the
    attempt). Raises InvalidTransition if the task is or becomes terminal first: an attempt
    that completes or fails before the stop takes effect wins, and the task says so.
    Inside a transaction it does not wait (the stop is sent when the transaction commits).
    """
    task = _get(task)
    wait = conf.STOP_WAIT_SECONDS if wait is None else wait
    deadline = time.monotonic() + (0 if transaction.get_connection().in_atomic_block else wait)
    asked = False
    while True:
        if task.status in Task.WAITING_STATUSES and task.cancel(by=by):
            transaction.on_commit(partial(_quietly, backend.delete_job, task.job_id))
            return CANCELLED
        if task.status == Task.Status.LEASED:
            if not asked:
                _ask_to_stop(task, by=by)
                asked = True
            if time.monotonic() >= deadline:
                return STOPPING
            time.sleep(STOP_POLL_SECONDS)
        elif task.is_terminal:
            if asked and task.status == Task.Status.CANCELLED:
                return CANCELLED
            raise InvalidTransition(
                f"Task {task.pk} is {task.status}; only queued, retrying or running tasks"
                " can be cancelled."
            )
        task.refresh_from_db()


# How often a cancel waiting for its stop looks at the task.
STOP_POLL_SECONDS = 0.05


def _ask_to_stop(task: Task, *, by: Any) -> None:
    """Record the stop on the leased task and send it to the worker that leased the attempt."""
    task.request_stop(by=by)  # False if already asked: send it again all the same
    worker = task.current_worker_name()
    if worker:
        stop = partial(backend.stop_job, worker_name=worker)
        transaction.on_commit(partial(_quietly, stop, task.job_id))


def _quietly(action: Any, job_id: str) -> None:
    try:
        action(job_id)
    except QueueUnavailable as exc:
        logger.warning("Job %s: the reconciler will finish this: %s", job_id, exc)


def retry_task(task: Task | int, *, by: Any = None, source: str = "") -> Task:
    """A new task with the same type and payload as a terminal one (`retry_of` links them)."""
    task = _get(task)
    if not task.is_terminal:
        raise InvalidTransition(
            f"Task {task.pk} is {task.status}; only finished tasks can be retried."
        )
    new_task, _ = enqueue_task(
        task.task_type,
        task.payload,
        requested_by=by,
        source=source or task.source,
        retry_of=task,
        priority=task.priority,
        max_attempts=task.max_attempts,
        timeout=task.timeout,
        queue=task.queue,
    )
    return new_task
