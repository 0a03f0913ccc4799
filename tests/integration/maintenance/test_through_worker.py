"""Each operation enqueued as a task and run by a real forking worker."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from maintenance.models import Run
from taskqueue.exceptions import InvalidPayload
from taskqueue.models import Task
from taskqueue.registry import get_task_type
from taskqueue.services import enqueue_task
from tests.helpers import age

pytestmark = pytest.mark.django_db(transaction=True)


def test_cleanup_runs_as_a_task(run_worker, roots) -> None:
    Run.objects.create(name="x", status="succeeded", finished_at=timezone.now() - timedelta(days=2))
    task, _ = enqueue_task("cleanup_runs", {"max_age_hours": 24})
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.result["runs_deleted"], task.queue) == ("completed", 1, "high")
    assert task.progress == 100


def test_cleanup_temp_files_as_a_task(run_worker, roots) -> None:
    old = roots["TEMP_DIR"] / "old"
    old.write_text("x")
    age(old, 48)
    task, _ = enqueue_task("cleanup_temp_files", {"max_age_hours": 24, "dry_run": False})
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.result["files_removed"]) == ("completed", 1)


def test_a_misconfigured_temp_dir_fails_the_task_without_retrying(run_worker, roots) -> None:
    from django.test import override_settings

    with override_settings(MAINTENANCE={**roots, "TEMP_DIR": "relative/path"}):
        task, _ = enqueue_task("cleanup_temp_files")
        run_worker()
    task.refresh_from_db()
    assert (task.status, task.error_code, task.attempts) == ("failed", "root_relative", 1)


def test_health_check_as_a_task(run_worker, roots) -> None:
    task, _ = enqueue_task("health_check")
    run_worker()
    task.refresh_from_db()
    assert task.status == "completed"
    assert task.result["status"] in ("ok", "degraded")
    assert task.result["checks"]["database"]["status"] == "ok"


def test_log_statistics_as_a_task(run_worker, roots) -> None:
    task, _ = enqueue_task("log_statistics", {"hours": 2})
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.queue) == ("completed", "low")
    assert set(task.result["by_level"]) == {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.parametrize(
    ("task_type", "policy"),
    [
        ("cleanup_runs", (3, 300, 5, True, "high")),
        ("health_check", (2, 30, 3, False, "default")),
        ("cleanup_temp_files", (3, 300, 5, True, "high")),
        ("log_statistics", (2, 10, 1, False, "low")),
    ],
)
def test_policies_are_those_of_the_design(task_type: str, policy: tuple) -> None:
    p = get_task_type(task_type).policy
    assert (p.max_attempts, p.timeout, p.priority, p.exclusive, p.queue) == policy
    assert p.permission == f"maintenance.run_{task_type}"


@pytest.mark.parametrize(
    "value", [-1, 0, 1.5, "abc", True, None, float("inf"), 10**30, 8761, "1.0"]
)
def test_max_age_hours_rejects_bad_values(value: object, redis_db) -> None:
    with pytest.raises(InvalidPayload) as caught:
        enqueue_task("cleanup_runs", {"max_age_hours": value})
    assert list(caught.value.errors) == ["max_age_hours"]
    assert Task.objects.count() == 0


@pytest.mark.parametrize("value", [1, 8760, "48"])
def test_max_age_hours_accepts_integers_and_digit_strings(value: object, redis_db) -> None:
    task, _ = enqueue_task("cleanup_temp_files", {"max_age_hours": value, "dry_run": True})
    assert task.payload == {"max_age_hours": int(value), "dry_run": True}


def test_unknown_fields_are_rejected(redis_db) -> None:
    with pytest.raises(InvalidPayload) as caught:
        enqueue_task("health_check", {"verbose": True})
    assert caught.value.errors == {"verbose": ["Unknown field."]}


def test_checks_refuse_an_unsafe_temp_dir(tmp_path: Path) -> None:
    from django.test import override_settings

    from maintenance.checks import check_roots

    with override_settings(MAINTENANCE={"TEMP_DIR": "/"}):
        (message,) = check_roots()
    assert "TEMP_DIR" in message.msg
    assert message.hint
