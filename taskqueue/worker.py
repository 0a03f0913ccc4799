"""The worker process: RQ's forking worker, writing the mirror itself.

For each job of a non-exclusive type the worker leases the task and validates its payload
before it forks the work horse, and records the outcome the horse reports on a pipe once
the horse has exited: the horse only runs the handler. A work horse is a fresh
copy-on-write process, and every object it touches the first time costs it a page copy:
the same statements cost it two to four times what they cost the worker (measured). The
worker also records what a horse could not: its death (killed, stopped, hard timeout).

The worker's database connection is handed to each horse across fork(); the worker
touches it only while no horse lives (before the fork, after the horse has exited). A
SQLite connection is closed before each fork instead.
"""

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rq.command import parse_payload
from rq.worker import Worker as RQWorker

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.exceptions import UnknownTaskType
from taskqueue.execution import (
    REPORT_LIMIT,
    Lease,
    close_connections,
    handoff,
    record_outcome,
    release_lock,
)
from taskqueue.models import Task
from taskqueue.registry import get_task_type

logger = logging.getLogger(__name__)

# How often the worker checks the connection it hands to its horses (a SELECT 1); in
# between, a horse that finds it dead reconnects by itself and closes it for the next one.
USABLE_CHECK_SECONDS = 5.0
_checked_at: dict[str, float] = {}


