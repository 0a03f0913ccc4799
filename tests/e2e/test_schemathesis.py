"""Schemathesis against the live server, every check and phase (stateful included)."""

import subprocess
import sys

import pytest
from rest_framework.authtoken.models import Token

from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_generated_requests_find_no_server_error_and_no_schema_violation(
    live_server_url, django_user_model, redis_db, tmp_path
):
    user = django_user_model.objects.create_superuser("fuzzer", password="pw")
    token = Token.objects.create(user=user).key
    schema = tmp_path / "schema.json"
    subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--format", "openapi-json", "--file", schema],
        cwd=ROOT,
        check=True,
    )
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(ROOT / "tests" / "e2e" / "schemathesis.toml"),
        "run", str(schema),
        "--url", live_server_url,
        "--header", f"Authorization: Token {token}",
        "--checks", "all",
        # DELETE of a task cancels it (DESIGN §5): the task stays readable, `cancelled`.
        "--exclude-checks", "use_after_free",
        "--max-examples", "25",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--request-timeout", "20",
        "--seed", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout
