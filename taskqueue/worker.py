"""The worker process: RQ's worker loop, owning every attempt it leases from start to end.

For each job of a task the worker (this process) does everything but run the handler:

0. takes the job: the pop and the read of its hash in one round trip (OneTripDequeue), or
   in the script that ended the last job (step 5);
1. the lease: queued/retrying → leased, one statement (an exclusive type's unique index
   refuses a second leased task of the type: the task is deferred), unless the task was
   leased with the end of the last attempt (step 5: the attempt is then in hand);
2. hands the task to its long-lived work horse (taskqueue.horse) and, while the horse
   runs it, writes RQ's bookkeeping of a started job (execution, started registry,
   heartbeats) with the pending events in one script;
3. waits for the outcome, heartbeating RQ and the task row (`heartbeat_at`, which also
   brings back a stop asked for while pub/sub was down) every JOB_MONITORING_INTERVAL;
4. decides, alone, how the attempt ended: the horse's report if it wrote one (a stop or a
   timeout that comes after it loses), else stopped, timed out (killed at the timeout plus
   HORSE_KILL_GRACE), shut down or lost (the horse died);
5. records that end. Completed: RQ first (one script, which takes the next job), then the
   row, in the statement that also leases the next job's task when it may (one commit);
   otherwise the row first, then RQ (retried, failed or stopped).

A warm shutdown (SIGTERM) finishes the job in hand, from the dequeue on (or from the lease
with the last end). A stop is a
command on the worker's pub/sub channel, handled in RQ's pub/sub thread: it
only marks the running attempt and wakes this loop. Jobs of other functions (the cron
jobs) run RQ's way, in a horse forked for the job.
"""

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from rq.command import parse_payload
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text, get_version
from rq.utils import now as rq_now
from rq.worker import Worker as RQWorker
from rq.worker import WorkerStatus

from taskqueue import backend, events
from taskqueue.backend import bookkeeping
from taskqueue.conf import conf
from taskqueue.execution import (
    COMPLETED,
    REFUSED,
    WRITTEN,
    close_connections,
    defer,
    record_outcome,
    record_stopped,
    retried,
    retry_at_for,
    skip,
    validate,
)
from taskqueue.horse import Horse, spawn
from taskqueue.models import Task
from taskqueue.registry import get_task_type

logger = logging.getLogger(__name__)

STOPPED = "stopped"
# How often an idle worker wakes from its wait on the queues (to take over RQ's scheduler
# when the worker that ran it died); RQ's default is close to worker_ttl (7 minutes).
IDLE_WAKE_SECONDS = 10
# Heartbeats of an idle or between-jobs worker closer together than this are skipped.
HEARTBEAT_SPACING = 1.0
SUSPENSION_CHECK_SECONDS = 1.0


