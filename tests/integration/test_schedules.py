"""Schedules: claimed once, missed runs collapse, validated, read-only in the API."""

import re
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from taskqueue.models import Schedule, Task
from taskqueue.services.schedules import run_due_schedules
from tests.conftest import user_with

pytestmark = pytest.mark.django_db(transaction=True)


def due(**fields) -> Schedule:
    values = {"name": "due", "task_type": "ping", "interval_seconds": 60, "enabled": True,
              "next_run_at": timezone.now() - timedelta(seconds=1), **fields}  # fmt: skip
    return Schedule.objects.create(**values)


def test_two_concurrent_cron_ticks_enqueue_a_due_schedule_once(redis_db):
    schedule = due()
    barrier = threading.Barrier(2)
    results = []

    def tick() -> None:
        from django.db import connection

        barrier.wait()
        results.append(run_due_schedules())
        connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r["enqueued"] for r in results) == 1
    task = Task.objects.get()
    assert (task.source, task.requested_by) == (f"schedule:{schedule.pk}", None)
    schedule.refresh_from_db()
    assert schedule.last_task == task
    assert schedule.next_run_at > timezone.now()


def test_missed_runs_collapse_into_one(redis_db):
    schedule = due(next_run_at=timezone.now() - timedelta(minutes=30))  # 30 slots missed
    assert run_due_schedules()["enqueued"] == 1
    assert run_due_schedules()["enqueued"] == 0
    assert Task.objects.count() == 1
    schedule.refresh_from_db()
    assert timezone.now() < schedule.next_run_at <= timezone.now() + timedelta(seconds=60)


def test_disabled_schedules_never_run(redis_db):
    due(enabled=False)
    assert run_due_schedules() == {"enqueued": 0, "skipped": 0, "armed": 0}
    assert Task.objects.count() == 0


def test_an_enabled_schedule_without_a_next_run_is_armed_not_run(redis_db):
    schedule = due(next_run_at=None, cron="*/5 * * * *", interval_seconds=None)
    assert run_due_schedules()["armed"] == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at.minute % 5 == 0
    assert Task.objects.count() == 0


def test_an_exclusive_type_still_running_is_skipped_and_the_skip_recorded(redis_db, roots):
    running = Task.objects.create(task_type="cleanup_runs", status="leased")
    schedule = due(task_type="cleanup_runs", payload={"max_age_hours": 24}, last_task=running)
    assert run_due_schedules()["skipped"] == 1
    schedule.refresh_from_db()
    assert schedule.skips == 1
    assert f"task {running.pk}" in schedule.last_skip_reason
    assert Task.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "cron", "The minute field '61' is not valid"),
        ({"cron": "0 25 * * *"}, "cron", "The hour field '25' is not valid"),
        ({"cron": "* * *"}, "cron", "has 5 fields"),
        ({"cron": "* * * * *", "interval_seconds": 60}, "cron", "not both"),
        ({"interval_seconds": 5}, "interval_seconds", "at least 10 seconds"),
        ({"interval_seconds": 60, "task_type": "nope"}, "task_type", "Unknown task type"),
        (
            {"interval_seconds": 60, "task_type": "cleanup_runs", "payload": {"max_age_hours": 0}},
            "payload",
            "max_age_hours",
        ),
    ],
)
def test_invalid_schedules_are_refused_with_a_clear_message(fields, field, message):
    schedule = Schedule(name="x", **{"task_type": "ping", **fields})
    with pytest.raises(ValidationError) as caught:
        schedule.clean()
    assert message in " ".join(caught.value.message_dict[field])


def test_the_admin_refuses_a_bad_cron_and_previews_a_good_one(admin_user, redis_db):
    client = Client()
    client.force_login(admin_user)
    form = {"name": "nightly", "task_type": "ping", "payload": "{}", "cron": "61 * * * *"}
    page = client.post("/admin/taskqueue/schedule/add/", form)
    assert page.status_code == 200
    assert "The minute field &#x27;61&#x27; is not valid" in page.content.decode()
    assert not Schedule.objects.filter(name="nightly").exists()
    client.post("/admin/taskqueue/schedule/add/", {**form, "cron": "30 2 * * *", "enabled": "on"})
    schedule = Schedule.objects.get(name="nightly")
    assert (schedule.next_run_at.hour, schedule.next_run_at.minute) == (2, 30)
    page = client.get(f"/admin/taskqueue/schedule/{schedule.pk}/change/").content.decode()
    # the next five runs (the next run's own field shows seconds: 02:30:00 UTC)
    assert len(re.findall(r"\d{4}-\d\d-\d\d 02:30(?!:)", page)) == 5


def test_run_now_from_the_admin(admin_user, redis_db):
    schedule = due(enabled=False)
    client = Client()
    client.force_login(admin_user)
    client.post(
        "/admin/taskqueue/schedule/", {"action": "run_now", "_selected_action": [schedule.pk]}
    )
    task = Task.objects.get()
    assert (task.requested_by, task.source) == (admin_user, f"schedule:{schedule.pk}")


def test_the_data_migration_creates_disabled_default_schedules():
    import importlib

    from django.apps import apps

    migration = importlib.import_module("maintenance.migrations.0002_default_schedules")
    Schedule.objects.all().delete()  # the suite flushes tables between tests
    migration.create(apps, None)
    migration.create(apps, None)  # idempotent
    assert Schedule.objects.count() == 4
    defaults = {s.task_type: s for s in Schedule.objects.all()}
    assert set(defaults) >= {"cleanup_runs", "cleanup_temp_files", "health_check", "log_statistics"}
    assert not any(s.enabled for s in defaults.values())
    assert defaults["health_check"].interval_seconds == 300
    for schedule in defaults.values():
        schedule.clean()  # every default validates


def test_schedules_are_read_only_in_the_api(api, make_client):
    schedule = due()
    listing = api.get("/api/system/maintenance/schedules").json()
    assert schedule.name in [s["name"] for s in listing]
    one = api.get(f"/api/system/maintenance/schedules/{schedule.pk}").json()
    assert (one["schedule_id"], one["interval_seconds"]) == (schedule.pk, 60)
    assert api.post("/api/system/maintenance/schedules", {}).status_code == 405
    assert api.delete(f"/api/system/maintenance/schedules/{schedule.pk}").status_code == 405
    assert make_client("nosched").get("/api/system/maintenance/schedules").status_code == 403
    reader = make_client("reader", perms=("taskqueue.view_schedule",))
    assert reader.get("/api/system/maintenance/schedules").status_code == 200


def test_an_operator_without_schedule_permission_cannot_run_them(django_user_model, redis_db):
    schedule = due(enabled=False)
    client = Client()
    client.force_login(user_with(django_user_model, "viewer", perms=("taskqueue.view_schedule",)))
    client.post(
        "/admin/taskqueue/schedule/", {"action": "run_now", "_selected_action": [schedule.pk]}
    )
    assert Task.objects.count() == 0
