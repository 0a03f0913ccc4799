"""The reconciler: every non-terminal task converges, whatever RQ or Redis did.

Run every 60 s by `manage.py rqcron taskqueue.cron` (and by `manage.py reconcile_tasks`),
under a Redis lock so that two cron processes never reconcile at once. The database is the
source of truth; RQ's view of each task's current job decides what to do.
"""

import contextlib
import logging
import uuid
from collections import Counter
from datetime import datetime, timedelta

from django.utils import timezone

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.exceptions import QueueUnavailable
from taskqueue.models import Task

logger = logging.getLogger(__name__)

LOCK = "reconcile"
# The lock is short and extended as a pass goes (every LOCK_EXTEND_EVERY tasks), so that a
# reconciler killed mid-pass (its worker SIGKILLed) holds up the next pass seconds, not
# minutes. Two passes at once would be safe (every transition is conditional), only wasted.
LOCK_TTL = 30
LOCK_EXTEND_EVERY = 100
# Job states in which RQ will still run (or is running) the job.
PENDING = {"queued", "scheduled", "deferred", "started"}


def reconcile_tasks(*, limit: int | None = None) -> dict[str, int]:
    """One reconciliation pass; returns how many tasks each action touched."""
    token = uuid.uuid4().hex
    try:
        if not backend.acquire_lock(LOCK, token, ttl=LOCK_TTL):
            logger.info("Another reconciler is running; skipping this pass")
            return {"skipped": 1}
    except backend.RedisError as exc:
        logger.warning("Reconciler: Redis unreachable (%s); will try again", exc)
        return {"redis_unavailable": 1}
    try:
        counts = _reconcile(limit or conf.RECONCILE_BATCH, token)
    except (backend.RedisError, QueueUnavailable) as exc:
        logger.warning("Reconciler: Redis failed mid-pass (%s); will try again", exc)
        counts = Counter(redis_unavailable=1)
    finally:
        with contextlib.suppress(backend.RedisError):
            backend.release_lock(LOCK, token)
    if counts:
        logger.warning("Reconciler acted: %s", dict(counts))
        with contextlib.suppress(backend.RedisError):
            backend.count_actions(counts, name="reconciler")
    return dict(counts)


def _reconcile(limit: int, token: str) -> Counter:
    counts: Counter = Counter()
    backend.clean_started_registries()
    # Every age below is judged by the database's clock, the one heartbeats are written
    # with: this host's clock may be off from the workers' (docs/scale-out.md).
    now = Task.objects.database_now()
    waiting = list(
        Task.objects.waiting()
        .filter(created_at__lt=now - timedelta(seconds=conf.RECONCILE_GRACE))
        .order_by("created_at")[:limit]
    )
    leased = list(Task.objects.leased().order_by("leased_at")[:limit])
    states = backend.job_states([task.job_id for task in waiting + leased])
    for n, task in enumerate(waiting + leased, start=1):
        if n % LOCK_EXTEND_EVERY == 0 and not backend.extend_lock(LOCK, token, ttl=LOCK_TTL):
            logger.warning("Reconciler: lost its lock mid-pass; stopping this pass")
            break
        judge = _reconcile_leased if task.status == Task.Status.LEASED else _reconcile_waiting
        judge(task, states[task.job_id], counts, now)
    return counts


def _reconcile_waiting(task: Task, state: backend.JobState, counts: Counter, now: datetime) -> None:
    """Give a waiting task a job that will run, unless it has one."""
    if state.status not in PENDING:
        _redispatch(task, counts, "dispatched")
    elif state.status == "scheduled" and _overdue(state, now):
        # RQ's scheduler is not running (its worker died, or none was started with
        # --with-scheduler): dispatch under a new generation; the old job never runs.
        stale = task.job_id
        _redispatch(task, counts, "overdue_dispatched")
        with contextlib.suppress(QueueUnavailable):
            backend.delete_job(stale)


def _overdue(state: backend.JobState, now: datetime) -> bool:
    return state.due_at is None or now - state.due_at > timedelta(seconds=conf.SCHEDULE_GRACE)


def _reconcile_leased(task: Task, state: backend.JobState, counts: Counter, now: datetime) -> None:
    """Judge a leased task's attempt only once its owner is provably gone."""
    if _owner_alive(task, state, now):
        if task.stop_requested_at and now - task.stop_requested_at > timedelta(
            seconds=conf.RECONCILE_GRACE
        ):
            worker = task.current_worker_name()
            if worker and backend.stop_job(task.job_id, worker):
                counts["stop_resent"] += 1
        return
    if state.status == "finished":
        result = backend.job_result(task.job_id)
        if isinstance(result, dict) and backend.SKIPPED not in result:
            if task.complete(attempt=task.attempts, result=result):
                counts["outcome_copied"] += 1
            return
    _end_lost_attempt(task, state.status, counts)


def _owner_alive(task: Task, state: backend.JobState, now: datetime) -> bool:
    """Whether the worker that leased the attempt may still record its end.

    Our worker writes `heartbeat_at` every JOB_MONITORING_INTERVAL: it is alive while that
    is fresher than the interval plus HEARTBEAT_MARGIN, whatever Redis says (Redis may have
    lost the job and the worker's keys). A worker of another class does not heartbeat the
    row: RQ's view decides, and a job that ended lately leaves its worker time to record.
    Either way an attempt this far past its timeout is over.
    """
    leased_at = task.leased_at or now
    if now > leased_at + timedelta(seconds=task.timeout + conf.LEASE_EXPIRY_MARGIN):
        return False
    if task.heartbeat_at is not None:
        silence = now - task.heartbeat_at
        return silence < timedelta(seconds=conf.JOB_MONITORING_INTERVAL + conf.HEARTBEAT_MARGIN)
    grace = timedelta(seconds=conf.RECONCILE_GRACE)
    if state.status in ("queued", "started"):
        return state.status == "started" or now - leased_at < grace
    return state.ended_at is not None and now - state.ended_at < grace


def _end_lost_attempt(task: Task, status: str | None, counts: Counter) -> None:
    """The attempt's owner is gone and nobody recorded its end: record it now.

    The attempt's job is then deleted, whatever the end: RQ's own cleanup may have
    scheduled it for a retry of its own (the job carries RQ's Retry), which would run a
    job whose attempt is over.
    """
    stale = task.job_id
    if task.stop_requested_at:
        if not task.stopped(attempt=task.attempts):
            return
        counts["stopped"] += 1
    else:
        code = "redis_lost" if status is None else "worker_lost"
        retry = task.attempts < task.max_attempts
        message = (
            "Redis lost the job of this attempt, and its worker stopped heartbeating."
            if status is None
            else f"The worker running this attempt was lost (RQ status: {status})."
        )
        if not task.fail(
            attempt=task.attempts,
            error_code=code,
            error_message=message,
            retry_at=timezone.now() if retry else None,
        ):
            return
        counts[code] += 1
        if retry and task.status == Task.Status.RETRYING:
            _redispatch(task, counts, "redispatched")  # a new generation: a new job
    with contextlib.suppress(QueueUnavailable):
        backend.delete_job(stale)


def _redispatch(task: Task, counts: Counter, action: str) -> None:
    if task.redispatch():
        backend.dispatch(task, delay=task.dispatch_delay())  # a retry or run_after: not early
        counts[action] += 1
        logger.warning("Reconciler: task %s %s as job %s", task.pk, action, task.job_id)
