"""What operators and health checks read: queues, workers, cron, Redis, failure rates."""

from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.models import Task


def queue_stats() -> list[dict[str, Any]]:
    """Depth and oldest waiting age of each queue (RQ's view)."""
    return backend.queue_snapshot()


def worker_stats(*, stale_after: float | None = None) -> list[dict[str, Any]]:
    """Registered workers; `alive` is False when the heartbeat is older than `stale_after`.

    `stale` is stricter: the heartbeat is older than the worker's own interval in its state
    (idle or busy) plus HEARTBEAT_GRACE, so a frozen worker shows within seconds, not
    minutes; `stale_after_seconds` is that bound (WORKER_STALE_SECONDS when the worker does
    not say its interval).
    """
    limit = conf.WORKER_STALE_SECONDS if stale_after is None else stale_after
    workers = _with_alive(backend.worker_snapshot(), limit)
    for worker in workers:
        interval = worker["heartbeat_interval_seconds"]
        bound = interval + conf.HEARTBEAT_GRACE if interval else conf.WORKER_STALE_SECONDS
        age = worker["heartbeat_age_seconds"]
        worker["stale_after_seconds"] = bound
        worker["stale"] = age is None or age > bound
    return workers


def waiting_while_idle(queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> list[str]:
    """The queues whose oldest job has waited over IDLE_WAIT_SECONDS while a worker that
    listens on the queue says it is idle and has not heartbeaten since the job came.

    An idle worker takes a job at once: one that says idle while a job waits is frozen, cut
    off from Redis, or not what it says. (A worker idle for a moment between two jobs has
    just heartbeaten, so a backlog behind busy workers is not flagged.)
    """
    flagged = []
    for queue in queues:
        waited = queue["oldest_age_seconds"]
        if waited is None or waited <= conf.IDLE_WAIT_SECONDS:
            continue
        if any(
            worker["state"] == "idle"
            and queue["name"] in worker["queues"]
            and (
                worker["heartbeat_age_seconds"] is None or worker["heartbeat_age_seconds"] > waited
            )
            for worker in workers
        ):
            flagged.append(queue["name"])
    return flagged


def cron_stats(*, stale_after: float | None = None) -> list[dict[str, Any]]:
    """Registered rqcron processes, `alive` like workers."""
    limit = conf.CRON_STALE_SECONDS if stale_after is None else stale_after
    return _with_alive(backend.cron_snapshot(), limit)


def _with_alive(processes: list[dict[str, Any]], stale_after: float) -> list[dict[str, Any]]:
    for process in processes:
        age = process["heartbeat_age_seconds"]
        process["alive"] = age is not None and age <= stale_after
    return processes


def redis_stats() -> dict[str, Any]:
    return backend.redis_snapshot()


def failure_rate(window: timedelta) -> dict[str, Any]:
    """Failed / (completed + failed) among tasks that finished within `window`."""
    since = timezone.now() - window
    counts = Task.objects.filter(finished_at__gte=since).aggregate(
        completed=Count("pk", filter=Q(status=Task.Status.COMPLETED)),
        failed=Count("pk", filter=Q(status=Task.Status.FAILED)),
    )
    finished = counts["completed"] + counts["failed"]
    return {
        "window_seconds": int(window.total_seconds()),
        "completed": counts["completed"],
        "failed": counts["failed"],
        "rate": counts["failed"] / finished if finished else 0.0,
    }


def failure_rate_alert(window: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """The failure rate over `window` against FAILURE_RATE_THRESHOLD; `firing` if above."""
    rate = failure_rate(window)
    finished = rate["completed"] + rate["failed"]
    threshold = conf.FAILURE_RATE_THRESHOLD
    firing = finished >= conf.FAILURE_RATE_MIN_TASKS and rate["rate"] > threshold
    return {**rate, "threshold": threshold, "firing": firing}


def reconciler_totals() -> dict[str, int]:
    """Running totals of the reconciler's actions since Redis started keeping them."""
    return backend.action_totals("reconciler")
