"""Statistics for the API, the dashboard and the metrics, computed in the database."""

from datetime import timedelta
from typing import Any

from django.db import connections
from django.db.models import Aggregate, Count, DurationField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from taskqueue import backend
from taskqueue.models import Task, TaskAttempt
from taskqueue.services import monitoring

PERCENTILES = (0.5, 0.95)


class PercentileCont(Aggregate):
    """PostgreSQL's percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


def task_stats(*, window: timedelta = timedelta(hours=24)) -> dict[str, Any]:
    """Counts by status, failure rates and p50/p95 run and wait times per type."""
    since = timezone.now() - window
    by_status = dict(
        Task.objects.filter(created_at__gte=since)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    run = TaskAttempt.objects.filter(finished_at__gte=since, outcome="completed")
    wait = Task.objects.filter(started_at__gte=since)
    return {
        "window_seconds": int(window.total_seconds()),
        "counts_by_status": {status: by_status.get(status, 0) for status in Task.Status.values},
        "failure_rate": {
            "1h": monitoring.failure_rate(timedelta(hours=1)),
            "24h": monitoring.failure_rate(timedelta(hours=24)),
        },
        "run_seconds": _percentiles(
            run, "task__task_type", duration_between("started_at", "finished_at")
        ),
        "wait_seconds": _percentiles(
            wait, "task_type", duration_between("created_at", "started_at")
        ),
    }


def _percentiles(queryset: QuerySet, group: str, duration: Any) -> dict[str, dict[str, Any]]:
    """{group value: {"count", "p50", "p95"}} of a duration, in seconds."""
    queryset = queryset.annotate(duration=duration)
    if connections[queryset.db].vendor == "postgresql":
        rows = queryset.values(group).annotate(
            count=Count("pk"),
            **{f"p{round(f * 100)}": PercentileCont("duration", f) for f in PERCENTILES},
        )
        return {
            row[group]: {
                "count": row["count"],
                **{f"p{round(f * 100)}": _seconds(row[f"p{round(f * 100)}"]) for f in PERCENTILES},
            }
            for row in rows
        }
    # Without percentile_cont: the nearest rank, one indexed query per percentile.
    result = {}
    counts = queryset.values_list(group).annotate(n=Count("pk")).values_list(group, "n")
    for value, count in counts:
        ordered = queryset.filter(**{group: value}).order_by("duration")
        result[value] = {"count": count}
        for fraction in PERCENTILES:
            rank = min(count - 1, int(fraction * count))
            found = ordered.values_list("duration", flat=True)[rank : rank + 1]
            result[value][f"p{round(fraction * 100)}"] = _seconds(next(iter(found), None))
    return result


def duration_between(start: str, end: str) -> ExpressionWrapper:
    """`end - start` as a duration, computed in the database."""
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 6)
    return round(float(value) / 1e6, 6)  # SQLite durations are microseconds


def system_stats() -> dict[str, Any]:
    """Everything /stats shows: queues and workers (RQ) and tasks (database).

    With Redis unreachable the database half is still served; `redis_available` says so.
    """
    try:
        queues, workers = monitoring.queue_stats(), monitoring.worker_stats()
    except backend.RedisError:
        queues = workers = None
    return {
        "redis_available": queues is not None,
        "queues": queues,
        "workers": workers,
        "tasks": task_stats(),
    }


def throughput_by_hour(*, hours: int = 24) -> list[dict[str, Any]]:
    """Tasks finished per hour over the last `hours`, completed and failed, oldest first."""
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=hours - 1)
    rows = (
        Task.objects.filter(finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .values("hour")
        .annotate(
            completed=Count("pk", filter=Q(status=Task.Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=Task.Status.FAILED)),
        )
    )
    by_hour = {row["hour"]: row for row in rows}
    series = []
    for n in range(hours):
        hour = start + timedelta(hours=n)
        row = by_hour.get(hour, {})
        series.append(
            {"hour": hour, "completed": row.get("completed", 0), "failed": row.get("failed", 0)}
        )
    return series


def recent_failures(*, limit: int = 10) -> list[Task]:
    return list(
        Task.objects.filter(status=Task.Status.FAILED)
        .order_by("-finished_at")
        .only("pk", "task_type", "error_code", "error_message", "finished_at", "attempts")[:limit]
    )
