"""Worker side: the job wrapper that mirrors each attempt, and the worker class.

The wrapper runs in RQ's work horse: it leases the task (a cancelled or superseded task
never runs), calls the handler, records the outcome and re-raises so RQ's retry runs.
The worker class records what the horse could not: its own death (killed, stopped, hard
timeout). Database writes reuse the worker's connection: the horse inherits it across
fork() and the parent never touches it while a horse lives.
"""

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.utils import timezone
from rq.worker import Worker as RQWorker

from taskqueue import backend, progress
from taskqueue.conf import conf
from taskqueue.exceptions import InvalidPayload, QueueUnavailable, TaskError, UnknownTaskType
from taskqueue.models import Task
from taskqueue.registry import TaskType, get_task_type

logger = logging.getLogger(__name__)

# Pauses between tries of the write that ends an attempt (all within the job's timeout).
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0)

# Leases the worker took before forking, by job id: the work horse inherits this dict.
# None: the lease was refused (cancelled, superseded...), so the horse must not run it.
NOT_LEASED = object()
_leased_by_worker: dict[str, Task | None] = {}


def run_task(task_id: int, dispatch: int = 0, task_type: str | None = None) -> dict[str, Any]:
    """The RQ job function: run one attempt of task `task_id` (of type `task_type`)."""
    return run_attempt(task_id, dispatch, backend.current_job(), task_type)


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

    `task_type` rides in the job's arguments so that an exclusive type's lock is taken
    before the lease; jobs enqueued without it (older ones) read it first. Under our
    `Worker` the lease of a non-exclusive task was taken by the worker before it forked
    this work horse (see `Worker.fork_work_horse`); the horse only runs it.
    """
    leased = _leased_by_worker.get(context.job_id, NOT_LEASED)
    if leased is not NOT_LEASED:
        return _run_leased(leased, task_id, dispatch, context)
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
            _release(lock, context.job_id)
        _reset_connections()


def _run_leased(
    task: Task | None, task_id: int, dispatch: int, context: backend.JobContext
) -> dict[str, Any]:
    """Run an attempt the worker leased before forking (None: it could not)."""
    if task is None:
        return _skip(task_id, dispatch)
    try:
        return _perform(task, get_task_type(task.task_type), task.attempts, context)
    finally:
        _reset_connections()


def _skip(task_id: int, dispatch: int) -> dict[str, Any]:
    """The task is not this job's to run (cancelled, superseded, running, gone)."""
    status = Task.objects.filter(pk=task_id).values_list("status", flat=True).first()
    logger.info("Task %s not run: %s (dispatch %s)", task_id, status or "missing", dispatch)
    return {backend.SKIPPED: status or "missing"}


def _perform(
    task: Task, spec: TaskType, number: int, context: backend.JobContext
) -> dict[str, Any]:
    token = progress.running(task, number)
    try:
        payload = spec.validate_payload(task.payload)
        result = _json_object(spec.handler(**payload))
    except Exception as exc:
        _record_failure(task, number, exc, context)
        raise
    finally:
        progress.finished(token)
    try:
        _record(task.complete, attempt=number, result=result)
    except DatabaseError:
        # RQ keeps the result; the reconciler copies it into the mirror.
        logger.exception("Task %s completed but its result could not be recorded", task.pk)
    return result


def _record_failure(task: Task, number: int, exc: Exception, context: backend.JobContext) -> None:
    code, retryable = _classify(exc)
    delay = context.retry_delay() if retryable and task.attempts < task.max_attempts else None
    if delay is None:
        context.disable_retry()
    retry_at = timezone.now() + timedelta(seconds=delay) if delay is not None else None
    message = exc.message if isinstance(exc, TaskError) else f"{type(exc).__name__}: {exc}"
    try:
        _record(
            task.fail,
            attempt=number,
            error_code=code,
            error_message=message,
            traceback=traceback.format_exc(),
            retry_at=retry_at,
        )
    except DatabaseError:
        logger.exception("Task %s failed (%s) and that could not be recorded", task.pk, code)


def _record(write: Callable[..., bool], **values: Any) -> None:
    """Write an attempt's end, riding out a short database outage (then the reconciler)."""
    for delay in (*RECORD_RETRY_DELAYS, None):
        try:
            write(**values)
            return
        except (OperationalError, InterfaceError):
            if delay is None:
                raise
            _close_connections()
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


def _release(lock: str, token: str) -> None:
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
        _close_connections()
        return query()


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


