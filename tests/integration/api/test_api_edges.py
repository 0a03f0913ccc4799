"""What a new client trips over: every answer under /api/ is JSON, one way to pass
parameters, an API root, and bodies refused with the right status whatever their size."""

import pytest
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from taskqueue.models import Task
from tests.integration.api.conftest import BASE

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def csrf_api(admin_user, redis_db) -> APIClient:
    """A token client that, as a real one does, meets Django's CSRF checks."""
    client = APIClient(enforce_csrf_checks=True)
    token, _ = Token.objects.get_or_create(user=admin_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", f"{BASE}/tasks/abc"),
        ("POST", "/api/nope"),
        ("POST", f"{BASE}/tasks/%C2%84/retry"),
        ("PUT", f"{BASE}/nothing/here"),
        ("PATCH", "/api/"),
    ],
)
def test_a_write_to_an_unknown_url_is_a_json_404_not_a_csrf_page(csrf_api, method, path):
    response = csrf_api.generic(method, path)
    expected = 405 if path == "/api/" else 404
    assert response.status_code == expected, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] in {"not_found", "method_not_allowed"}


def test_a_csrf_failure_under_the_api_is_json(admin_user, redis_db):
    """A session (cookie) client that forgets the CSRF token is told so in JSON (the event
    stream is a plain Django view, checked by Django's CSRF middleware)."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(f"{BASE}/events")
    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "csrf_failed"


@pytest.mark.parametrize("root", ["/api/", f"{BASE}/"])
def test_the_api_root_lists_every_entry_point(api, root):
    response = api.get(root)
    assert response.status_code == 200
    body = response.json()
    assert body["operations"]["health_check"].endswith(f"{BASE}/health-check")
    assert body["resources"]["tasks"].endswith(f"{BASE}/tasks")
    assert set(body["documentation"]) == {"schema", "docs", "redoc"}
    for group in body.values():
        for url in group.values():
            path = url.split("testserver", 1)[1]
            if not path.endswith("/events"):  # a stream: it does not end
                assert api.get(path).status_code == 200, path


def test_the_api_root_is_browsable_and_closed_to_anonymous_clients(api, redis_db):
    assert APIClient().get("/api/").status_code == 401
    page = api.get("/api/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert b"health-check" in page.content


def test_parameters_in_both_the_body_and_the_query_are_each_validated(api):
    response = api.post(
        f"{BASE}/cleanup-runs?max_age_hours=abc", {"max_age_hours": 24}, format="json"
    )
    assert response.status_code == 400
    assert "max_age_hours" in response.json()
    assert Task.objects.count() == 0
    response = api.post(
        f"{BASE}/cleanup-runs?max_age_hours=1", {"max_age_hours": 24}, format="json"
    )
    assert response.status_code == 202
    assert Task.objects.get().payload["max_age_hours"] == 24  # the body wins, as documented


def test_a_json_null_body_is_refused_like_any_other_non_object(api):
    for raw in ("null", "[]", '"24"'):
        response = api.generic("POST", f"{BASE}/health-check", raw, content_type="application/json")
        assert response.status_code == 400, raw
        assert response.json()["payload"] == ["Expected a JSON object."]
    assert Task.objects.count() == 0


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024, 3 * 1024 * 1024, 30 * 1024 * 1024])
def test_every_body_over_the_limit_is_a_json_413(api, size):
    body = '{"x": "' + "a" * size + '"}'
    response = api.generic("POST", f"{BASE}/health-check", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert Task.objects.count() == 0


def test_django_s_own_400_is_json_under_the_api(api):
    with override_settings(ALLOWED_HOSTS=["elsewhere.example"]):
        response = api.get("/api/", HTTP_HOST="bad.example")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("task_type=", "task_type"),
        ("status=", "status"),
        ("cursor=7%F2%8A%B7%9FE", "cursor"),
        ("cursor=abc", "cursor"),
        ("page_size=true", "page_size"),
        ("page_size=0", "page_size"),
    ],
)
def test_bad_list_parameters_are_a_400_naming_the_parameter(api, query, field):
    response = api.get(f"{BASE}/tasks?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_the_schema_gives_query_parameters_their_bounds(api):
    schema = api.get("/api/schema/?format=json").json()
    parameters = {
        p["name"]: p["schema"]
        for p in schema["paths"][f"{BASE}/cleanup-runs"]["post"]["parameters"]
    }
    assert parameters["max_age_hours"] == {"type": "integer", "minimum": 1, "maximum": 8760}
    statistics = schema["paths"][f"{BASE}/log-statistics"]["post"]["parameters"]
    hours = {p["name"]: p["schema"] for p in statistics}["hours"]
    assert "minimum" in hours and "maximum" in hours
    listing = schema["paths"][f"{BASE}/tasks"]["get"]
    sizes = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert sizes["page_size"]["maximum"] == 100
    assert "400" in listing["responses"]
    assert "/api/schema/" not in schema["paths"]
