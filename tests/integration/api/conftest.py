"""API clients for each kind of caller."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

BASE = "/api/system/maintenance"


def user_with(django_user_model, username: str, *, staff: bool = True, perms: tuple = ()):
    user = django_user_model.objects.create_user(username, password="pw-" + username)
    user.is_staff = staff
    user.save()
    for codename in perms:
        app_label, code = codename.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=code)
        )
    return user


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-root")


@pytest.fixture
def api(admin_user, redis_db) -> APIClient:
    """A superuser authenticated by token."""
    return token_client(admin_user)


@pytest.fixture
def make_client(django_user_model, redis_db):
    def make(username: str, *, staff: bool = True, perms: tuple = ()) -> APIClient:
        return token_client(user_with(django_user_model, username, staff=staff, perms=perms))

    return make
