"""The RQ / Redis boundary: with worker.py, the only code that imports rq or redis.

One Redis client per process (redis-py's pool is fork-safe), so the enqueue path never
opens a connection per request.
"""

import contextvars
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from redis.exceptions import LockError
from rq import Queue, Retry, get_current_job
from rq.command import PUBSUB_CHANNEL_TEMPLATE
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException

from taskqueue.backend import bookkeeping, cutoff
from taskqueue.backend.hub import EventHub as EventHub
from taskqueue.backend.hub import event_hub as event_hub
from taskqueue.conf import conf
from taskqueue.exceptions import QueueUnavailable
from taskqueue.registry import QUEUES, get_task_type

if TYPE_CHECKING:
    from taskqueue.models import Task

logger = logging.getLogger(__name__)

JOB_FUNCTION = "taskqueue.execution.run_task"
# The key of the result a job returns when it did not run its task (cancelled, stale...).
SKIPPED = "taskqueue_skipped"
LOCK_PREFIX = "taskqueue:lock:"
RedisError = redis.RedisError


@cache
def _client(url: str, pid: int) -> redis.Redis:
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=conf.REDIS_CONNECT_TIMEOUT,
        socket_timeout=conf.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        # No CLIENT SETINFO handshake: two round trips saved on every new connection,
        # which matters in work horses (a new process, so new connections, per job).
        lib_name=None,
        lib_version=None,
    )
    # After a timeout, fail at once for a while instead of waiting out one per call.
    pool = client.connection_pool
    pool.connection_class = cutoff.fail_fast(pool.connection_class)
    return client


def get_connection() -> redis.Redis:
    """This process's Redis client for REDIS_URL (in a work horse: the job's own)."""
    job = get_current_job()
    if job is not None and job.connection is not None:
        return job.connection  # already connected by RQ in this horse
    return _client(settings.REDIS_URL, os.getpid())


def get_queue(name: str) -> Queue:
    return _queue(name, settings.REDIS_URL, os.getpid())


@cache
def _queue(name: str, url: str, pid: int) -> Queue:
    return Queue(name, connection=get_connection())


def dispatch(task: "Task", *, delay: int = 0, publish: Sequence[tuple[str, str]] = ()) -> None:
    """Enqueue the RQ job for the task's current dispatch; QueueUnavailable if Redis is down.

    `publish`: (channel, message) events sent with the job, in the same atomic step (so
    before any event of a worker that takes the job).
    """
    options = job_options(task)
    queue = get_queue(task.queue)
    try:
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), JOB_FUNCTION, **options)
            for name, message in publish:
                queue.connection.publish(name, message)
        else:  # RQ's job, written in one script call, the events after it: before any
            # lease's event (bookkeeping.enqueue)
            options["timeout"] = options.pop("job_timeout")
            bookkeeping.enqueue(queue, queue.create_job(JOB_FUNCTION, **options), publish)
    except RedisError as exc:
        raise QueueUnavailable(f"Could not enqueue task {task.pk}: {exc}") from exc


def job_options(task: "Task") -> dict:
    """RQ's options (Queue.enqueue's keywords) for the job of the task's current dispatch."""
    retries = max(task.max_attempts - task.attempts - 1, 0)
    backoff = get_task_type(task.task_type).policy.backoff
    return {
        "job_id": task.job_id,
        "args": (task.pk, task.dispatch),
        # The type, for the worker to know without a read whether it may lease the task
        # with the end of the last (not an exclusive type); in the meta, which a worker of
        # an earlier version ignores.
        "meta": {"task_type": task.task_type},
        "job_timeout": task.timeout,
        "result_ttl": conf.RESULT_TTL,
        "failure_ttl": conf.FAILURE_TTL,
        "description": f"{task.task_type} #{task.pk}",
        "retry": Retry(max=retries, interval=backoff.delays(retries)) if retries else None,
    }


