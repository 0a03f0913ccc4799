"""The job wrapper, run in RQ's work horse: one attempt of a task, mirrored.

Under our worker (taskqueue.worker) the worker leases the task and validates its payload
before it forks, and records the outcome the horse reports on a pipe after it exits: the
horse only runs the handler. Run any other way (inline, another worker class, an
exclusive type, a job enqueued before the type rode in its arguments) the wrapper leases
the task itself (a cancelled or superseded task never runs) and records the outcome. Either
way it re-raises a failure so that RQ's retry runs.
"""

import contextlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.utils import timezone

from taskqueue import backend, progress
from taskqueue.conf import conf
from taskqueue.exceptions import InvalidPayload, QueueUnavailable, TaskError, UnknownTaskType
from taskqueue.models import Task
from taskqueue.registry import TaskType, get_task_type

logger = logging.getLogger(__name__)

# Pauses between tries of the write that ends an attempt (all within the job's timeout).
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0)

# An outcome larger than this (or than the pipe holds: 64 KiB by default, less when the
# user's pipe quota is spent) is recorded by the horse itself: the worker reads the pipe
# only once the horse has exited, so a larger write would block the horse.
REPORT_LIMIT = 60_000


@dataclass
class Lease:
    """What the worker hands its work horse across fork() for one job.

    `task` is None when the lease was refused (cancelled, superseded...): the horse must
    not run it. `payload` is the validated payload (None: validate in the horse). The horse
    reports the outcome on the pipe `report_fd`, at most `report_limit` bytes, for the
    worker to record; `report_reader` is the worker's end, which the horse closes (so that
    a write fails, and the horse records the outcome itself, if the worker is gone).
    """

    task: Task | None
    payload: dict[str, Any] | None = None
    report_fd: int | None = None
    report_reader: int | None = None
    report_limit: int = REPORT_LIMIT


# The lease the worker took for the job whose horse it is forking (job id → Lease).
handoff: dict[str, Lease] = {}


def run_task(task_id: int, dispatch: int = 0) -> dict[str, Any]:
    """The RQ job function: run one attempt of task `task_id` (its type is in the job's meta)."""
    context = backend.current_job()
    return run_attempt(task_id, dispatch, context, context.task_type)


def run_inline(task_id: int) -> None:
    """Run a task in this process, attempts back to back (USE_TASK_QUEUE off)."""
    context = backend.JobContext(job=None)
    task = Task.objects.filter(pk=task_id).first()
    for _ in range(task.max_attempts if task else 0):
        task.refresh_from_db()
        if task.status not in Task.WAITING_STATUSES:
            return
        try:
            run_attempt(task_id, task.dispatch, context, task.task_type)
        except Exception:  # recorded on the task; inline there is no RQ to re-raise to
            logger.info("Inline attempt of task %s failed", task_id, exc_info=True)


def run_attempt(
    task_id: int, dispatch: int, context: backend.JobContext, task_type: str | None = None
) -> dict[str, Any]:
    """Lease, run and record one attempt. The lease is the first statement: no read first.

    `task_type` rides in the job's meta so that an exclusive type's lock is taken before
    the lease; jobs enqueued without it (older ones) read it first. Under our
    `Worker` the lease of a non-exclusive task was taken by the worker before it forked
    this work horse (see `Worker.fork_work_horse`); the horse only runs it.
    """
    if (lease := handoff.get(context.job_id)) is not None:
        return _run_leased(lease, task_id, dispatch, context)
    if task_type is None and (task_type := _read_task_type(task_id)) is None:
        return _skip(task_id, dispatch)
    try:
        spec = get_task_type(task_type)
    except UnknownTaskType as exc:
        return _fail_unrunnable(task_id, dispatch, context, "unknown_task_type", str(exc))
    lock = task_type if spec.policy.exclusive and context.job is not None else None
    if lock and not backend.acquire_lock(lock, context.job_id, ttl=context.timeout + 120):
        return _defer(task_id)
    try:
        task = _lease(task_id, dispatch, context.worker_name)
        if task is None:
            return _skip(task_id, dispatch)
        return _perform(task, spec, task.attempts, context)
    finally:
        if lock:
            release_lock(lock, context.job_id)
        _reset_connections()


def _run_leased(
    lease: Lease, task_id: int, dispatch: int, context: backend.JobContext
) -> dict[str, Any]:
    """Run an attempt the worker leased before forking (or skip it if it could not)."""
    if lease.report_reader is not None:
        with contextlib.suppress(OSError):
            os.close(lease.report_reader)
    task = lease.task
    if task is None:
        return _skip(task_id, dispatch)
    try:
        spec = get_task_type(task.task_type)
        return _perform(task, spec, task.attempts, context, payload=lease.payload, lease=lease)
    finally:
        _reset_connections()


def _skip(task_id: int, dispatch: int) -> dict[str, Any]:
    """The task is not this job's to run (cancelled, superseded, running, gone)."""
    status = Task.objects.filter(pk=task_id).values_list("status", flat=True).first()
    logger.info("Task %s not run: %s (dispatch %s)", task_id, status or "missing", dispatch)
    return {backend.SKIPPED: status or "missing"}


