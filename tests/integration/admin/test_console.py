"""The console's admin-only logic: links by permission, words, formats, results."""

import re

import pytest
from django.test import Client

from taskqueue.models import Task
from tests.conftest import user_with

pytestmark = pytest.mark.django_db(transaction=True)

TASKS = "/admin/taskqueue/task/"
DASHBOARD = f"{TASKS}dashboard/"
OPERATIONS = "/admin/maintenance/run/operations/"


def login(django_user_model, username: str, perms: tuple = ()) -> Client:
    client = Client()
    client.force_login(user_with(django_user_model, username, perms=perms))
    return client


@pytest.mark.parametrize(
    ("perms", "dashboard", "operations"),
    [
        (("taskqueue.view_task",), True, False),
        (("maintenance.run_health_check",), False, True),
        (("taskqueue.view_task", "maintenance.run_log_statistics"), True, True),
        ((), False, False),
    ],
)
def test_the_index_and_sidebar_offer_the_pages_the_user_may_open(
    django_user_model, redis_db, perms, dashboard, operations
):
    client = login(django_user_model, "someone", perms)
    page = client.get("/admin/").content.decode()
    sidebar = client.get("/admin/password_change/").content.decode().split('id="nav-sidebar"')[1]
    for html in (page, sidebar):
        assert (f'href="{DASHBOARD}"' in html) is dashboard
        assert (f'href="{OPERATIONS}"' in html) is operations
    if operations:  # the app's own page lists it too, for a user who sees no Run
        assert f'href="{OPERATIONS}"' in client.get("/admin/maintenance/").content.decode()


@pytest.fixture
def admin_client_(admin_user, redis_db) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def test_a_result_shows_as_indented_json_in_the_page_and_its_live_block(admin_client_):
    task = Task.objects.create(task_type="ping", status="completed", result={"pong": True})
    for html in (
        admin_client_.get(f"{TASKS}{task.pk}/change/").content.decode(),
        admin_client_.get(f"{TASKS}{task.pk}/live/").json()["html"],
    ):
        assert '<pre class="tq-json">{\n  &quot;pong&quot;: true\n}</pre>' in html
        assert "{&#x27;pong&#x27;: True}" not in html


def test_a_result_with_a_template_of_its_type_keeps_its_json_a_click_away(admin_client_):
    result = {"status": "ok", "reasons": [], "checks": {}}
    task = Task.objects.create(task_type="health_check", status="completed", result=result)
    page = admin_client_.get(f"{TASKS}{task.pk}/change/").content.decode()
    assert "Overall" in page and "<summary>As JSON</summary>" in page
    assert "&quot;status&quot;: &quot;ok&quot;" in page


def test_the_redoc_page_and_its_script_name_nothing_outside_this_server(admin_client_):
    page = admin_client_.get("/api/redoc/").content.decode()
    script = admin_client_.get("/api/redoc/redoc.standalone.js")
    assert "/api/redoc/redoc.standalone.js" in page and "Content-Security-Policy" in page
    assert not re.findall(r"https?://", page.replace("http://www.w3.org", ""))
    assert script.status_code == 200 and script["Content-Type"] == "text/javascript"
    assert b"Redoc" in script.content and b"cdn.redoc.ly" not in script.content
