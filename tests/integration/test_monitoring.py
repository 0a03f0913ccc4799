"""Metrics equal to what the database says; alert rules that parse; in-product alerts."""

import re
from datetime import timedelta

import pytest
import yaml
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from taskqueue import backend
from taskqueue.models import Task
from taskqueue.services import enqueue_task
from taskqueue.services.alerts import check_alerts, firing_alerts
from tests.helpers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client: APIClient) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        samples.setdefault(family.name, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def attempt(task_type: str, seconds: float, *, status: str = "completed") -> Task:
    now = timezone.now()
    task = Task.objects.create(
        task_type=task_type,
        status=status,
        created_at=now - timedelta(seconds=seconds + 2),
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
    )
    task.attempt_set.create(
        number=1, outcome=status, started_at=now - timedelta(seconds=seconds), finished_at=now
    )
    return task


def test_metrics_need_a_token_or_a_staff_session(redis_db, make_client):
    assert APIClient().get("/metrics").status_code == 401
    assert make_client("plain", staff=False).get("/metrics").status_code == 403


def test_metric_values_equal_what_the_database_says(api):
    for seconds in (0.02, 0.3, 2, 7):
        attempt("health_check", seconds)
    attempt("cleanup_runs", 40, status="failed")
    enqueue_task("log_statistics")
    samples = scrape(api)

    def value(name: str, **labels) -> float:
        matches = [
            s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(matches) == 1, (name, labels)
        return matches[0]

    assert value("taskqueue_tasks", task_type="health_check", status="completed") == 4
    assert value("taskqueue_tasks", task_type="cleanup_runs", status="failed") == 1
    assert value("taskqueue_tasks", task_type="log_statistics", status="queued") == 1
    duration = "taskqueue_attempt_duration_seconds"
    bucket = f"{duration}_bucket"
    assert value(bucket, task_type="health_check", le="0.05") == 1
    assert value(bucket, task_type="health_check", le="0.5") == 2
    assert value(bucket, task_type="health_check", le="5") == 3
    assert value(bucket, task_type="health_check", le="+Inf") == 4
    assert value(f"{duration}_count", task_type="health_check") == 4
    assert value(f"{duration}_sum", task_type="health_check") == pytest.approx(9.32, abs=0.05)
    assert value("taskqueue_wait_seconds_count", task_type="health_check") == 4
    assert value("taskqueue_queue_depth", queue="low") == backend.get_queue("low").count == 1
    assert value("taskqueue_workers_alive") == 0
    assert value("taskqueue_redis_up") == 1
    assert value("taskqueue_leased_overdue_tasks") == 0
    assert value("taskqueue_failure_rate", window="1h") == pytest.approx(1 / 5)


def test_the_example_alert_rules_parse_and_use_exported_metrics(api):
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus-alerts.yml").read_text())
    exported = set(scrape(api)) | {"taskqueue_reconciler_actions", "taskqueue_alert_firing"}
    exported |= {name.removesuffix("_total") for name in exported}
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            used = set(re.findall(r"\btaskqueue_[a-z_]+", rule["expr"]))
            assert used and used <= exported, (rule["alert"], used - exported)
            names.append(rule["alert"])
    for needed in ("HighFailureRate", "Backlog", "OldestJobWaiting", "NoWorker", "StuckLeased"):
        assert any(needed in name for name in names)


@override_settings(ADMINS=[("Ops", "ops@example.com")])
def test_an_alert_fires_once_stays_quiet_and_clears(redis_db, mailoutbox):
    for _ in range(4):
        attempt("health_check", 1, status="failed")
    attempt("health_check", 1)
    first = check_alerts()
    assert "failure_rate" in first["started"]
    assert "no_worker" in first["started"]
    subjects = [m.subject for m in mailoutbox]
    assert "[task queue] ALERT failure_rate" in subjects
    sent = len(mailoutbox)
    second = check_alerts()  # the conditions still hold: nothing new is sent
    assert second["started"] == [] and len(mailoutbox) == sent
    assert "failure_rate" in firing_alerts()
    Task.objects.filter(status="failed").delete()
    third = check_alerts()
    assert third["cleared"] == ["failure_rate"]
    assert "failure_rate" not in firing_alerts()
    assert mailoutbox[-1].subject == "[task queue] cleared failure_rate"


def test_a_reconciler_rescue_raises_an_alert_until_the_next_quiet_check(redis_db, mailoutbox):
    check_alerts()  # a baseline
    backend.count_actions({"dispatched": 3}, name="reconciler")
    assert "reconciler_rescued" in check_alerts()["started"]
    assert "3 dispatched" in firing_alerts()["reconciler_rescued"]["message"]
    assert check_alerts()["cleared"] == ["reconciler_rescued"]


def test_health_check_reports_firing_alerts(redis_db, roots):
    from maintenance.operations import health_check

    with override_settings(TASKQUEUE={"ALERT_QUEUE_AGE_SECONDS": -1}):
        enqueue_task("ping")
        check_alerts()
    result = health_check()
    assert result["checks"]["alerts"]["status"] == "degraded"
    assert any(r.startswith("alerts: ") and "queue_waiting:default" in r for r in result["reasons"])


def test_a_worker_says_its_heartbeat_intervals_and_goes_stale_past_them(redis_db):
    from rq.utils import utcformat

    from taskqueue.conf import conf
    from taskqueue.services import monitoring
    from taskqueue.worker import Worker

    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker.register_birth()
    worker.set_state("idle")
    [seen] = monitoring.worker_stats()
    grace = conf.HEARTBEAT_GRACE
    assert (seen["heartbeat_interval_seconds"], seen["stale_after_seconds"]) == (10, 10 + grace)
    assert seen["stale"] is False
    redis_db.hset(worker.key, "last_heartbeat", utcformat(timezone.now() - timedelta(seconds=30)))
    [seen] = monitoring.worker_stats()
    assert seen["stale"] is True and seen["alive"] is True  # stale long before RQ's 480 s
    worker.set_state("busy")
    [seen] = monitoring.worker_stats()  # busy: it heartbeats every JOB_MONITORING_INTERVAL
    assert seen["stale_after_seconds"] == conf.JOB_MONITORING_INTERVAL + grace
    assert seen["stale"] is (conf.JOB_MONITORING_INTERVAL + grace < 30)
