"""Authentication, staff-only, per-action permissions, CSRF, tokens, schema access."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from taskqueue.models import Task
from tests.conftest import user_with
from tests.integration.api.conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)

OPERATIONS = ["cleanup-runs", "health-check", "cleanup-temp-files", "log-statistics"]


@pytest.fixture
def task() -> Task:
    return Task.objects.create(task_type="ping", status="failed")


def every_request(task_id: int) -> list[tuple[str, str]]:
    return [
        ("get", f"{BASE}/tasks"),
        ("get", f"{BASE}/tasks/{task_id}"),
        ("get", f"{BASE}/tasks/999999"),
        ("delete", f"{BASE}/tasks/{task_id}"),
        ("delete", f"{BASE}/tasks/999999"),
        ("post", f"{BASE}/tasks/{task_id}/retry"),
        ("post", f"{BASE}/tasks/999999/retry"),
        ("get", f"{BASE}/stats"),
        *[("post", f"{BASE}/{op}") for op in OPERATIONS],
        *[("get", f"{BASE}/{op}") for op in OPERATIONS],
    ]


def test_anonymous_callers_get_401_everywhere(redis_db, task):
    client = APIClient()
    for method, url in [*every_request(task.pk), ("get", "/api/schema/")]:
        response = getattr(client, method)(url)
        assert response.status_code == 401, (method, url)
        if url.startswith(BASE):
            assert response["WWW-Authenticate"] == "Token"
            assert response.json()["code"] == "not_authenticated"


def test_a_bad_token_is_401(redis_db, task):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get(f"{BASE}/tasks")
    assert (response.status_code, response.json()["code"]) == (401, "authentication_failed")


@pytest.mark.parametrize("staff", [False, True])
def test_without_staff_status_or_permissions_everything_is_403(make_client, task, staff):
    perms = ("taskqueue.view_task", "taskqueue.change_task") if not staff else ()
    client = make_client("someone", staff=staff, perms=perms)
    for method, url in every_request(task.pk):
        response = getattr(client, method)(url)
        assert response.status_code == 403, (method, url, response.content)
        assert response.json()["code"] == "permission_denied"
    assert Task.objects.count() == 1


def test_view_task_reads_but_cannot_cancel_retry_or_trigger(make_client, task):
    client = make_client("reader", perms=("taskqueue.view_task",))
    assert client.get(f"{BASE}/tasks").status_code == 200
    assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 200
    assert client.get(f"{BASE}/stats").status_code == 200
    assert client.delete(f"{BASE}/tasks/{task.pk}").status_code == 403
    assert client.post(f"{BASE}/tasks/{task.pk}/retry").status_code == 403
    assert client.post(f"{BASE}/health-check").status_code == 403


def test_change_task_may_cancel_and_retry(make_client, task):
    client = make_client("operator", perms=("taskqueue.view_task", "taskqueue.change_task"))
    assert client.post(f"{BASE}/tasks/{task.pk}/retry").status_code == 202
    assert client.delete(f"{BASE}/tasks/{task.pk}").status_code == 409  # it is finished


def test_each_operation_needs_its_own_permission(make_client):
    client = make_client("checker", perms=("maintenance.run_health_check",))
    assert client.post(f"{BASE}/health-check").status_code == 202
    for op in ("cleanup-runs", "cleanup-temp-files", "log-statistics"):
        assert client.post(f"{BASE}/{op}").status_code == 403


def test_session_authentication_enforces_csrf(django_user_model, redis_db):
    user_with(django_user_model, "browser", perms=("maintenance.run_health_check",))
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="browser", password="pw-browser")
    refused = client.post(f"{BASE}/health-check", {}, format="json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    page = client.get("/api/auth/login/")
    token = page.cookies["csrftoken"].value
    accepted = client.post(f"{BASE}/health-check", {}, format="json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 202


def test_a_token_can_be_made_from_the_shell(django_user_model, capsys, redis_db):
    user = user_with(django_user_model, "robot", perms=("taskqueue.view_task",))
    call_command("drf_create_token", "robot")
    key = capsys.readouterr().out.split()[2]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(f"{BASE}/tasks").status_code == 200
    assert user.auth_token.key == key


def test_the_browsable_api_renders_for_staff(admin_user, redis_db):
    client = APIClient()
    client.force_login(admin_user)
    page = client.get(f"{BASE}/tasks", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert b"<html" in page.content


def test_the_schema_and_its_docs_are_served_to_staff(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        f"{BASE}/cleanup-runs",
        f"{BASE}/tasks",
        f"{BASE}/tasks/{{id}}",
        f"{BASE}/tasks/{{id}}/retry",
        f"{BASE}/stats",
    ):
        assert path in paths
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()  # assets are served locally (sidecar)
    assert api.get("/api/redoc/").status_code == 200


def test_the_schema_is_valid_openapi(capsys):
    call_command("spectacular", "--validate", "--fail-on-warn")
    assert "openapi: 3" in capsys.readouterr().out


def test_unknown_api_urls_are_json_404(api):
    response = api.get("/api/nothing/here")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_a_deleted_token_or_an_inactive_user_is_refused_at_once_despite_the_cache(
    make_client, django_user_model, task
):
    """Token look-ups are cached for a few seconds; a change in this process clears them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.authtoken.models import Token

    client = make_client("cached", perms=("taskqueue.view_task",))
    assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 200
    assert not [q for q in queries if "authtoken" in q["sql"] or "permission" in q["sql"]]
    user = django_user_model.objects.get(username="cached")
    user.is_active = False
    user.save()
    assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 401
    user.is_active = True
    user.save()
    assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 200
    Token.objects.filter(user=user).delete()
    assert client.get(f"{BASE}/tasks/{task.pk}").status_code == 401


def test_a_permission_granted_or_revoked_counts_at_once_despite_the_cache(
    make_client, django_user_model, task
):
    from django.contrib.auth.models import Group, Permission

    client = make_client("late", perms=())
    url = f"{BASE}/tasks/{task.pk}"
    assert client.get(url).status_code == 403  # cached now, with its (empty) permissions
    user = django_user_model.objects.get(username="late")
    view_task = Permission.objects.get(codename="view_task")
    user.user_permissions.add(view_task)
    assert client.get(url).status_code == 200
    user.user_permissions.remove(view_task)
    assert client.get(url).status_code == 403
    group = Group.objects.create(name="viewers")
    user.groups.add(group)
    assert client.get(url).status_code == 403
    group.permissions.add(view_task)
    assert client.get(url).status_code == 200
