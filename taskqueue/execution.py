"""One attempt of a task: run its handler, and record the outcome.

`perform` runs a leased task's handler and says what happened, writing nothing but
progress: our worker's long-lived horse calls it (taskqueue.worker, where the worker
process leases and records), and so do the two other ways a task can run here:

- `run_task`, the RQ job function, when a worker of another class (RQ's own, SimpleWorker)
  runs the job: it leases, performs and records in that worker's process, and re-raises a
  failure so that RQ's retry runs;
- `run_inline`, with USE_TASK_QUEUE off: attempts back to back in the caller's process.
"""

import json
import logging
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connections
from django.utils import timezone

from taskqueue import backend, progress
from taskqueue.conf import conf
from taskqueue.exceptions import InvalidPayload, QueueUnavailable, TaskError, UnknownTaskType
from taskqueue.models import Task
from taskqueue.registry import get_task_type

logger = logging.getLogger(__name__)

# Pauses between tries of a worker's write that must get through (an end, or the check of an
# unconfirmed lease), riding out a short outage.
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0)
T = TypeVar("T")

COMPLETED = "completed"
FAILED = "failed"


class AttemptFailed(Exception):
    """Raised by `run_task` after recording a failure, so that RQ retries or fails the job."""


def perform(task: Task, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the handler of leased `task`; the outcome, never an exception.

    {"status": "completed", "result": {...}} or {"status": "failed", "error_code",
    "error_message", "traceback", "retryable"}. `payload` is the validated payload
    (None: validate here). A timeout raised into the handler is a retryable "timeout".
    """
    token = progress.running(task, task.attempts)
    try:
        spec = get_task_type(task.task_type)
        if payload is None:
            payload = spec.validate_payload(task.payload)
        return {"status": COMPLETED, "result": _json_object(spec.handler(**payload))}
    except Exception as exc:
        return failure(exc)
    finally:
        progress.finished(token)


def failure(exc: BaseException) -> dict[str, Any]:
    """The outcome of an attempt that raised `exc`."""
    code, retryable = _classify(exc)
    message = exc.message if isinstance(exc, TaskError) else f"{type(exc).__name__}: {exc}"
    return {
        "status": FAILED,
        "error_code": code,
        "error_message": message,
        "traceback": (isinstance(exc, TaskError) and exc.traceback)
        or "".join(traceback.format_exception(exc)),
        "retryable": retryable,
    }


def validate(task: Task) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(validated payload, None), or (None, the failed outcome) for a task that cannot run."""
    try:
        return get_task_type(task.task_type).validate_payload(task.payload), None
    except (UnknownTaskType, InvalidPayload) as exc:
        return None, failure(exc)


# What record_outcome did with an attempt's outcome.
WRITTEN = "written"
REFUSED = "refused"  # the attempt had already ended elsewhere: the outcome is stale
NOT_WRITTEN = "not written"  # the database stayed unreachable


def record_outcome(
    task: Task, outcome: dict[str, Any], *, retry_at: Any = None, unconfirmed: bool = False
) -> str:
    """End attempt `task.attempts` with `outcome` (retrying at `retry_at`, if given).

    WRITTEN; REFUSED if the attempt had already ended (the reconciler judged its worker
    gone: this late outcome must be recorded nowhere); NOT_WRITTEN if the database stayed
    unreachable (the reconciler will end the attempt, from RQ's copy of the outcome).
    `unconfirmed`: the caller's own statement that wrote this end may have committed (see
    `_record`).
    """
    number = task.attempts
    if outcome["status"] == COMPLETED:
        confirm = partial(task.ended_as, attempt=number, status=Task.Status.COMPLETED)
        return _record(
            task, task.complete, confirm, unconfirmed, attempt=number, result=outcome["result"]
        )
    confirm = partial(
        task.ended_as,
        attempt=number,
        status=Task.Status.RETRYING if retry_at else Task.Status.FAILED,
        error_code=outcome["error_code"],
        error_message=outcome["error_message"],
    )
    return _record(
        task,
        task.fail,
        confirm,
        unconfirmed,
        attempt=number,
        error_code=outcome["error_code"],
        error_message=outcome["error_message"],
        traceback=outcome.get("traceback", ""),
        retry_at=retry_at,
    )


def record_stopped(task: Task) -> str:
    """End attempt `task.attempts` as stopped (`Task.stopped`), tried as `record_outcome`
    tries its ends: WRITTEN, REFUSED or NOT_WRITTEN (the reconciler will end it stopped)."""
    number = task.attempts
    confirm = partial(task.ended_as, attempt=number, status=Task.Status.CANCELLED, **Task.STOPPED)
    return _record(task, task.stopped, confirm, False, attempt=number)


def retry_at_for(task: Task, outcome: dict[str, Any], delay: int | None) -> Any:
    """When a failed attempt is retried (`delay` seconds from now), or None if it is not."""
    if outcome["status"] != FAILED or not outcome.get("retryable") or delay is None:
        return None
    if task.attempts >= task.max_attempts:
        return None
    return timezone.now() + timedelta(seconds=delay)


def retried(call: Callable[[bool], T]) -> T:
    """`call(again)`, tried again while the database is unreachable (RECORD_RETRY_DELAYS);
    `again`: an earlier try raised, after its statement may have been sent."""
    delays, again = iter(RECORD_RETRY_DELAYS), False
    while True:
        try:
            return call(again)
        except (OperationalError, InterfaceError):
            delay = next(delays, None)
            if delay is None:
                raise
            again = True
            close_connections()
            time.sleep(delay)


def _record(
    task: Task,
    write: Callable[..., bool],
    confirm: Callable[[], bool],
    unconfirmed: bool,
    **values: Any,
) -> str:
    """`write(**values)`, an end of `task`'s attempt, retried: WRITTEN, REFUSED or
    NOT_WRITTEN. A try that raised may have committed all the same (the connection dropped
    after the statement was sent): a refusal after such a try is the end's own if
    `confirm()` finds it in the row, and then it counts as written (else the end looks like
    the reconciler's, and RQ would never hear of it)."""
    try:
        written = retried(lambda again: write(**values) or ((again or unconfirmed) and confirm()))
    except DatabaseError:
        logger.exception("Task %s: the end of attempt %s could not be recorded", task.pk,
                         task.attempts)  # fmt: skip
        return NOT_WRITTEN
    return WRITTEN if written else REFUSED


def run_task(task_id: int, dispatch: int = 0) -> dict[str, Any]:
    """The RQ job function, as run by a worker of another class than ours."""
    context = backend.current_job()
    try:
        task = Task.objects.lease(task_id, dispatch=dispatch, worker_name=context.worker_name)
    except IntegrityError:  # another task of this exclusive type is running
        return defer(task_id)
    if task is None:
        return skip(task_id, dispatch)
    payload, refused = validate(task)
    outcome = refused or perform(task, payload)
    retry_at = retry_at_for(task, outcome, context.retry_delay())
    if retry_at is None:
        context.disable_retry()
    record_outcome(task, outcome, retry_at=retry_at)
    if outcome["status"] == FAILED:
        raise AttemptFailed(outcome["error_message"])
    return outcome["result"]


def run_inline(task_id: int) -> None:
    """Run a task in this process, attempts back to back (USE_TASK_QUEUE off)."""
    worker_name = backend.JobContext(job=None).worker_name
    for _ in range(100):
        task = Task.objects.filter(pk=task_id).first()
        if task is None or task.status not in Task.WAITING_STATUSES:
            return
        task = Task.objects.lease(task_id, dispatch=task.dispatch, worker_name=worker_name)
        if task is None:
            return
        payload, refused = validate(task)
        outcome = refused or perform(task, payload)
        record_outcome(task, outcome, retry_at=retry_at_for(task, outcome, 0))


def skip(task_id: int, dispatch: int) -> dict[str, Any]:
    """The task is not this job's to run (cancelled, superseded, running, gone)."""
    status = Task.objects.filter(pk=task_id).values_list("status", flat=True).first()
    logger.info("Task %s not run: %s (dispatch %s)", task_id, status or "missing", dispatch)
    return {backend.SKIPPED: status or "missing"}


def defer(task_id: int) -> dict[str, Any]:
    """Another task of this exclusive type runs: try again later under a new job."""
    delay = conf.EXCLUSIVE_RETRY_DELAY
    task = Task.objects.filter(pk=task_id).first()
    if task is not None and task.redispatch():
        try:
            backend.dispatch(task, delay=delay)
        except QueueUnavailable:
            logger.warning("Task %s deferred but not re-dispatched; the reconciler will", task.pk)
    return {backend.SKIPPED: "deferred", "retry_in": delay}


def _classify(exc: BaseException) -> tuple[str, bool]:
    """(error_code, retryable) for an exception raised by an attempt."""
    if backend.is_timeout(exc):
        return "timeout", True
    if isinstance(exc, TaskError):
        return exc.code, exc.retryable
    if isinstance(exc, InvalidPayload):
        return "invalid_payload", False
    if isinstance(exc, UnknownTaskType):
        return "unknown_task_type", False
    return "exception", True


def _json_object(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise TaskError(
            "invalid_result", f"The handler returned {type(result).__name__}, not a dict."
        )
    try:
        return json.loads(json.dumps(result, cls=DjangoJSONEncoder))
    except (TypeError, ValueError) as exc:
        raise TaskError("invalid_result", f"The result is not JSON: {exc}") from None


def close_connections(vendor: str | None = None) -> None:
    """Close this process's open connections (only `vendor`'s, when given)."""
    for connection in connections.all(initialized_only=True):
        if vendor is None or connection.vendor == vendor:
            connection.close()
