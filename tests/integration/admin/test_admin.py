"""The admin console: list, task page, buttons, bulk actions, dashboard, Run maintenance."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from taskqueue.models import Task
from taskqueue.services import enqueue_task
from tests.conftest import user_with

pytestmark = pytest.mark.django_db(transaction=True)

TASKS = "/admin/taskqueue/task/"


@pytest.fixture
def admin_client_(admin_user, redis_db) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def login(django_user_model, username: str, perms: tuple = ()) -> Client:
    client = Client()
    client.force_login(user_with(django_user_model, username, perms=perms))
    return client


def failed_task(**fields) -> Task:
    task = Task.objects.create(task_type="ping", status="queued", **fields)
    task.lease(dispatch=0, worker_name="w1")
    task.fail(attempt=1, error_code="exception", error_message="<b>bad</b>", traceback="TB-SECRET")
    return task


@pytest.mark.parametrize("rows", [10, 200])
def test_the_task_list_costs_the_same_queries_for_any_number_of_rows(
    admin_client_, admin_user, rows
):
    Task.objects.bulk_create(
        [Task(task_type="ping", requested_by=admin_user, status="completed") for _ in range(rows)]
    )
    with CaptureQueriesContext(connection) as queries:
        page = admin_client_.get(TASKS)
    assert page.status_code == 200
    assert page.content.count(b"tq-status-completed") == min(rows, 50)
    assert len(queries) <= 12, [q["sql"][:120] for q in queries]


def test_the_list_filters_and_searches(admin_client_):
    target = failed_task()
    Task.objects.create(task_type="health_check")
    assert f">{target.pk}<".encode() in admin_client_.get(TASKS, {"q": str(target.pk)}).content
    page = admin_client_.get(TASKS, {"status__exact": "failed", "task_type": "ping"})
    assert page.content.count(b"tq-status-failed") == 1
    assert admin_client_.get(TASKS, {"q": "bad"}).content.count(b"tq-status-failed") == 1


def test_the_task_page_escapes_everything_and_hides_tracebacks_from_non_superusers(
    admin_client_, django_user_model
):
    task = failed_task(payload={"note": "<script>alert(1)</script>"})
    Task.objects.filter(pk=task.pk).update(result={"line": "<script>alert(2)</script>"})
    page = admin_client_.get(f"{TASKS}{task.pk}/change/").content.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)" in page and "&lt;script&gt;alert(2)" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page
    assert "TB-SECRET" in page  # a superuser sees the traceback
    assert 'id="tq-attempts"' in page and "w1" in page
    staff = login(django_user_model, "viewer", ("taskqueue.view_task",))
    page = staff.get(f"{TASKS}{task.pk}/change/").content.decode()
    assert "TB-SECRET" not in page
    assert 'id="tq-retry"' not in page  # no buttons without taskqueue.change_task


def test_links_between_a_task_and_its_retries(admin_client_):
    task = failed_task()
    retry = Task.objects.create(task_type="ping", retry_of=task)
    page = admin_client_.get(f"{TASKS}{task.pk}/change/").content.decode()
    assert f"{TASKS}{retry.pk}/change/" in page
    page = admin_client_.get(f"{TASKS}{retry.pk}/change/").content.decode()
    assert f"{TASKS}{task.pk}/change/" in page


def test_cancel_asks_for_confirmation_then_cancels(admin_client_):
    task, _ = enqueue_task("ping")
    confirm = admin_client_.get(f"{TASKS}{task.pk}/cancel/")
    assert b"will never run" in confirm.content
    assert Task.objects.get(pk=task.pk).status == "queued"
    done = admin_client_.post(f"{TASKS}{task.pk}/cancel/", follow=True)
    assert Task.objects.get(pk=task.pk).status == "cancelled"
    assert b"is cancelled" in done.content


def test_retry_button_makes_a_new_task_and_lands_on_it(admin_client_):
    task = failed_task()
    response = admin_client_.post(f"{TASKS}{task.pk}/retry/")
    new = Task.objects.get(retry_of=task)
    assert response["Location"] == f"{TASKS}{new.pk}/change/"


def test_without_change_permission_buttons_and_forged_posts_are_refused(
    django_user_model, redis_db
):
    task, _ = enqueue_task("ping")
    viewer = login(django_user_model, "viewer", ("taskqueue.view_task",))
    assert viewer.get(f"{TASKS}{task.pk}/change/").status_code == 200
    assert viewer.post(f"{TASKS}{task.pk}/cancel/").status_code == 403
    assert viewer.post(f"{TASKS}{task.pk}/retry/").status_code == 403
    forged = {"action": "cancel_selected", "_selected_action": [task.pk], "confirm": "yes"}
    viewer.post(TASKS, forged)
    assert Task.objects.get(pk=task.pk).status == "queued"
    nobody = login(django_user_model, "nobody")
    assert nobody.get(f"{TASKS}{task.pk}/change/").status_code == 403
    assert nobody.get(f"{TASKS}dashboard/").status_code == 403


def test_csrf_is_enforced_on_the_buttons(admin_user, redis_db):
    task, _ = enqueue_task("ping")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"{TASKS}{task.pk}/cancel/").status_code == 403
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_bulk_actions_confirm_then_report_each_task(admin_client_):
    waiting, _ = enqueue_task("ping")
    done = failed_task()
    selection = {"action": "cancel_selected", "_selected_action": [waiting.pk, done.pk]}
    confirm = admin_client_.post(TASKS, selection)
    assert b"Yes, cancel" in confirm.content
    assert Task.objects.get(pk=waiting.pk).status == "queued"
    result = admin_client_.post(TASKS, {**selection, "confirm": "yes"}, follow=True)
    text = result.content.decode()
    assert f"Task {waiting.pk}: cancelled" in text
    assert f"Task {done.pk}: not cancelled" in text
    retried = admin_client_.post(
        TASKS,
        {"action": "retry_selected", "_selected_action": [waiting.pk, done.pk], "confirm": "yes"},
        follow=True,
    ).content.decode()
    assert re.search(rf"Task {done.pk}: retried as task \d+", retried)
    assert re.search(rf"Task {waiting.pk}: retried as task \d+", retried)  # cancelled is final


def test_the_live_block_is_served_as_json(admin_client_):
    task, _ = enqueue_task("ping")
    data = admin_client_.get(f"{TASKS}{task.pk}/live/").json()
    assert (data["status"], data["active"]) == ("queued", True)
    assert "tq-status-queued" in data["html"]


def test_the_dashboard_shows_queues_rates_durations_chart_and_failures(admin_client_):
    failed = failed_task()
    page = admin_client_.get(f"{TASKS}dashboard/").content.decode()
    for text in ("Queues", "Workers", "Failure rate", "<svg", "tq-failed-bar", "Last failures"):
        assert text in page
    assert f"{TASKS}{failed.pk}/change/" in page
    fragment = admin_client_.get(f"{TASKS}dashboard/", {"fragment": "1"}).content.decode()
    assert "<svg" in fragment and "<html" not in fragment


def test_run_maintenance_enqueues_and_lands_on_the_task(admin_client_, admin_user):
    page = admin_client_.get("/admin/maintenance/run/operations/").content.decode()
    for name in ("cleanup_runs", "health_check", "cleanup_temp_files", "log_statistics"):
        assert f'id="op-{name}"' in page
    response = admin_client_.post(
        "/admin/maintenance/run/operations/",
        {
            "operation": "cleanup_runs",
            "cleanup_runs-max_age_hours": "48",
            "cleanup_runs-dry_run": "on",
        },
    )
    task = Task.objects.get(task_type="cleanup_runs")
    assert response["Location"] == f"{TASKS}{task.pk}/change/"
    assert task.payload == {"max_age_hours": 48, "dry_run": True}
    assert (task.requested_by, task.source) == (admin_user, "admin")


def test_run_maintenance_shows_field_errors(admin_client_):
    response = admin_client_.post(
        "/admin/maintenance/run/operations/",
        {"operation": "log_statistics", "log_statistics-hours": "0"},
    )
    assert response.status_code == 200
    assert b"greater than or equal to 1" in response.content
    assert not Task.objects.exists()


def test_run_maintenance_offers_only_what_the_user_may_trigger(django_user_model, redis_db):
    checker = login(django_user_model, "checker", ("maintenance.run_health_check",))
    page = checker.get("/admin/maintenance/run/operations/").content.decode()
    assert 'id="op-health_check"' in page and 'id="op-cleanup_runs"' not in page
    forged = {"operation": "cleanup_runs", "cleanup_runs-max_age_hours": "1"}
    assert checker.post("/admin/maintenance/run/operations/", forged).status_code == 403
    nobody = login(django_user_model, "nobody")
    assert nobody.get("/admin/maintenance/run/operations/").status_code == 403


def test_results_are_rendered_for_people(admin_client_):
    task = Task.objects.create(
        task_type="health_check",
        status="completed",
        result={
            "status": "degraded",
            "reasons": ["workers: no worker is alive"],
            "checks": {"workers": {"status": "degraded", "reason": "no worker is alive",
                                   "duration_ms": 1.5, "alive": 0}},
        },
    )  # fmt: skip
    page = admin_client_.get(f"{TASKS}{task.pk}/change/").content.decode()
    assert "DEGRADED" in page and "no worker is alive" in page and "<table" in page
