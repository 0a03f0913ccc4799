"""The API over real HTTP (uvicorn) with real rqworker processes."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.message import Message
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from maintenance.models import Run
from taskqueue.models import Task
from taskqueue.services import enqueue_task
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BASE = "/api/system/maintenance"


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict, Message]:
        """(status, JSON body, headers); header names are case-insensitive, as in HTTP."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Token {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}"), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}"), exc.headers

    def task(self, task_id: int) -> dict:
        return self.call("GET", f"{BASE}/tasks/{task_id}")[1]

    def wait(self, task_id: int, status: str, timeout: float = 60) -> dict:
        wait_for(lambda: self.task(task_id)["status"] == status, timeout=timeout, interval=0.2)
        return self.task(task_id)


@pytest.fixture
def client(live_server_url: str, django_user_model, redis_db) -> Client:
    user = django_user_model.objects.create_superuser("e2e", password="pw")
    return Client(live_server_url, Token.objects.create(user=user).key)


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        ("cleanup-runs", {"max_age_hours": 24}, lambda r: r["runs_deleted"] == 1),
        ("health-check", {}, lambda r: r["checks"]["workers"]["alive"] >= 1),
        ("cleanup-temp-files", {"dry_run": True}, lambda r: r["dry_run"] is True),
        ("log-statistics", {"hours": 1}, lambda r: "by_level" in r),
    ],
)
def test_each_operation_runs_to_completed_through_http(client, worker_process, path, body, check):
    Run.objects.create(name="old", status="failed", finished_at=timezone.now() - timedelta(days=2))
    worker_process()
    status, answer, headers = client.call("POST", f"{BASE}/{path}", body)
    assert status == 202, answer
    assert headers["Location"] == f"{BASE}/tasks/{answer['task_id']}"
    task = client.wait(answer["task_id"], "completed")
    assert check(task["result"]), task["result"]
    assert task["requested_by"] == "e2e"
    assert task["attempt_history"][0]["outcome"] == "completed"


def test_a_hundred_simultaneous_posts_make_a_hundred_tasks_that_each_run_once(
    client, worker_process
):
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda _: client.call("POST", f"{BASE}/health-check"), range(100)))
    assert [status for status, _, _ in answers] == [202] * 100
    ids = {body["task_id"] for _, body, _ in answers}
    assert len(ids) == 100
    worker_process()
    worker_process()
    wait_for(
        lambda: Task.objects.filter(pk__in=ids, status="completed").count() == 100, timeout=120
    )
    assert {t.attempts for t in Task.objects.filter(pk__in=ids)} == {1}
    attempts = Task.objects.filter(pk__in=ids).values_list("attempt_set__number", flat=True)
    assert sorted(attempts) == [1] * 100


def test_cancel_stop_and_retry_through_http(client, worker_process):
    # Cancel while queued (no worker yet): 200, and it never runs.
    status, queued, _ = client.call("POST", f"{BASE}/log-statistics")
    status, cancelled, _ = client.call("DELETE", f"{BASE}/tasks/{queued['task_id']}")
    assert (status, cancelled["status"]) == (200, "cancelled")
    # Stop while running: the worker kills the horse at once, and the answer says so (200).
    running, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 60})
    worker_process()
    client.wait(running.pk, "leased")
    status, stopping, _ = client.call("DELETE", f"{BASE}/tasks/{running.pk}")
    assert (status, stopping["status"], stopping["error_code"]) == (200, "cancelled", "stopped")
    # A finished task can be retried: 202 and a new, linked task that runs.
    status, again, _ = client.call("POST", f"{BASE}/tasks/{queued['task_id']}/retry")
    assert (status, again["retry_of"]) == (202, queued["task_id"])
    assert client.wait(again["task_id"], "completed")["task_type"] == "log_statistics"
    status, conflict, _ = client.call("DELETE", f"{BASE}/tasks/{again['task_id']}")
    assert (status, conflict["code"]) == (409, "invalid_transition")
    assert client.call("GET", f"{BASE}/tasks/{queued['task_id']}")[1]["status"] == "cancelled"
