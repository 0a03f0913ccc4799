"""health_check: real database, real Redis, real worker processes."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from maintenance.operations import health_check
from taskqueue.models import Task
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_without_workers_or_cron_the_system_is_degraded_with_reasons(redis_db, roots) -> None:
    result = health_check()
    assert result["status"] == "degraded"
    checks = result["checks"]
    assert checks["database"]["status"] == checks["redis"]["status"] == "ok"
    assert checks["workers"]["status"] == "degraded"
    assert "workers: no worker is alive" in result["reasons"]
    assert any(reason.startswith("cron:") for reason in result["reasons"])
    assert all(c["duration_ms"] >= 0 for c in checks.values())
    assert [q["name"] for q in checks["queues"]["queues"]] == ["high", "default", "low"]


@pytest.mark.e2e
def test_a_live_worker_is_seen_with_its_heartbeat(redis_db, roots, worker_process) -> None:
    worker_process(name="health-probe-worker")
    wait_for(lambda: health_check()["checks"]["workers"]["alive"] == 1, timeout=30)
    (worker,) = health_check()["checks"]["workers"]["workers"]
    assert worker["name"] == "health-probe-worker"
    assert worker["state"] in ("idle", "started", "busy")
    assert worker["heartbeat_age_seconds"] < 60


def test_a_high_failure_rate_degrades_the_system(redis_db, roots) -> None:
    now = timezone.now()
    for status in ["failed"] * 4 + ["completed"] * 2:
        Task.objects.create(task_type="ping", status=status, finished_at=now - timedelta(minutes=5))
    Task.objects.create(task_type="ping", status="failed", finished_at=now - timedelta(hours=2))
    check = health_check()["checks"]["failure_rate"]
    assert (check["failed"], check["completed"], check["status"]) == (4, 2, "degraded")
    assert "67%" in check["reason"]


def test_an_old_waiting_job_degrades_the_queues_check(redis_db, roots) -> None:
    from taskqueue.services import enqueue_task

    enqueue_task("ping")
    with override_settings(MAINTENANCE={**roots, "QUEUE_MAX_AGE_SECONDS": -1}):
        check = health_check()["checks"]["queues"]
    assert check["status"] == "degraded"
    assert "default" in check["reason"]


def test_redis_down_means_down_and_nothing_secret_is_revealed(roots) -> None:
    secret_url = "redis://:hunter2-secret@127.0.0.1:1/0"
    with override_settings(REDIS_URL=secret_url):
        result = health_check()
    assert result["status"] == "down"
    assert result["checks"]["redis"]["status"] == "down"
    text = json.dumps(result)
    for secret in (
        "hunter2",
        secret_url,
        settings.SECRET_KEY,
        str(connection.settings_dict["NAME"]),
    ):
        assert secret not in text


def test_low_disk_space_is_reported(redis_db, roots) -> None:
    with override_settings(MAINTENANCE={**roots, "DISK_MIN_FREE_PERCENT": 100.1}):
        check = health_check()["checks"]["disks"]
    assert check["status"] == "degraded"
    assert set(check["disks"]) == {"TEMP_DIR", "LOG_DIR", "ARTIFACTS_DIR"}
