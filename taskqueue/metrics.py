"""Prometheus metrics, read at scrape time from the database (the truth) and from RQ.

Histograms are computed in the database over every attempt still kept (pruning after
TASK_RETENTION_DAYS makes them drop then), so every web process serves the same numbers.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest

from taskqueue.conf import conf
from taskqueue.models import Task, TaskAttempt
from taskqueue.services import alerts, monitoring
from taskqueue.services.stats import duration_between

BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def _histogram(name: str, doc: str, rows: Any, group: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["task_type"])
    for row in rows:
        buckets = [(str(b), row[f"le_{n}"]) for n, b in enumerate(BUCKETS)]
        buckets.append(("+Inf", row["count"]))
        total = row["total"].total_seconds() if row["total"] is not None else 0.0
        family.add_metric([row[group]], buckets, total)
    return family


def _duration_rows(queryset: Any, group: str, start: str, end: str) -> Any:
    return (
        queryset.annotate(duration=duration_between(start, end))
        .values(group)
        .annotate(
            count=Count("pk"),
            total=Sum("duration"),
            **{
                f"le_{n}": Count("pk", filter=Q(duration__lte=timedelta(seconds=b)))
                for n, b in enumerate(BUCKETS)
            },
        )
    )


class TaskQueueCollector:
    def collect(self) -> Iterator[Any]:
        tasks = GaugeMetricFamily(
            "taskqueue_tasks",
            "Tasks in the database, by type and status.",
            labels=["task_type", "status"],
        )
        for row in Task.objects.values("task_type", "status").annotate(n=Count("pk")).order_by():
            tasks.add_metric([row["task_type"], row["status"]], row["n"])
        yield tasks
        attempts = TaskAttempt.objects.filter(finished_at__isnull=False)
        yield _histogram(
            "taskqueue_attempt_duration_seconds",
            "Duration of finished attempts, by task type.",
            _duration_rows(attempts, "task__task_type", "started_at", "finished_at"),
            "task__task_type",
        )
        started = Task.objects.filter(started_at__isnull=False)
        yield _histogram(
            "taskqueue_wait_seconds",
            "Time from acceptance to the first attempt's start, by task type.",
            _duration_rows(started, "task_type", "created_at", "started_at"),
            "task_type",
        )
        overdue = GaugeMetricFamily(
            "taskqueue_leased_overdue_tasks",
            "Tasks running longer than their timeout plus a minute (should be 0).",
        )
        now = timezone.now()
        overdue.add_metric(
            [],
            sum(
                1
                for leased_at, timeout in Task.objects.leased().values_list("leased_at", "timeout")
                if leased_at and (now - leased_at).total_seconds() > timeout + 60
            ),
        )
        yield overdue
        rate = GaugeMetricFamily(
            "taskqueue_failure_rate",
            "Failed / finished tasks over a window (what the in-product alert compares).",
            labels=["window"],
        )
        for label, window in (("1h", timedelta(hours=1)), ("24h", timedelta(hours=24))):
            rate.add_metric([label], monitoring.failure_rate(window)["rate"])
        yield rate
        yield from self._redis_metrics()

    def _redis_metrics(self) -> Iterator[Any]:
        up = GaugeMetricFamily("taskqueue_redis_up", "1 when Redis answered this scrape.")
        try:
            queues = monitoring.queue_stats()
            workers = monitoring.worker_stats()
            actions = monitoring.reconciler_totals()
            firing = alerts.firing_alerts()
        except Exception:  # Redis unreachable: say so, serve the database half
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "taskqueue_queue_depth", "Jobs waiting per queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "taskqueue_queue_oldest_age_seconds", "Age of the oldest waiting job.", labels=["queue"]
        )
        for queue in queues:
            depth.add_metric([queue["name"]], queue["depth"])
            age.add_metric([queue["name"]], queue["oldest_age_seconds"] or 0)
        yield depth
        yield age
        alive = GaugeMetricFamily("taskqueue_workers_alive", "Workers with a fresh heartbeat.")
        alive.add_metric([], sum(1 for worker in workers if worker["alive"]))
        yield alive
        rescued = CounterMetricFamily(
            "taskqueue_reconciler_actions", "Reconciler actions, by kind.", labels=["action"]
        )
        for action, number in sorted(actions.items()):
            rescued.add_metric([action], number)
        yield rescued
        alert = GaugeMetricFamily(
            "taskqueue_alert_firing", "1 for each in-product alert firing.", labels=["alert"]
        )
        for name in sorted(firing):
            alert.add_metric([name], 1)
        yield alert
        threshold = GaugeMetricFamily(
            "taskqueue_failure_rate_threshold", "The failure-rate alert threshold (setting)."
        )
        threshold.add_metric([], conf.FAILURE_RATE_THRESHOLD)
        yield threshold


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskQueueCollector())
    return generate_latest(registry)
