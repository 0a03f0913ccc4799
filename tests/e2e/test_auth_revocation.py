"""Revoking access takes effect on the next request in every web process.

The web server is another process with its own token cache: a change made here (an admin
in one uvicorn process, a shell, another host) must reach it at once, not after
TOKEN_CACHE_SECONDS. Each case first makes the server cache the token, then revokes.
"""

import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from tests.conftest import user_with

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TASKS = "/api/system/maintenance/tasks"


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def viewer(django_user_model, redis_db):
    user = user_with(django_user_model, "viewer", perms=("taskqueue.view_task",))
    return user, Token.objects.create(user=user).key


def deactivate(user):
    user.is_active = False
    user.save()


def unstaff(user):
    user.is_staff = False
    user.save()


def revoke_permission(user):
    user.user_permissions.remove(Permission.objects.get(codename="view_task"))


def delete_token(user):
    Token.objects.filter(user=user).delete()


@pytest.mark.parametrize(
    ("revoke", "expected"),
    [(deactivate, 401), (unstaff, 403), (revoke_permission, 403), (delete_token, 401)],
)
def test_a_revocation_counts_on_the_next_request_in_the_web_process(
    live_server_url, viewer, revoke, expected
):
    user, token = viewer
    url = live_server_url + TASKS
    for _ in range(3):  # cached by the server now
        assert status_of(url, token) == 200
    revoke(user)
    assert status_of(url, token) == expected


def test_a_permission_granted_counts_on_the_next_request(
    live_server_url, django_user_model, redis_db
):
    user = user_with(django_user_model, "newcomer")
    token = Token.objects.create(user=user).key
    url = live_server_url + TASKS
    assert status_of(url, token) == 403
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    assert status_of(url, token) == 200