class Worker(RQWorker):
    """RQ's forking worker that leases, records outcomes and records dead work horses."""

    _horse_status: int | None = None
    _horse_reaped = False
    _lease: Lease | None = None
    _report_reader: int | None = None
    # A stop for the job leased before the fork, received before its horse existed.
    _stop_pending = False

    def work(self, *args: Any, **kwargs: Any) -> bool:
        warm_up()
        return super().work(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", conf.JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)
        self._stop_lock = threading.Lock()

    def handle_payload(self, message: Any) -> None:
        """RQ's commands, plus a stop for the job this worker leased before its horse runs.

        RQ only stops the job its horse has marked as current; the lease comes first, so a
        stop sent in between (the task already shows as running) would be ignored. Kept
        here, it kills the horse as soon as there is one (runs in RQ's pubsub thread).
        Once the horse has marked the job, RQ's stop (which kills its process group) runs.
        """
        payload = parse_payload(message)
        lease = self._lease
        job_id = lease.task.job_id if lease is not None and lease.task is not None else None
        if (
            payload.get("command") == "stop-job"
            and job_id is not None
            and payload.get("job_id") == job_id
            and self.get_current_job_id() != job_id  # else RQ's own stop applies
        ):
            with self._stop_lock:
                self._stopped_job_id = job_id  # RQ then records the job stopped
                if self._horse_pid:
                    _kill(self._horse_pid)
                else:
                    self._stop_pending = True
            return
        super().handle_payload(message)

    def get_heartbeat_ttl(self, job: Any) -> int:
        """RQ's formula with a configurable margin instead of its fixed 60 s."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - self.current_job_working_time, interval)
        return int(max(interval, 1)) + conf.HEARTBEAT_MARGIN

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        _prepare_connections_for_fork()
        self._horse_status, self._horse_reaped, self._stop_pending = None, False, False
        self._lease = lease_before_fork(job, self.name)
        close_connections("sqlite")  # a SQLite handle must not cross fork(); the horse reopens
        if self._lease is not None:
            if self._lease.task is not None:
                self._report_reader = open_report_pipe(self._lease)
            handoff[job.id] = self._lease
        try:
            super().fork_work_horse(job, queue)
        finally:
            handoff.clear()
            if self._lease is not None and self._lease.report_fd is not None:
                os.close(self._lease.report_fd)  # the horse holds its own copy
        self._honour_pending_stop()

    def _honour_pending_stop(self) -> None:
        """Kill the horse just forked if a stop for its job came while it did not exist."""
        with self._stop_lock:
            if self._stop_pending and self._horse_pid:
                _kill(self._horse_pid)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid:
            self._horse_status, self._horse_reaped = status, True
        return pid, status, rusage

    def monitor_work_horse(self, job: Any, queue: Any) -> None:
        try:
            super().monitor_work_horse(job, queue)
        finally:
            lease, self._lease = self._lease, None
            reader, self._report_reader = self._report_reader, None
            self._stop_pending = False
            if job.func_name == backend.JOB_FUNCTION and self._horse_reaped:
                try:
                    record_after_horse(job, queue, lease, reader, self._horse_status)
                except Exception:
                    logger.exception("Could not record the end of job %s", job.id)
            elif reader is not None:  # the horse may live on: its outcome is the reconciler's
                os.close(reader)


def record_after_horse(
    job: Any, queue: Any, lease: Lease | None, reader: int | None, exit_status: int | None
) -> None:
    """Once the horse of `job` has exited: record the outcome it reported, or its death."""
    report = _read_report(reader) if reader is not None else None
    if report is not None and lease is not None and lease.task is not None:
        if report["status"] != "recorded":  # else the horse did (a retried failure, a large one)
            if exit_status != os.EX_OK:
                close_connections()  # the horse may have died mid-query
            _record_report(lease.task, report)
    elif exit_status != os.EX_OK or reader is not None:
        record_dead_horse(job, queue, exit_status)


def lease_before_fork(job: Any, worker_name: str) -> Lease | None:
    """Lease the job's task here, in the worker, for the horse to inherit.

    None leaves it to the horse: exclusive types (their lock comes first), jobs of other
    functions, jobs without their type in their meta, and a database error here.
    """
    if job.func_name != backend.JOB_FUNCTION:
        return None
    task_id, dispatch = [*job.args, 0][:2]
    task_type = (job.meta or {}).get("task_type")
    try:
        if task_type is None or (spec := get_task_type(task_type)).policy.exclusive:
            return None
    except UnknownTaskType:
        return None
    try:
        task = Task.objects.lease(task_id, dispatch=dispatch, worker_name=worker_name)
    except DatabaseError:
        close_connections()  # the horse will lease (or reconnect and lease) by itself
        logger.warning("Could not lease task %s before forking; the horse will", task_id)
        return None
    payload = None
    if task is not None:
        with contextlib.suppress(Exception):  # the horse validates again, and fails it
            payload = spec.validate_payload(task.payload)
    return Lease(task=task, payload=payload)


def _read_report(fd: int) -> dict[str, Any] | None:
    """The outcome the horse wrote on the pipe (it has exited), or None.

    Read without blocking: whatever the horse wrote is in the pipe now, and a process the
    handler forked may still hold the write end open (EOF would never come).
    """
    chunks = []
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    if not chunks:
        return None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        logger.warning("A work horse left a truncated report; ending its attempt from RQ's view")
        return None


def _record_report(task: Task, report: dict[str, Any]) -> None:
    task.progress = report["progress"]
    task.progress_message = report["progress_message"]
    if report.get("retry_at"):
        report["retry_at"] = parse_datetime(report["retry_at"])
    record_outcome(task, report["attempt"], report)


def _pipe_capacity(fd: int) -> int:
    """How many bytes the pipe holds (Linux shrinks new pipes once a user's quota is spent)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):
        return 4096  # the smallest a pipe can be


def _kill(pid: int) -> None:
    """Kill a work horse that has not started its handler (nor, maybe, its own group yet:
    RQ's kill_horse signals the horse's process group, the worker's own until setpgrp)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def open_report_pipe(lease: Lease) -> int:
    """Give the lease a pipe for its horse's report; returns the worker's (reading) end."""
    reader, writer = os.pipe()
    lease.report_fd, lease.report_reader = writer, reader
    lease.report_limit = min(REPORT_LIMIT, _pipe_capacity(writer))
    return reader


def _prepare_connections_for_fork() -> None:
    """Give the horse a live connection to inherit (SQLite's are closed after the lease)."""
    now = time.monotonic()
    for connection in connections.all():
        if connection.vendor == "sqlite":
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


def record_dead_horse(job: Any, queue: Any, exit_status: int | None) -> None:
    """The horse of `job` ended without an outcome for its attempt: record one from here."""
    task_id, dispatch = [*job.args, 0][:2]
    outcome = backend.horse_outcome(job, queue)
    close_connections()  # the horse may have died mid-query on the shared connection
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
        release_lock(task.task_type, job.id)


def _describe(exit_status: int | None) -> str:
    if exit_status is None:
        return "killed by the worker"
    if os.WIFSIGNALED(exit_status):
        return f"killed by signal {os.WTERMSIG(exit_status)}"
    return f"exit code {os.waitstatus_to_exitcode(exit_status)}"
