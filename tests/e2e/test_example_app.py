"""An app that knows only django.tasks, on this engine: a view enqueues, a real worker
process runs it, and the result is seen through get_result(), the REST API and the admin."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.example_app import tasks as example
from tests.helpers import wait_for

try:
    from django.tasks import TaskResultStatus
except ImportError:
    from django_tasks import TaskResultStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_view_enqueues_a_worker_runs_and_everything_sees_it(django_user_model, worker_process):
    admin = django_user_model.objects.create_superuser("example", password="pw")
    browser = Client()
    browser.force_login(admin)
    assert browser.post("/example/add", {"a": "x"}).status_code == 400
    answer = browser.post("/example/add", {"a": "2", "b": "3"})
    assert answer.status_code == 202
    result_id = answer.json()["id"]
    assert answer.json()["status"] == "READY"
    worker_process()

    wait_for(lambda: example.add.get_result(result_id).is_finished, timeout=60, interval=0.2)
    result = example.add.get_result(result_id)
    assert (result.status, result.return_value, result.attempts) == (
        TaskResultStatus.SUCCESSFUL, 5, 1,
    )  # fmt: skip
    assert browser.get(f"/example/results/{result_id}").json() == {
        "id": result_id, "status": "SUCCESSFUL", "attempts": 1, "value": 5,
    }  # fmt: skip

    api = APIClient()
    api.force_authenticate(admin)
    body = api.get(f"/api/system/maintenance/tasks/{result_id}").json()
    assert (body["task_type"], body["status"]) == ("tests.example_app.tasks.add", "completed")
    assert body["result"] == {"return_value": 5}
    assert body["payload"] == {"args": [2, 3], "kwargs": {}}
    listed = api.get("/api/system/maintenance/tasks?task_type=tests.example_app.tasks.add").json()
    assert [task["task_id"] for task in listed["results"]] == [int(result_id)]
    assert listed["results"][0]["result_summary"] == "return_value: 5"

    changelist = browser.get("/admin/taskqueue/task/?task_type=tests.example_app.tasks.add")
    assert changelist.status_code == 200
    assert b"tests.example_app.tasks.add" in changelist.content
    page = browser.get(f"/admin/taskqueue/task/{result_id}/change/")
    assert page.status_code == 200
    assert b"return_value" in page.content


def test_the_example_views_need_a_login(client):
    assert client.post("/example/add", {"a": "1", "b": "2"}).status_code == 302
    assert client.get("/example/results/1").status_code == 302