def _reset_connections() -> None:
    """Leave the connection the way the next horse expects it: idle, in autocommit."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and (
            connection.in_atomic_block or not connection.get_autocommit()
        ):
            connection.close()


# How often the worker checks the connection it hands to its horses (a SELECT 1); in
# between, a horse that finds it dead reconnects by itself and closes it for the next one.
USABLE_CHECK_SECONDS = 5.0
_checked_at: dict[str, float] = {}


def _prepare_connections_for_fork() -> None:
    """Give the horse a live connection to inherit; SQLite files are reopened per horse."""
    now = time.monotonic()
    for connection in connections.all():
        if connection.vendor == "sqlite":
            connection.close()
            continue
        try:
            stale = now - _checked_at.get(connection.alias, 0.0) > USABLE_CHECK_SECONDS
            if connection.connection is not None and stale:
                _checked_at[connection.alias] = now
                if not connection.is_usable():
                    connection.close()
            connection.ensure_connection()
        except DatabaseError:
            connection.close()  # the horse will try to connect by itself


def warm_up() -> None:
    """Run the per-task ORM paths once, in a transaction rolled back, before any fork.

    Django builds model metadata and query-compilation caches lazily; built in a work horse
    they die with it, and every horse paid them again (about 10 ms a task, measured). Built
    here, in the worker, every horse inherits them. Nothing is kept (only the two tables'
    id sequences advance by one).
    """
    try:
        with transaction.atomic():
            task = Task.objects.create(task_type="ping", payload={})
            leased = Task.objects.lease(task.pk, dispatch=0, worker_name="warm-up")
            leased.complete(attempt=leased.attempts, result={})
            get_task_type(task.task_type).validate_payload(leased.payload)
            Task.objects.with_attempt_history().filter(pk=task.pk).first()
            transaction.set_rollback(True)
    except DatabaseError:
        logger.info("Worker warm-up skipped: the database is unreachable")


class Worker(RQWorker):
    """RQ's forking worker that keeps one DB connection and records dead work horses."""

    _horse_status: int | None = None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        warm_up()
        return super().work(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", conf.JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Any) -> int:
        """RQ's formula with a configurable margin instead of its fixed 60 s."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - self.current_job_working_time, interval)
        return int(max(interval, 1)) + conf.HEARTBEAT_MARGIN

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        _prepare_connections_for_fork()
        self._horse_status = None
        _lease_before_fork(job, self.name)
        try:
            super().fork_work_horse(job, queue)
        finally:
            _leased_by_worker.clear()

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid:
            self._horse_status = status
        return pid, status, rusage

    def monitor_work_horse(self, job: Any, queue: Any) -> None:
        super().monitor_work_horse(job, queue)
        if self._horse_status != os.EX_OK and job.func_name == backend.JOB_FUNCTION:
            try:
                record_dead_horse(job, queue, self._horse_status)
            except Exception:
                logger.exception("Could not record the end of job %s", job.id)


def _lease_before_fork(job: Any, worker_name: str) -> None:
    """Lease the job's task here, in the worker, for the horse to inherit.

    A work horse is a fresh copy-on-write process: every object it touches the first
    time costs it a page copy, so the same statement costs it 2-4 times what it costs the
    worker (measured). Exclusive types (their lock comes first), jobs of other functions
    and jobs without their type in the arguments are leased by the horse as before.
    """
    if job.func_name != backend.JOB_FUNCTION:
        return
    task_id, dispatch, task_type = [*job.args, 0, None][:3]
    try:
        if task_type is None or get_task_type(task_type).policy.exclusive:
            return
    except UnknownTaskType:
        return
    try:
        _leased_by_worker[job.id] = Task.objects.lease(
            task_id, dispatch=dispatch, worker_name=worker_name
        )
    except DatabaseError:
        _close_connections()  # the horse will lease (or reconnect and lease) by itself
        logger.warning("Could not lease task %s before forking; the horse will", task_id)


def record_dead_horse(job: Any, queue: Any, exit_status: int | None) -> None:
    """The horse of `job` died before recording its attempt: record it from here."""
    task_id, dispatch = [*job.args, 0][:2]
    outcome = backend.horse_outcome(job, queue)
    _close_connections()  # the horse may have died mid-query on the shared connection
    task = Task.objects.filter(pk=task_id, dispatch=dispatch, status=Task.Status.LEASED).first()
    if task is None:
        return
    if outcome.stopped:
        task.stopped(attempt=task.attempts)
    else:
        code = "timeout" if outcome.timed_out else "worker_lost"
        retry_at = None
        if outcome.retried and task.attempts < task.max_attempts:
            retry_at = outcome.retry_at or timezone.now()
        task.fail(
            attempt=task.attempts,
            error_code=code,
            error_message=f"The work horse died without finishing ({_describe(exit_status)}).",
            retry_at=retry_at,
        )
    logger.warning(
        "Task %s: attempt %s ended by the worker (%s)", task.pk, task.attempts, task.error_code
    )
    try:
        spec = get_task_type(task.task_type)
    except UnknownTaskType:
        return
    if spec.policy.exclusive:
        _release(task.task_type, job.id)


def _describe(exit_status: int | None) -> str:
    if exit_status is None:
        return "killed by the worker"
    if os.WIFSIGNALED(exit_status):
        return f"killed by signal {os.WTERMSIG(exit_status)}"
    return f"exit code {os.waitstatus_to_exitcode(exit_status)}"