def _perform(
    task: Task,
    spec: TaskType,
    number: int,
    context: backend.JobContext,
    *,
    payload: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> dict[str, Any]:
    token = progress.running(task, number)
    try:
        if payload is None:
            payload = spec.validate_payload(task.payload)
        result = _json_object(spec.handler(**payload))
    except Exception as exc:
        _end(task, number, _failure(task, exc, context), lease)
        raise
    finally:
        progress.finished(token)
    _end(task, number, {"status": Task.Status.COMPLETED, "result": result}, lease)
    return result


def _failure(task: Task, exc: Exception, context: backend.JobContext) -> dict[str, Any]:
    """The outcome of a failed attempt; tells RQ whether to retry it."""
    code, retryable = _classify(exc)
    delay = context.retry_delay() if retryable and task.attempts < task.max_attempts else None
    if delay is None:
        context.disable_retry()
    message = exc.message if isinstance(exc, TaskError) else f"{type(exc).__name__}: {exc}"
    return {
        "status": Task.Status.FAILED,
        "error_code": code,
        "error_message": message,
        "traceback": traceback.format_exc(),
        "retry_at": timezone.now() + timedelta(seconds=delay) if delay is not None else None,
    }


def _end(task: Task, number: int, outcome: dict[str, Any], lease: Lease | None) -> None:
    """Hand the outcome to the worker (it records it once this horse exits), or record it.

    A failure that RQ will retry is recorded here, before this horse exits: RQ re-queues
    the job as the horse fails, and the next attempt's lease needs the task `retrying`.
    """
    reporting = lease is not None and lease.report_fd is not None
    retried = outcome.get("retry_at") is not None
    if reporting and not retried and _report(lease, task, number, outcome):
        return
    record_outcome(task, number, outcome)
    if reporting:
        _report(lease, task, number, {"status": "recorded"})


def _report(lease: Lease, task: Task, number: int, outcome: dict[str, Any]) -> bool:
    """Write the outcome on the worker's pipe; False if too large or the worker is gone."""
    message = {
        **outcome,
        "task": task.pk,
        "attempt": number,
        "progress": task.progress,
        "progress_message": task.progress_message,
    }
    data = json.dumps(message, cls=DjangoJSONEncoder).encode()
    if len(data) > lease.report_limit:
        return False
    try:
        while data:
            data = data[os.write(lease.report_fd, data) :]
    except OSError:  # BrokenPipeError: the worker died while this horse ran
        return False
    return True


def record_outcome(task: Task, number: int, outcome: dict[str, Any]) -> None:
    """Write an attempt's outcome (as `_perform` builds it) to the task."""
    try:
        if outcome["status"] == Task.Status.COMPLETED:
            _record(task.complete, attempt=number, result=outcome["result"])
            return
        _record(
            task.fail,
            attempt=number,
            error_code=outcome["error_code"],
            error_message=outcome["error_message"],
            traceback=outcome["traceback"],
            retry_at=outcome["retry_at"],
        )
    except DatabaseError:
        # RQ keeps a result; the reconciler copies it into the mirror, or ends the attempt.
        logger.exception("Task %s: the end of attempt %s could not be recorded", task.pk, number)


def _record(write: Callable[..., bool], **values: Any) -> None:
    """Write an attempt's end, riding out a short database outage (then the reconciler)."""
    for delay in (*RECORD_RETRY_DELAYS, None):
        try:
            write(**values)
            return
        except (OperationalError, InterfaceError):
            if delay is None:
                raise
            close_connections()
            time.sleep(delay)


def _classify(exc: Exception) -> tuple[str, bool]:
    """(error_code, retryable) for an exception raised by an attempt."""
    if backend.is_timeout(exc):
        return "timeout", True
    if isinstance(exc, TaskError):
        return exc.code, exc.retryable
    if isinstance(exc, InvalidPayload):
        return "invalid_payload", False
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


def _fail_unrunnable(
    task_id: int, dispatch: int, context: backend.JobContext, code: str, message: str
) -> dict[str, Any]:
    task = Task.objects.lease(task_id, dispatch=dispatch, worker_name=context.worker_name)
    if task is not None:
        task.fail(attempt=task.attempts, error_code=code, error_message=message)
    context.disable_retry()
    return {backend.SKIPPED: code}


def _defer(task_id: int) -> dict[str, Any]:
    """Another task of this exclusive type runs: try again later under a new job."""
    delay = conf.EXCLUSIVE_RETRY_DELAY
    task = Task.objects.filter(pk=task_id).first()
    if task is not None and task.redispatch():
        try:
            backend.dispatch(task, delay=delay)
        except QueueUnavailable:
            logger.warning("Task %s deferred but not re-dispatched; the reconciler will", task.pk)
    return {backend.SKIPPED: "deferred", "retry_in": delay}


def release_lock(lock: str, token: str) -> None:
    try:
        backend.release_lock(lock, token)
    except backend.RedisError:
        logger.warning("Could not release lock %s; it expires by itself", lock)


def _read_task_type(task_id: int) -> str | None:
    return _reconnecting(
        lambda: Task.objects.filter(pk=task_id).values_list("task_type", flat=True).first()
    )


def _lease(task_id: int, dispatch: int, worker_name: str) -> Task | None:
    return _reconnecting(
        lambda: Task.objects.lease(task_id, dispatch=dispatch, worker_name=worker_name)
    )


def _reconnecting(query: Callable[[], Any]) -> Any:
    """Run the horse's first statement, reconnecting once if the inherited connection died."""
    try:
        return query()
    except (OperationalError, InterfaceError):
        close_connections()
        return query()


def close_connections(vendor: str | None = None) -> None:
    """Close this process's open connections (only `vendor`'s, when given)."""
    for connection in connections.all(initialized_only=True):
        if vendor is None or connection.vendor == vendor:
            connection.close()


def _reset_connections() -> None:
    """Leave the connection the way the next horse expects it: idle, in autocommit."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and (
            connection.in_atomic_block or not connection.get_autocommit()
        ):
            connection.close()