def delete_job(job_id: str) -> None:
    """Delete a job that has not started (queued or scheduled); a missing job is fine.

    RQ fails half-way (ValueError, "Execution ... not found") when one of the job's
    executions has expired, as an abandoned job's has, or is ending under its feet: the job
    has left its queue and registries by then, and what is left of it is deleted here.
    """
    connection = get_connection()
    try:
        job = Job.fetch(job_id, connection=connection)
        try:
            job.delete(remove_from_queue=True)
        except ValueError:
            keys = (job.key, job.dependents_key, job.dependencies_key)
            connection.delete(*keys, job.execution_registry.key)
    except (NoSuchJobError, InvalidJobOperation):
        pass
    except RedisError as exc:
        raise QueueUnavailable(f"Could not cancel job {job_id}: {exc}") from exc


def stop_job(job_id: str, worker_name: str) -> bool:
    """Ask `worker_name` (the worker that leased the attempt) to stop the job.

    True if a worker received the command; False if nobody listens on its channel (the
    worker is gone, or reconnecting to Redis): the stop, recorded on the task, then reaches
    the worker through its next heartbeat, or the reconciler ends the attempt.
    """
    connection = get_connection()
    payload = json.dumps({"command": "stop-job", "job_id": job_id})
    try:
        return bool(connection.publish(PUBSUB_CHANNEL_TEMPLATE % worker_name, payload))
    except RedisError as exc:
        raise QueueUnavailable(f"Could not send a stop for job {job_id}: {exc}") from exc


def acquire_lock(name: str, token: str, ttl: int) -> bool:
    """Take the lock `name` for `ttl` seconds unless another holder has it (redis-py's Lock)."""
    lock = get_connection().lock(LOCK_PREFIX + name, timeout=ttl)
    return bool(lock.acquire(blocking=False, token=token))


def extend_lock(name: str, token: str, ttl: int) -> bool:
    """Give the lock `name` `ttl` more seconds if `token` still holds it."""
    lock = get_connection().lock(LOCK_PREFIX + name, timeout=ttl)
    lock.local.token = token.encode()
    try:
        return bool(lock.reacquire())
    except LockError:
        return False


def release_lock(name: str, token: str) -> bool:
    """Release the lock `name` if `token` still holds it; False if it did not."""
    lock = get_connection().lock(LOCK_PREFIX + name)
    lock.local.token = token.encode()
    try:
        lock.release()
    except LockError:
        return False
    return True


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, JobTimeoutException)


@dataclass
class JobContext:
    """What the execution wrapper and handlers may know of the RQ job running them.

    In our worker's long-lived horse there is no RQ job object: the worker tells the horse
    the job's id and its own name, given here as `name` and `id`.
    """

    job: Job | None
    name: str | None = None
    id: str | None = None

    @property
    def worker_name(self) -> str:
        if self.name:
            return self.name
        if self.job is not None and self.job.worker_name:
            return self.job.worker_name
        return f"inline@{os.uname().nodename}:{os.getpid()}"

    @property
    def job_id(self) -> str:
        if self.id:
            return self.id
        return self.job.id if self.job is not None else f"inline-{os.getpid()}"

    @property
    def task_type(self) -> str | None:
        """The task type the job was enqueued for (None for jobs enqueued without it)."""
        return (self.job.meta or {}).get("task_type") if self.job is not None else None

    @property
    def timeout(self) -> int:
        """The job's timeout in seconds (inline: the longest any task type may have)."""
        if self.job is not None and self.job.timeout and self.job.timeout > 0:
            return int(self.job.timeout)
        return 24 * 3600

    def retry_delay(self) -> int | None:
        """Seconds until this job is retried if it fails now; None when it won't be.

        Inline (no RQ job) the caller retries at once, within the attempts budget.
        """
        if self.job is None:
            return 0
        if not self.job.should_retry:
            return None
        return self.job.get_retry_interval()

    def disable_retry(self) -> None:
        """Make RQ treat the coming failure as final."""
        if self.job is not None:
            self.job.retries_left = 0


# The job a long-lived work horse is running (set by the worker's horse, read by handlers).
running_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "running_job", default=None
)


def current_job() -> JobContext:
    return running_job.get() or JobContext(get_current_job())


