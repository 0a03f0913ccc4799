"""The four POSTs: 202 and a task id, query parameters, dedup, inline mode, bad input."""

import json

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from taskqueue.models import Task
from tests.integration.api.conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)

OPERATIONS = {
    "cleanup-runs": "cleanup_runs",
    "health-check": "health_check",
    "cleanup-temp-files": "cleanup_temp_files",
    "log-statistics": "log_statistics",
}


def post_raw(api: APIClient, path: str, body: str, content_type: str = "application/json"):
    return api.generic("POST", f"{BASE}/{path}", body, content_type=content_type)


@pytest.mark.parametrize(("path", "task_type"), OPERATIONS.items())
def test_each_operation_is_enqueued_with_202_and_a_location(api, admin_user, path, task_type):
    response = api.post(f"{BASE}/{path}", {}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"task_id", "status", "message"}
    assert body["status"] == "queued"
    assert response["Location"] == f"{BASE}/tasks/{body['task_id']}"
    task = Task.objects.get(pk=body["task_id"])
    assert (task.task_type, task.requested_by, task.source) == (task_type, admin_user, "api")


def test_parameters_may_come_as_query_parameters(api):
    response = api.post(f"{BASE}/cleanup-runs?max_age_hours=48&dry_run=true")
    assert response.status_code == 202
    payload = Task.objects.get(pk=response.json()["task_id"]).payload
    assert payload == {"max_age_hours": 48, "dry_run": True}


def test_an_identical_request_to_an_active_exclusive_task_answers_200_with_it(api):
    first = api.post(f"{BASE}/cleanup-temp-files", {"max_age_hours": 5}, format="json")
    again = api.post(f"{BASE}/cleanup-temp-files", {"max_age_hours": 5}, format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["task_id"] == first.json()["task_id"]
    assert "already" in again.json()["message"]


@override_settings(TASKQUEUE={"USE_TASK_QUEUE": False})
def test_without_the_queue_the_operation_runs_inline_and_answers_200(api, roots):
    response = api.post(f"{BASE}/health-check", {}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    assert body["result"]["checks"]["database"]["status"] == "ok"


def test_get_describes_the_operation(api):
    body = api.get(f"{BASE}/cleanup-runs").json()
    assert body["task_type"] == "cleanup_runs"
    assert body["parameters"]["max_age_hours"]["max_value"] == 8760
    assert body["policy"] == {
        "max_attempts": 3,
        "timeout": 300,
        "priority": 5,
        "queue": "high",
        "exclusive": True,
    }


@pytest.mark.parametrize(
    "raw", ["-1", "0", "1.5", '"abc"', "true", "null", "1e309", str(10**30), "8761", '"1.0"']
)
def test_out_of_range_and_mistyped_hours_are_400_with_a_field_message(api, raw):
    response = post_raw(api, "cleanup-runs", f'{{"max_age_hours": {raw}}}')
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    assert isinstance(body["max_age_hours"], list)
    assert Task.objects.count() == 0


def test_unknown_fields_are_named(api):
    response = api.post(f"{BASE}/health-check", {"verbose": 1, "x": 2}, format="json")
    assert response.status_code == 400
    assert response.json()["verbose"] == ["Unknown field."]
    assert response.json()["x"] == ["Unknown field."]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "parse_error"),
        ("NaN", "application/json", 400, "parse_error"),
        ("[1, 2]", "application/json", 400, "invalid"),
        ('"text"', "application/json", 400, "invalid"),
        ("max_age_hours=5", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("hello", "text/plain", 415, "unsupported_media_type"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "application/json", 413, None),
        ("[" * 50 + "]" * 50, "application/json", 400, "parse_error"),
        ("[" * 5000 + "]" * 5000, "application/json", 400, "parse_error"),
        ("1" * 5000, "application/json", 400, "parse_error"),
        (b"\xff\xfe{}", "application/json", 400, "parse_error"),
    ],
)
def test_malformed_bodies_get_clear_json_errors(api, body, content_type, status, code):
    response = post_raw(api, "cleanup-runs", body, content_type)
    assert response.status_code == status, response.content
    data = response.json()
    assert set(data) >= {"detail", "code"}
    if code:
        assert data["code"] == code
    text = json.dumps(data)
    assert "Traceback" not in text and "/work/" not in text and ".py" not in text


def test_throttling_answers_429_with_retry_after(api):
    rates = {"DEFAULT_THROTTLE_RATES": {"enqueue": "2/day"}}  # no window boundary mid-test
    from django.conf import settings

    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **rates}):
        codes = [api.post(f"{BASE}/health-check").status_code for _ in range(3)]
        throttled = api.post(f"{BASE}/health-check")
    assert codes == [202, 202, 429]
    assert throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0


def test_a_cap_on_active_tasks_per_type_answers_429_with_its_own_code(api):
    with override_settings(TASKQUEUE={"MAX_ACTIVE_PER_TYPE": 2}):
        codes = [api.post(f"{BASE}/health-check").status_code for _ in range(3)]
        refused = api.post(f"{BASE}/health-check")
    assert codes == [202, 202, 429]
    assert refused.json()["code"] == "too_many_active_tasks"
    assert refused["Retry-After"]


def test_a_database_outage_is_a_503_with_retry_after_not_a_500(api, monkeypatch):
    from django.db import OperationalError

    from taskqueue.services import lifecycle

    def unavailable(*args, **kwargs):
        raise OperationalError("sorry, too many clients already")

    monkeypatch.setattr(lifecycle, "_at_cap", unavailable)
    response = api.post(f"{BASE}/health-check", {}, format="json")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"
    assert "too many clients" not in response.content.decode()