class OneTripDequeue:
    """A queue class whose dequeue_any takes a waiting job in one round trip (the pop and
    the read of the job's hash, bookkeeping.take).

    Only when no queue has a job does it fall back to RQ's blocking wait (BLPOP or BLMOVE,
    then a fetch of the job). `events_to_send` ((channel, message) pairs the worker has not
    sent yet: its last attempt's) are published by that first script, unless the worker
    sends them first in a call of its own (Worker._unsent).
    """

    events_to_send: list[tuple[str, str]] = []

    @classmethod
    def dequeue_any(cls, queues: Any, timeout: int | None, *, connection: Any,
                    job_class: Any = None, serializer: Any = None,
                    death_penalty_class: Any = None) -> Any:  # fmt: skip
        queues = list(queues)
        taking = _taking(queues, job_class or Job, connection)
        while True:
            pending, cls.events_to_send = cls.events_to_send, []
            found = bookkeeping.take(connection, taking, pending)
            if not found:
                return super().dequeue_any(
                    queues,
                    timeout,
                    connection=connection,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
            taken = cls.taken(found, connection=connection, job_class=job_class,
                              serializer=serializer,
                              death_penalty_class=death_penalty_class)  # fmt: skip
            if taken is not None:
                return taken
            # else a job deleted while it waited: RQ skips it too

    @classmethod
    def taken(cls, found: list, *, connection: Any, job_class: Any = None,
              serializer: Any = None, death_penalty_class: Any = None) -> Any:  # fmt: skip
        """(job, queue) of a job bookkeeping took, or None if its hash was gone."""
        queue_key, job_id, fields = (as_text(found[0]), as_text(found[1]), found[2])
        if not fields:
            return None
        job_cls = job_class or Job
        queue = cls.from_queue_key(queue_key, connection=connection, job_class=job_cls,
                                   serializer=serializer,
                                   death_penalty_class=death_penalty_class)  # fmt: skip
        job = job_cls(job_id, connection=connection, serializer=serializer)
        job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
        return job, queue


def _taking(queues: list[Queue], job_class: type[Job], connection: Any) -> bookkeeping.Taking:
    intermediate = len(queues) == 1 and get_version(connection) >= (6, 2, 0)  # RQ's rule
    return bookkeeping.Taking(
        tuple(queue.key for queue in queues),
        job_class.redis_job_namespace_prefix,
        "1" if intermediate else "0",
    )


@cache
def _one_trip(queue_class: type[Queue]) -> type[Queue]:
    if issubclass(queue_class, OneTripDequeue):
        return queue_class
    return type(queue_class.__name__, (OneTripDequeue, queue_class), {})


@dataclass
class Attempt:
    """The attempt this worker runs; `stop` and `cold` are set from other threads."""

    job: Job
    queue: Queue
    task: Task | None = None
    stop: bool = False
    cold: bool = False
    ended_elsewhere: bool = False


class Worker(RQWorker):
    """RQ's worker, with one long-lived work horse and the mirror written by this process."""

    _horse: Horse | None = None
    _running: Attempt | None = None
    _cold = False
    _presence_checked = 0.0
    _beaten_at = 0.0
    _suspension_checked = 0.0
    _registry_keys: dict[str, bookkeeping.Keys]
    _taken: tuple[Job, Queue] | None = None  # the next job, taken with the end of the last
    _next: Attempt | None = None  # its attempt, when leased with the end of the last: in hand
    _takes_next = False
    _stopping = False

    @property
    def _stop_requested(self) -> bool:
        """Whether a warm shutdown asked for is honoured now (RQ's loop reads this before
        each job): once the attempt in hand has run, as its lease is committed."""
        return self._stopping and self._next is None

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self._stopping = value

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", conf.JOB_MONITORING_INTERVAL)
        super().__init__(*args, **kwargs)
        self.queue_class = _one_trip(self.queue_class)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()
        self._registry_keys = {}

    def work(self, *args: Any, **kwargs: Any) -> bool:
        warm_up()
        self._takes_next = kwargs.get("max_jobs") is None  # RQ counts jobs in its loop
        try:
            return super().work(*args, **kwargs)
        finally:
            self._give_back()
            self._retire_horse()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:  # fmt: skip
        """The job taken with the end of the last one, if any; else RQ's dequeue. None
        (RQ's loop ends) when a stop came after RQ's check and the job is not leased yet:
        `_give_back` returns it."""
        if self._taken is None:  # (the last attempt's events go out with the dequeue's pop)
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if self._stop_requested:  # (never while the job's attempt is in hand)
            return None
        taken, self._taken = self._taken, None
        job, queue = taken
        job.redis_server_version = self.get_redis_server_version()
        self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        self.heartbeat()
        return taken

    def _unsent(self) -> list[tuple[str, str]]:
        """The last attempt's events not yet sent (they wait for the next dequeue's pop),
        for the caller to send in its own Redis call instead."""
        unsent, self.queue_class.events_to_send = self.queue_class.events_to_send, []
        return unsent

    def _give_back(self) -> None:
        """Put a job taken with the end of the last one, but not run (the worker is
        stopping), back at the head of its queue. If this worker dies first, the reconciler
        dispatches the task again (backend.job_states: a queued job in no queue).

        If its task was leased too (the loop ended otherwise than by a warm shutdown: a
        cold one, an error), that lease is taken back first (`_put_back`)."""
        taken, self._taken = self._taken, None
        attempt, self._next = self._next, None
        if attempt is not None:
            self._put_back(attempt)
            return
        self._push_back(taken)

    def _put_back(self, attempt: Attempt) -> None:
        """An attempt in hand that will not run: its lease is taken back (the task as it
        was: Task.release) and its job put back at the head of its queue; a stop asked for
        it ends it `stopped` instead. If the database fails here, or the lease's outcome is
        unknown (an error came between the statement and its result), the job is left out
        of its queue: the reconciler ends the silent lease, or dispatches the task again."""
        with events.held():
            events.keep(self._unsent())
            if attempt.task is None:
                self.log.warning("Worker %s: job %s left to the reconciler", self.name,
                                 attempt.job.id)  # fmt: skip
                return
            try:
                released = not attempt.stop and attempt.task.release(attempt=attempt.task.attempts)
            except DatabaseError as exc:
                close_connections()
                self.log.warning("Worker %s: could not release task %s: %s", self.name,
                                 attempt.task.pk, exc)  # fmt: skip
                return
            if released:
                self._push_back((attempt.job, attempt.queue))
                return
            self._mark_started(attempt.job, attempt.queue)
            self._end(attempt, _interrupted(attempt))  # stopped, or lost

    def _push_back(self, taken: tuple[Job, Queue] | None) -> None:
        """Put a taken job back at the head of its queue, with the events not yet sent."""
        if taken is None and not self.queue_class.events_to_send:
            return
        try:
            with self.connection.pipeline() as pipeline:
                events.send(self._unsent(), pipeline)
                events.send_held(pipeline)
                if taken is not None:
                    job, queue = taken
                    pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
                    pipeline.lpush(queue.key, job.id)
                pipeline.execute()
        except backend.RedisError as exc:
            self.log.warning("Worker %s: could not give job %s back: %s", self.name, taken, exc)

    @property
    def dequeue_timeout(self) -> int:
        return min(super().dequeue_timeout, IDLE_WAKE_SECONDS)

    def serialize(self) -> dict:
        """RQ's fields of the worker's hash, and how often it heartbeats, idle and busy (for
        the dashboard to tell a silent worker from a quiet one)."""
        return {
            **super().serialize(),
            backend.IDLE_HEARTBEAT_FIELD: self.dequeue_timeout,
            backend.BUSY_HEARTBEAT_FIELD: self.job_monitoring_interval,
        }

    # Redis lost: RQ's loop quits on a Redis error anywhere but in its wait for a job; this
    # worker carries on (the rows are the truth meanwhile) and waits there for Redis instead.

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        # RQ heartbeats after each job and again as it starts waiting for the next: once
        # is enough (the worker's key lives for worker_ttl, 420 s).
        if timeout is not None or time.monotonic() - self._beaten_at >= HEARTBEAT_SPACING:
            with self._redis_tolerated("heartbeat"):
                super().heartbeat(timeout)
                self._beaten_at = time.monotonic()
        self._maintain_presence()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline=pipeline)
            return
        if state == self._state:  # RQ marks it idle before each wait; a job's end did
            return
        with self._redis_tolerated("record its state"):
            super().set_state(state)

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks Redis before every job; once a second is soon enough for `rq suspend`. An
        # attempt in hand runs first: waiting with it leased would leave it to the reconciler.
        if self._next is not None:
            return
        if time.monotonic() - self._suspension_checked < SUSPENSION_CHECK_SECONDS:
            return
        with self._redis_tolerated("check for suspension"):
            super().check_for_suspension(burst)
            self._suspension_checked = time.monotonic()

    def run_maintenance_tasks(self) -> None:
        with self._redis_tolerated("run its maintenance"):
            super().run_maintenance_tasks()

    @contextlib.contextmanager
    def _redis_tolerated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except backend.RedisError as exc:
            self.log.warning("Worker %s: could not %s, Redis failed: %s", self.name, doing, exc)

    def _maintain_presence(self) -> None:
        """Every IDLE_WAKE_SECONDS: be registered, and run RQ's scheduler if none runs.

        A Redis that restarted empty forgot this worker (rq info, the dashboard and RQ's
        cleanup would not see it); RQ takes over a dead worker's scheduler only in its
        maintenance pass (every 10 minutes): retries and deferrals would wait that long.
        """
        if time.monotonic() - self._presence_checked < IDLE_WAKE_SECONDS:
            return
        self._presence_checked = time.monotonic()
        with self._redis_tolerated("check its registration"):
            if not self.connection.hexists(self.key, "birth"):
                self.log.warning("Worker %s: Redis forgot this worker; registering", self.name)
                self.connection.delete(self.key)  # what heartbeats wrote since: not a birth
                self.register_birth()
        scheduler = self.scheduler
        if scheduler is None:
            return
        process = scheduler._process  # RQ's own check in run_maintenance_tasks (rq 2.12)
        if process is None or not process.is_alive():
            with self._redis_tolerated("start the scheduler"):
                scheduler.acquire_locks(auto_start=True)

    def get_heartbeat_ttl(self, job: Job) -> int:
        """RQ's formula with a configurable margin instead of its fixed 60 s."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - self.current_job_working_time, interval)
        return int(max(interval, 1)) + conf.HEARTBEAT_MARGIN

    # Commands and signals, from other threads or signal handlers: they only mark and wake.

    def handle_payload(self, message: Any) -> None:
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            # in hand, or running (in that order: execute_job sets `_running` before it
            # clears `_next`, so one of the two reads sees the attempt)
            for attempt in (self._next, self._running):
                if attempt is not None and attempt.job.id == payload.get("job_id"):
                    attempt.stop = True
                    self._wake()
                    return
            # not running here (any more): the task row says what to do
            logger.info("Stop for job %s, which this worker does not run", payload)
            return
        super().handle_payload(message)

    def kill_horse(self, sig: Any = None) -> None:
        if self._horse_pid:  # a horse RQ forked for a job of another function
            super().kill_horse(*(() if sig is None else (sig,)))
        elif self._running is not None and self._horse is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._horse.pid, 9)

    def _shutdown(self) -> None:
        """Warm shutdown. RQ stops at once (StopRequested, raised wherever the worker is)
        unless it is busy, and calls itself busy only once a job has started: a SIGTERM
        in the lease left the task `leased`. From the dequeue on, the job is finished.

        The request is kept in `_stop_requested` first, whatever RQ then does: its
        StopRequested, raised from this signal handler into whatever the worker was doing,
        is lost when that was writing a log line (logging's handlers swallow any Exception,
        and StopRequested is one): the worker then ran on as if no SIGTERM had come (found
        by the drill in a stream of short tasks, where the worker logs between jobs)."""
        self._stop_requested = True
        idle = self._running is None and self._next is None
        if idle or self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()
            return
        with self._redis_tolerated("record the shutdown request"):
            self.set_shutdown_requested_date()
        if self.scheduler:
            self.stop_scheduler()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown: end the running attempt as interrupted, record it, then exit."""
        attempt = self._running
        if attempt is None or attempt.task is None:
            return super().request_force_stop(signum, frame)
        requested = self._shutdown_requested_date
        if requested and rq_now() - requested < timedelta(seconds=1):
            return None  # the same signal seen twice (RQ's rule)
        self.log.warning("Worker %s: cold shut down, ending the running attempt", self.name)
        self._cold = attempt.cold = True
        self._wake()
        return None

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    # One job.

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name != backend.JOB_FUNCTION:
            with events.held():  # the last attempt's events, sent before the fork
                events.keep(self._unsent())
            super().execute_job(job, queue)  # RQ's way: a horse forked for this job
            return
        attempt = self._next  # leased with the end of the last one
        if attempt is not None and attempt.job.id != job.id:  # (RQ's loop runs it first)
            self._next = None
            self._put_back(attempt)
            attempt = None
        if attempt is None:
            attempt = Attempt(job=job, queue=queue)
        self._running = attempt  # stops count from here
        self._next = None
        try:
            with events.held():  # the attempt's events go out in this worker's pipelines
                events.keep(self._unsent())
                self._execute_attempt(attempt)
                # the rest go with the next start, or the next dequeue's pop
                self.queue_class.events_to_send = events.take_held()
        finally:
            self._running = None  # (RQ's wait for the next job marks this worker idle)
        if self._cold:
            raise SystemExit(1)

    def _mark_started(self, job: Job, queue: Queue) -> None:
        """RQ's bookkeeping of a started job (its prepare_execution, then what its horse
        does in prepare_job_execution) and the lease's event: one script call."""
        intermediate = queue.intermediate_queue_key if len(self.queues) == 1 else ""  # RQ's rule
        self.execution = None  # until it is written (the last job's is not this one's)
        try:
            self.execution = bookkeeping.start(
                self, job, keys=self._keys(queue), ttl=self.get_heartbeat_ttl(job),
                intermediate=intermediate, events=events.take_held(),
            )  # fmt: skip
            self._beaten_at = time.monotonic()
        except backend.RedisError as exc:  # the row is the truth: run it all the same
            self.log.warning("Worker %s: could not mark job %s started: %s", self.name, job.id, exc)

    def _keys(self, queue: Queue) -> bookkeeping.Keys:
        if queue.name not in self._registry_keys:
            self._registry_keys[queue.name] = bookkeeping.Keys.of(queue.name, self.connection)
        return self._registry_keys[queue.name]

    def _execute_attempt(self, attempt: Attempt) -> None:
        job, queue = attempt.job, attempt.queue
        if attempt.task is None and not self._lease(attempt):
            return
        payload, outcome = validate(attempt.task)
        if outcome is None:
            outcome = self._run_in_horse(attempt, payload)  # which marks the job started
        else:
            self._mark_started(job, queue)
        self._end(attempt, outcome)

    def _lease(self, attempt: Attempt) -> bool:
        """Lease the attempt's task; False if it is not to run (RQ is told why)."""
        job, queue = attempt.job, attempt.queue
        task_id, dispatch = [*job.args, 0][:2]
        try:
            attempt.task = Task.objects.lease(
                task_id, dispatch=dispatch, worker_name=self.name, heartbeats=True
            )
        except IntegrityError:  # another task of this exclusive type is running
            self._mark_started(job, queue)
            self._rq_finished(job, queue, defer(task_id))
            return False
        except DatabaseError as exc:
            close_connections()
            if isinstance(exc, OperationalError | InterfaceError):  # it may have committed
                attempt.task = self._leased_all_the_same(task_id, dispatch)
            if attempt.task is None:
                self._mark_started(job, queue)
                self._rq_failed(job, queue, f"Could not lease task {task_id}: {exc}", retry=False)
                return False
            return True
        if attempt.task is None:  # refused: unless a statement of ours leased it unconfirmed
            attempt.task = self._leased_all_the_same(task_id, dispatch)
        if attempt.task is None:
            self._mark_started(job, queue)
            self._rq_finished(job, queue, skip(task_id, dispatch))
            return False
        return True

    def _run_in_horse(self, attempt: Attempt, payload: dict[str, Any]) -> dict[str, Any]:
        """Have the horse run the attempt; its outcome, as this worker decides it.

        RQ's bookkeeping of the started job is written while the horse runs the handler:
        its round trip to Redis overlaps the handler's work instead of preceding it.
        """
        task = attempt.task
        horse = self._horse_for_next_job()
        if attempt.stop or attempt.cold:
            self._mark_started(attempt.job, attempt.queue)
            return _interrupted(attempt)
        horse.send({"job_id": attempt.job.id, "task": task, "payload": payload,
                    "timeout": task.timeout})  # fmt: skip
        started = time.monotonic()
        self._mark_started(attempt.job, attempt.queue)
        deadline = started + task.timeout + conf.HORSE_KILL_GRACE
        next_beat = started + self.job_monitoring_interval
        while True:
            wait = max(min(deadline, next_beat) - time.monotonic(), 0)
            readable, _, _ = select.select([horse.reports, self._wake_r], [], [], wait)
            if horse.reports in readable:
                return self._report_of(horse)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 1024)
            if attempt.stop or attempt.cold or attempt.ended_elsewhere:
                return self._interrupt(horse, _interrupted(attempt))
            current = time.monotonic()
            if current >= deadline:
                return self._interrupt(horse, _timed_out(task))
            if current >= next_beat:
                next_beat = current + self.job_monitoring_interval
                self._beat(attempt, current - started)

    def _report_of(self, horse: Horse) -> dict[str, Any]:
        report = horse.read_report()
        if report is None:  # the end of the pipe: the horse died
            self._discard_horse()
            return _lost(f"The work horse died without finishing ({horse.describe_exit()}).")
        horse.tasks_run += 1
        if report.get("error_code") == "timeout":  # interrupted mid-handler: start afresh
            self._retire_horse()
        return report

    def _interrupt(self, horse: Horse, outcome: dict[str, Any]) -> dict[str, Any]:
        """Kill the horse unless it has reported: a report written first (even as it was
        being killed) wins, else `outcome` is the attempt's."""
        if not horse.has_report():
            horse.kill()
        report = horse.read_report()
        if report is None or horse.exit_status is not None:
            self._discard_horse()
        if report is None:
            return outcome
        horse.tasks_run += 1
        return report

    def _beat(self, attempt: Attempt, elapsed: float) -> None:
        """Heartbeat RQ and the task row; learn of a stop, or of the attempt ended elsewhere.
        RQ's start of the job, if Redis was away when it was written, is written now (RQ's
        heartbeat is of its execution: there is none to beat before)."""
        try:
            if self.execution is None:
                self._mark_started(attempt.job, attempt.queue)
            if self.execution is not None:
                self.set_current_job_working_time(elapsed)
                self.maintain_heartbeats(attempt.job)
        except backend.RedisError as exc:
            self.log.warning("Worker %s: heartbeat to Redis failed: %s", self.name, exc)
        try:
            state = attempt.task.heartbeat(attempt=attempt.task.attempts)
        except DatabaseError as exc:
            close_connections()
            self.log.warning("Worker %s: heartbeat to the database failed: %s", self.name, exc)
            return
        if state is None:
            attempt.ended_elsewhere = True  # the reconciler judged it: not ours any more
        elif state:
            attempt.stop = True

    # The end of an attempt: the row first, then RQ.

    def _end(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        job, queue, task = attempt.job, attempt.queue, attempt.task
        if attempt.ended_elsewhere:  # the row said so: no end of this attempt can apply
            self._rq_superseded(attempt, outcome)
            return
        if outcome["status"] == STOPPED:
            if record_stopped(task) == REFUSED:
                self._rq_superseded(attempt, outcome)
                return
            self._stopped_job_id = job.id  # RQ marks the job stopped
            self._rq_failed(job, queue, "Stopped on request.", retry=False)
            return
        # A completion tells RQ first, unless RQ keeps no result (it deletes the job: the
        # reconciler would have nothing to copy if this worker died before the row).
        if outcome["status"] == COMPLETED and job.get_result_ttl(self.default_result_ttl):
            self._complete(attempt, outcome)
            return
        delay = job.get_retry_interval() if job.should_retry else None
        retry_at = retry_at_for(task, outcome, delay)
        if record_outcome(task, outcome, retry_at=retry_at) == REFUSED:
            self._rq_superseded(attempt, outcome)
        elif outcome["status"] == COMPLETED:
            self._rq_finished(job, queue, outcome["result"])
        else:
            retried = retry_at is not None and task.status == Task.Status.RETRYING
            self._rq_failed(job, queue, outcome.get("traceback", ""), retry=retried)

    def _complete(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        """A completed attempt: RQ is told first, in the script that also takes the next
        job; then the row's end is written, with the lease of that job's task in the same
        statement when it may be leased now (one commit; its attempt is then in hand,
        `_next`). Should this worker die between the two, the reconciler copies RQ's
        outcome to the row (a finished job whose lease went silent)."""
        task = attempt.task
        self._rq_finished(attempt.job, attempt.queue, outcome["result"])
        self._next = self._in_hand()  # before the lease: a stop for it is then seen
        if self._next is None:
            written = record_outcome(task, outcome)
        else:
            written = self._record_with_lease(task, outcome, self._next)
        if written == REFUSED:  # the finish script cleared this worker's bookkeeping
            self._log_discarded(attempt, outcome)

    def _in_hand(self) -> Attempt | None:
        """The attempt of the job taken with this end, if its task may be leased with it:
        one of ours, of a type that is not exclusive (whose lease may be refused: it is
        leased on its own), the worker not stopping."""
        if self._taken is None or self._stopping or self._cold:
            return None
        job, queue = self._taken
        try:
            if job.func_name != backend.JOB_FUNCTION:
                return None
            if get_task_type(job.meta.get("task_type", "")).policy.exclusive:
                return None
        except Exception:  # an unknown type, a job that does not unpickle: leased on its own
            return None
        return Attempt(job=job, queue=queue)

    def _record_with_lease(self, task: Task, outcome: dict[str, Any], attempt: Attempt) -> str:
        """record_outcome's end of a completed attempt, and the lease of `attempt`'s task
        in the same statement; `_next` is cleared unless it was leased."""
        task_id, dispatch = [*attempt.job.args, 0][:2]
        try:
            ended, attempt.task = task.complete_and_lease(
                attempt=task.attempts, result=outcome["result"], next_task=task_id,
                dispatch=dispatch, worker_name=self.name,
            )  # fmt: skip
        except IntegrityError:  # an exclusive row's conflict: neither was written
            self._next = None  # leased on its own, as any job
            return record_outcome(task, outcome)
        except DatabaseError:  # the database away, or the reply lost: both may have committed
            close_connections()
            self._next = None  # leased on its own, as any job (its lease finds it ours, if so)
            return record_outcome(task, outcome, unconfirmed=True)
        if attempt.task is None:
            self._next = None
        return WRITTEN if ended else REFUSED

    def _leased_all_the_same(self, task_id: int, dispatch: int) -> Task | None:
        """After a lease refused or whose statement raised: the task, if a statement of this
        worker's leased it for `dispatch` all the same, its reply lost (this lease's, or that
        of the end that leased it with the last attempt's); else None."""
        try:
            return retried(
                lambda _: Task.objects.leased_to(task_id, dispatch=dispatch, worker_name=self.name)
            )
        except DatabaseError:
            close_connections()
            return None

    def _rq_superseded(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        """The attempt was ended elsewhere: the reconciler judged this worker gone (it was
        cut off, or stopped) and deleted the attempt's job. The late outcome is recorded
        nowhere: only this worker's own bookkeeping of the job (its execution, its entry in
        the started registry, its current job and state) is cleared; the job is not written
        again (RQ's end of a job would bring a deleted job back, finished or failed)."""
        job = attempt.job
        self._log_discarded(attempt, outcome)
        try:
            with self.connection.pipeline() as pipeline:
                self.cleanup_execution(job, pipeline=pipeline)
                super().set_state(WorkerStatus.IDLE, pipeline=pipeline)
                events.send_held(pipeline)
                pipeline.execute()
        except backend.RedisError as exc:
            self.log.warning("Worker %s: could not clear job %s: %s", self.name, job.id, exc)

    def _log_discarded(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        self.log.warning(
            "Worker %s: attempt %s of task %s was ended elsewhere; its late outcome (%s)"
            " is discarded",
            self.name,
            attempt.task.attempts,
            attempt.task.pk,
            outcome["status"],
        )

    def _rq_finished(self, job: Job, queue: Queue, result: dict[str, Any]) -> None:
        job.ended_at = rq_now()
        job._result = result
        try:
            self._finish_job(job, queue)
        except Exception as exc:  # Redis away: the row is the truth; the reconciler reads it
            self.log.warning("Worker %s: could not finish job %s: %s", self.name, job.id, exc)

    def _finish_job(self, job: Job, queue: Queue) -> None:
        """RQ's handle_job_success in one script call (our jobs have no dependents and do
        not repeat, so RQ's WATCH of the dependents and their look-up are not needed),
        taking the next job in the same call unless the worker is stopping."""
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl == 0:  # results not kept: RQ deletes the job, its own way
            super().handle_job_success(job, queue, queue.started_job_registry)
            return
        take = self._takes_next and not (self._stop_requested or self._cold)
        found = bookkeeping.finish(
            self, job, keys=self._keys(queue), result_ttl=result_ttl, result=job._result,
            execution=self.execution, events=events.take_held(),
            take=_taking(self._ordered_queues, self.job_class, self.connection) if take else None,
        )  # fmt: skip
        if found:
            self._taken = self.queue_class.taken(
                found, connection=self.connection, job_class=self.job_class,
                serializer=self.serializer, death_penalty_class=self.death_penalty_class,
            )  # fmt: skip
        self.log.info(
            "Successfully completed %s job in %ss on worker %s",
            job.description,
            job.ended_at - job.started_at,
            self.name,
        )

    def _rq_failed(self, job: Job, queue: Queue, exc_string: str, *, retry: bool) -> None:
        job.ended_at = rq_now()
        if not retry:
            job.retries_left = 0
        try:
            self.handle_job_failure(job, queue, queue.started_job_registry, exc_string)
        except Exception as exc:  # as above
            self.log.warning("Worker %s: could not mark job %s failed: %s", self.name, job.id, exc)

    # The horse's life.

    def _horse_for_next_job(self) -> Horse:
        horse = self._horse
        if horse is not None and horse.alive():
            if horse.tasks_run < conf.HORSE_MAX_TASKS and (
                horse.rss_bytes() < conf.HORSE_MAX_RSS_MB * 1024 * 1024
            ):
                return horse
            self._retire_horse()
        elif horse is not None:
            self._discard_horse()
        _close_for_fork()
        self._horse = spawn(self.name)
        return self._horse

    def _discard_horse(self) -> None:
        horse, self._horse = self._horse, None
        if horse is not None:
            horse.kill()
            horse.close()

    def _retire_horse(self) -> None:
        horse, self._horse = self._horse, None
        if horse is not None:
            horse.retire()


def _interrupted(attempt: Attempt) -> dict[str, Any]:
    if attempt.stop and not attempt.cold:
        return {"status": STOPPED}
    return _lost("The worker was shut down while the attempt ran.")


def _timed_out(task: Task) -> dict[str, Any]:
    return {
        "status": "failed",
        "error_code": "timeout",
        "error_message": f"The attempt exceeded its timeout of {task.timeout} s"
        " and its work horse was killed.",
        "retryable": True,
    }


def _lost(message: str) -> dict[str, Any]:
    return {"status": "failed", "error_code": "worker_lost", "error_message": message,
            "retryable": True}  # fmt: skip


def _close_for_fork() -> None:
    """Close this process's database connections: none may be shared with the horse."""
    for connection in connections.all(initialized_only=True):
        connection.close()
        if getattr(connection, "pool", None) is not None:
            connection.close_pool()


def warm_up() -> None:
    """Run the per-task ORM paths once, in a transaction rolled back, before the horse forks.

    Django builds model metadata and query-compilation caches lazily; built here they are
    inherited by the horse. Nothing is kept (only the tables' id sequences advance by one).
    """
    try:
        with transaction.atomic():
            task = Task.objects.create(task_type="ping", payload={})
            leased = Task.objects.lease(task.pk, dispatch=0, worker_name="warm-up")
            leased.heartbeat(attempt=leased.attempts)
            leased.complete(attempt=leased.attempts, result={})
            get_task_type(task.task_type).validate_payload(leased.payload)
            Task.objects.with_attempt_history().filter(pk=task.pk).first()
            transaction.set_rollback(True)
    except DatabaseError:
        logger.info("Worker warm-up skipped: the database is unreachable")