@dataclass
class JobState:
    """RQ's view of one job: its status (None when Redis has no such job), and for a
    scheduled job the time it is due (None if its registry has lost it)."""

    status: str | None
    due_at: datetime | None = None
    ended_at: datetime | None = None


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """The RQ status of each job (one round trip, one more for the queued ones, and one
    per scheduled job).

    A job whose hash says `queued` but that is in no queue was popped by a worker that
    died before it leased the task (RQ's dequeue is a plain pop): nothing will ever run
    it, and it is reported missing (None). A live worker that has just popped it loses
    nothing when the reconciler acts on that: its lease is for the old dispatch.

    So is a job whose hash is only a fragment: after Redis restarted empty, a worker's
    heartbeat or started bookkeeping for the job it runs writes a few fields (status,
    started_at, last_heartbeat) into a new hash that has no job in it.
    """
    connection = get_connection()
    jobs = _fetch_jobs(job_ids, connection)
    waiting = [job for job in jobs if job is not None and job.get_status(refresh=False) == "queued"]
    if waiting:
        with connection.pipeline(transaction=False) as pipeline:
            for job in waiting:
                pipeline.lpos(get_queue(job.origin).key, job.id)
            positions = pipeline.execute()
        popped = {job.id for job, at in zip(waiting, positions, strict=True) if at is None}
        jobs = [None if job is not None and job.id in popped else job for job in jobs]
    states = {}
    for job_id, job in zip(job_ids, jobs, strict=True):
        status = job.get_status(refresh=False) if job is not None else None
        due_at = None
        if status == JobStatus.SCHEDULED:
            score = connection.zscore(get_queue(job.origin).scheduled_job_registry.key, job_id)
            due_at = datetime.fromtimestamp(score, tz=UTC) if score is not None else None
        ended_at = job.ended_at.replace(tzinfo=UTC) if job is not None and job.ended_at else None
        states[job_id] = JobState(
            status=status.value if status else None, due_at=due_at, ended_at=ended_at
        )
    return states


def _fetch_jobs(job_ids: list[str], connection: redis.Redis) -> list[Job | None]:
    """RQ's `fetch_many` (one round trip); one job at a time when one of them is not a job
    (RQ then raises for the whole batch), each such one None."""
    if not job_ids:
        return []
    try:
        return Job.fetch_many(job_ids, connection=connection)
    except NoSuchJobError:
        jobs: list[Job | None] = []
        for job_id in job_ids:
            try:
                jobs.append(Job.fetch(job_id, connection=connection))
            except NoSuchJobError:
                logger.warning("Job %s in Redis is not a whole job: taken as missing", job_id)
                jobs.append(None)
        return jobs


def job_result(job_id: str) -> object:
    """The return value of a finished job, or None."""
    try:
        return Job.fetch(job_id, connection=get_connection()).return_value()
    except NoSuchJobError:
        return None


def clean_started_registries() -> None:
    """RQ's cleanup of jobs whose worker stopped heartbeating (retried or failed by RQ)."""
    for name in QUEUES:
        get_queue(name).started_job_registry.cleanup()


def queue_snapshot() -> list[dict]:
    """Per queue: waiting jobs, the age of the oldest, and RQ's registries' sizes."""
    snapshot = []
    now = datetime.now(tz=UTC)
    for name in QUEUES:
        queue = get_queue(name)
        oldest_id = queue.connection.lindex(queue.key, 0)
        oldest_age = None
        if oldest_id:
            job = Job.fetch_many([oldest_id.decode()], connection=queue.connection)[0]
            if job is not None and job.enqueued_at:
                oldest_age = max(0.0, (now - job.enqueued_at.replace(tzinfo=UTC)).total_seconds())
        snapshot.append(
            {
                "name": name,
                "depth": queue.count,
                "oldest_age_seconds": oldest_age,
                "scheduled": queue.scheduled_job_registry.count,
                "started": queue.started_job_registry.count,
                "failed": queue.failed_job_registry.count,
            }
        )
    return snapshot


# Fields our worker adds to RQ's hash of a worker: how often it heartbeats, in seconds,
# while it waits for a job and while it runs one (RQ's own workers do not say).
IDLE_HEARTBEAT_FIELD = "taskqueue_idle_heartbeat"
BUSY_HEARTBEAT_FIELD = "taskqueue_busy_heartbeat"


