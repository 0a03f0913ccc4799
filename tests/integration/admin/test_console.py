"""The console's admin-only logic: links by permission, words, formats, results."""

import pytest
from django.test import Client

from tests.conftest import user_with

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD = "/admin/taskqueue/task/dashboard/"
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
