"""Tasks: list, one, cancel, stop, retry, stats, and the errors around them."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from taskqueue.models import Task
from taskqueue.services import enqueue_task
from tests.integration.api.conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)

TASK_FIELDS = {
    "task_id", "task_type", "status", "payload", "result", "error_code", "error_message",
    "attempts", "max_attempts", "priority", "queue", "created_at", "started_at", "finished_at",
    "next_attempt_at", "requested_by", "retry_of",
}  # fmt: skip


def make_tasks(count: int, **fields) -> list[Task]:
    return [Task.objects.create(task_type="ping", **fields) for _ in range(count)]


def test_list_is_newest_first_and_paginated_with_a_cap(api):
    tasks = make_tasks(7)
    page = api.get(f"{BASE}/tasks?page_size=3").json()
    assert [t["task_id"] for t in page["results"]] == [t.pk for t in reversed(tasks)][:3]
    rest = api.get(page["next"]).json()
    assert [t["task_id"] for t in rest["results"]] == [t.pk for t in reversed(tasks)][3:6]
    make_tasks(120)
    assert len(api.get(f"{BASE}/tasks?page_size=100").json()["results"]) == 100
    assert api.get(f"{BASE}/tasks?page_size=101").status_code == 400


def test_list_filters(api):
    make_tasks(2, status="failed")
    make_tasks(3, status="completed")
    Task.objects.create(task_type="health_check", status="completed")
    old = Task.objects.create(task_type="ping", created_at=timezone.now() - timedelta(days=3))

    def ids(query: str) -> set[int]:
        response = api.get(f"{BASE}/tasks?{query}")
        assert response.status_code == 200, response.content
        return {t["task_id"] for t in response.json()["results"]}

    assert len(ids("status=failed")) == 2
    assert len(ids("status=failed&status=completed")) == 6
    assert len(ids("task_type=health_check")) == 1
    yesterday = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_before={yesterday}") == {old.pk}
    assert old.pk not in ids(f"created_after={yesterday}")


@pytest.mark.parametrize(
    ("query", "status"),
    [("status=bogus", 400), ("created_after=yesterday", 400), ("cursor=zzz", 400)],
)
def test_bad_list_parameters_are_client_errors(api, query, status):
    response = api.get(f"{BASE}/tasks?{query}")
    assert response.status_code == status, response.content
    assert "code" in response.json()


def test_a_page_size_outside_1_to_100_is_refused(api):
    make_tasks(25)
    for bad in ("abc", "0", "101", "1000"):
        assert api.get(f"{BASE}/tasks?page_size={bad}").status_code == 400, bad
    assert len(api.get(f"{BASE}/tasks?page_size=100").json()["results"]) == 25


def test_the_list_summarises_each_result_and_the_detail_has_it_whole(api, admin_user):
    big = {"lines": 120000, "dry_run": False, "top_messages": [{"message": "x" * 500}] * 50,
           "by_level": {"ERROR": 3, "INFO": 900}, "note": None}  # fmt: skip
    tasks = [Task.objects.create(task_type="log_statistics", status="completed", result=big)
             for _ in range(20)]  # fmt: skip
    listed = api.get(f"{BASE}/tasks?page_size=20").json()["results"]
    assert all("result" not in task for task in listed)
    assert listed[0]["result_summary"] == (
        "by_level: {2 keys}, dry_run: false, lines: 120000, note: null, top_messages: [50 items]"
    )
    assert api.get(f"{BASE}/tasks/{tasks[0].pk}").json()["result"] == big
    # The browsable list: a page of summaries, not twenty copies of every message.
    client = APIClient()
    client.force_login(admin_user)
    page = client.get(f"{BASE}/tasks?page_size=20", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert b"x" * 500 not in page.content
    assert page.content.count(b"top_messages: [50 items]") == 20
    assert len(page.content) < 60_000


def test_a_long_summary_is_cut_at_200_characters(api):
    Task.objects.create(task_type="ping", status="completed", result={"text": "y" * 1000})
    summary = api.get(f"{BASE}/tasks").json()["results"][0]["result_summary"]
    assert len(summary) == 200
    assert summary.endswith("…")
    Task.objects.create(task_type="ping", status="queued")
    assert api.get(f"{BASE}/tasks").json()["results"][0]["result_summary"] is None


@pytest.mark.parametrize("page_size", [5, 50])
def test_the_list_costs_the_same_queries_whatever_the_page_size(admin_user, redis_db, page_size):
    client = APIClient()
    client.force_authenticate(admin_user)
    for _ in range(50):
        task = Task.objects.create(task_type="ping", requested_by=admin_user, status="cancelled")
        task.attempt_set.create(number=1)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{BASE}/tasks?page_size={page_size}")
    assert len(response.json()["results"]) == page_size
    assert len(queries) == 1, [q["sql"] for q in queries]


def test_one_task_has_the_design_fields_and_its_attempts_in_one_query(admin_user, redis_db):
    client = APIClient()
    client.force_authenticate(admin_user)
    task, _ = enqueue_task("diagnostic", {"action": "fail"}, requested_by=admin_user)
    task.lease(dispatch=0, worker_name="w1")
    task.fail(attempt=1, error_code="exception", error_message="boom", traceback="secret tb")
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{BASE}/tasks/{task.pk}")
    assert len(queries) == 1
    body = response.json()
    assert set(body) >= TASK_FIELDS
    assert body["requested_by"] == "root"
    assert body["error_code"] == "exception"
    assert body["created_at"].endswith("Z")
    (attempt,) = body["attempt_history"]
    assert (attempt["number"], attempt["outcome"], attempt["worker_name"]) == (1, "failed", "w1")
    assert attempt["started_at"].endswith("Z")
    assert "secret tb" not in response.content.decode()


def test_a_conditional_get_answers_304_until_the_task_changes(api):
    task = Task.objects.create(task_type="ping")
    first = api.get(f"{BASE}/tasks/{task.pk}")
    etag = first["ETag"]
    assert api.get(f"{BASE}/tasks/{task.pk}", HTTP_IF_NONE_MATCH=etag).status_code == 304
    since = first["Last-Modified"]
    assert api.get(f"{BASE}/tasks/{task.pk}", HTTP_IF_MODIFIED_SINCE=since).status_code == 304
    task.cancel()
    changed = api.get(f"{BASE}/tasks/{task.pk}", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert changed.json()["status"] == "cancelled"


def test_polling_an_unchanged_task_reads_only_its_timestamp(api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    task = Task.objects.create(task_type="ping")
    etag = api.get(f"{BASE}/tasks/{task.pk}")["ETag"]
    with CaptureQueriesContext(connection) as queries:
        assert api.get(f"{BASE}/tasks/{task.pk}", HTTP_IF_NONE_MATCH=etag).status_code == 304
    assert len(queries) == 1
    assert "attempt" not in queries[0]["sql"].lower()
    for missing in ("999999", "99999999999999999999"):
        assert api.get(f"{BASE}/tasks/{missing}", HTTP_IF_NONE_MATCH=etag).status_code == 404


@pytest.mark.parametrize("task_id", ["abc", "0", "999999", "99999999999999999999", "1.5", "-1"])
def test_unknown_or_malformed_ids_are_json_404(api, task_id):
    for response in (
        api.get(f"{BASE}/tasks/{task_id}"),
        api.delete(f"{BASE}/tasks/{task_id}"),
        api.post(f"{BASE}/tasks/{task_id}/retry"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_cancelling_a_queued_task_answers_200_and_records_who(api, admin_user):
    task, _ = enqueue_task("ping")
    response = api.delete(f"{BASE}/tasks/{task.pk}")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancelled_by"]) == ("cancelled", "root")


def test_cancelling_a_finished_task_is_409(api):
    (task,) = make_tasks(1, status="completed")
    response = api.delete(f"{BASE}/tasks/{task.pk}")
    assert (response.status_code, response.json()["code"]) == (409, "invalid_transition")


def test_stopping_a_running_task_answers_202_and_repeating_is_harmless(api):
    task, _ = enqueue_task("ping")
    task.lease(dispatch=0, worker_name="w")
    first = api.delete(f"{BASE}/tasks/{task.pk}")
    again = api.delete(f"{BASE}/tasks/{task.pk}")
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["status"] == "leased"
    assert Task.objects.get(pk=task.pk).stop_requested_at is not None


def test_retry_makes_a_linked_task_and_needs_a_finished_one(api, admin_user):
    (done,) = make_tasks(1, status="failed")
    response = api.post(f"{BASE}/tasks/{done.pk}/retry")
    assert response.status_code == 202
    body = response.json()
    assert (body["retry_of"], body["requested_by"], body["status"]) == (done.pk, "root", "queued")
    assert response["Location"] == f"{BASE}/tasks/{body['task_id']}"
    active, _ = enqueue_task("ping")
    refused = api.post(f"{BASE}/tasks/{active.pk}/retry")
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid_transition")


def test_stats_show_queues_workers_counts_rates_and_percentiles(api):
    now = timezone.now()
    for seconds in (1, 2, 3, 4, 10):
        task = Task.objects.create(
            task_type="ping",
            status="completed",
            created_at=now - timedelta(seconds=60),
            started_at=now - timedelta(seconds=60 - seconds),
            finished_at=now,
        )
        task.attempt_set.create(
            number=1,
            outcome="completed",
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    Task.objects.create(task_type="ping", status="failed", finished_at=now)
    body = api.get(f"{BASE}/stats").json()
    assert body["redis_available"] is True
    assert [q["name"] for q in body["queues"]] == ["high", "default", "low"]
    assert body["workers"] == []
    tasks = body["tasks"]
    assert tasks["counts_by_status"]["completed"] == 5
    assert tasks["counts_by_status"]["failed"] == 1
    assert tasks["failure_rate"]["1h"]["rate"] == pytest.approx(1 / 6)
    run = tasks["run_seconds"]["ping"]
    assert run["count"] == 5
    assert 2.5 <= run["p50"] <= 3.5
    assert 4 <= run["p95"] <= 10
    assert tasks["wait_seconds"]["ping"]["count"] == 5


def test_stats_still_answer_with_redis_down(api):
    from django.test import override_settings

    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        response = api.get(f"{BASE}/stats")
    assert response.status_code == 200
    assert response.json()["redis_available"] is False


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="extended statistics are PostgreSQL's"
)
def test_the_planner_has_joint_statistics_on_status_and_type(db):
    """A filter on a rare (status, type) pair must not walk the whole table (migration 0003)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT stxkind FROM pg_statistic_ext WHERE stxname = %s",
                       ["taskqueue_task_status_type"])  # fmt: skip
        assert cursor.fetchone() is not None