def worker_snapshot() -> list[dict]:
    """The workers registered in Redis, with their heartbeat age and, when the worker says,
    its heartbeat interval in its current state (None when unknown), in seconds."""
    from rq.worker import Worker

    now = datetime.now(tz=UTC)
    workers = []
    found = Worker.all(connection=get_connection())
    with get_connection().pipeline(transaction=False) as pipeline:
        for worker in found:
            pipeline.hmget(worker.key, IDLE_HEARTBEAT_FIELD, BUSY_HEARTBEAT_FIELD)
        intervals = pipeline.execute()
    for worker, (idle, busy) in zip(found, intervals, strict=True):
        beat = worker.last_heartbeat
        state = worker.get_state()
        interval = idle if state == "idle" else busy if state == "busy" else None
        workers.append(
            {
                "name": worker.name,
                "hostname": worker.hostname,
                "pid": worker.pid,
                "state": state,
                "current_job": worker.get_current_job_id(),
                "queues": worker.queue_names(),
                "heartbeat_age_seconds": (
                    (now - beat.replace(tzinfo=UTC)).total_seconds() if beat else None
                ),
                "heartbeat_interval_seconds": float(interval) if interval else None,
            }
        )
    return sorted(workers, key=lambda w: w["name"])


def cron_snapshot() -> list[dict]:
    """The rqcron processes registered in Redis, with their heartbeat age."""
    from rq.cron import CronScheduler

    now = datetime.now(tz=UTC)
    result = []
    for scheduler in CronScheduler.all(get_connection()):
        beat = scheduler.last_heartbeat
        age = (now - beat.replace(tzinfo=UTC)).total_seconds() if beat else None
        result.append({"name": scheduler.name, "heartbeat_age_seconds": age})
    return result


def redis_snapshot() -> dict:
    """PING latency and memory of the Redis server (no address, no credentials)."""
    connection = get_connection()
    started = time.perf_counter()
    connection.ping()
    latency = time.perf_counter() - started
    info = connection.info()
    return {
        "latency_ms": round(latency * 1000, 3),
        "version": info.get("redis_version"),
        "used_memory_bytes": info.get("used_memory"),
        "maxmemory_bytes": info.get("maxmemory"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def count_actions(counts: dict[str, int], *, name: str) -> None:
    """Add to the running totals of `name`'s actions (read by monitoring)."""
    if counts:
        connection = get_connection()
        with connection.pipeline() as pipeline:
            for action, number in counts.items():
                pipeline.hincrby(f"taskqueue:actions:{name}", action, number)
            pipeline.execute()


def count_hit(key: str, *, expire: int) -> int:
    """Add one to the counter `key` (kept `expire` seconds); its new value. One round trip,
    in MULTI/EXEC so that the counter never outlives its expiry."""
    with get_connection().pipeline(transaction=True) as pipeline:
        pipeline.incr(key)
        pipeline.expire(key, expire)
        hits, _ = pipeline.execute()
    return int(hits)


AUTH_GENERATION_KEY = "taskqueue:auth-generation"


def auth_generation() -> int | None:
    """The counter every web process compares its token cache with; None if Redis is down."""
    try:
        value = get_connection().get(AUTH_GENERATION_KEY)
    except RedisError:
        return None
    return int(value or 0)


def bump_auth_generation() -> None:
    """Tokens, users or permissions changed: every process's token cache is stale."""
    try:
        get_connection().incr(AUTH_GENERATION_KEY)
    except RedisError as exc:
        # The other processes' caches then expire on their own (TOKEN_CACHE_SECONDS).
        logger.warning("Could not invalidate the token caches through Redis: %s", exc)


def action_totals(name: str) -> dict[str, int]:
    raw = get_connection().hgetall(f"taskqueue:actions:{name}")
    return {key.decode(): int(value) for key, value in raw.items()}


def delete_jobs(job_ids: list[str]) -> None:
    """Delete what Redis still holds of these jobs (their hash and results)."""
    if not job_ids:
        return
    with get_connection().pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.delete(Job.key_for(job_id), f"rq:results:{job_id}")
        pipeline.execute()
