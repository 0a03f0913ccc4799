"""Bad configuration stops the program with one clear line, not a traceback."""

import os
import socket
import subprocess
import sys

import pytest

from taskqueue.management.commands.preflight import redacted
from tests.helpers import ROOT, free_port


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("USE_TASK_QUEUE", "maybe", "USE_TASK_QUEUE must be true or false"),
        ("DATABASE_URL", "nosuchdb://x", "DATABASE_URL is not a database URL"),
        ("REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL must start with redis://"),
        ("DEBUG", "perhaps", "DEBUG must be true or false"),
    ],
)
def test_a_bad_setting_is_reported_in_one_line(variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", variable: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Configuration error:")


def _make_run(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "VAR_DIR": str(tmp_path),
        "REDIS_URL": os.environ["REDIS_URL"],
        "PORT": str(free_port()),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "scripts/run.py"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"USE_TASK_QUEUE": "maybe"}, "Configuration error: USE_TASK_QUEUE must be true or false"),
        ({"DATABASE_URL": "nosuchdb://x"}, "Configuration error: DATABASE_URL is not a database"),
        (
            {"DATABASE_URL": "sqlite:////nonexistent/dir/db.sqlite3"},
            "DATABASE_URL: cannot use the database /nonexistent/dir/db.sqlite3: ",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            "REDIS_URL: Redis at redis://127.0.0.1:1/0 does not answer: ",
        ),
        ({"REDIS_URL": "ftp://x"}, "Configuration error: REDIS_URL must start with redis://"),
        ({"PORT": "http"}, "Configuration error: PORT must be a TCP port number, not 'http'."),
    ],
)
def test_make_run_stops_on_bad_configuration_with_one_line(tmp_path, variables, message) -> None:
    result = _make_run(tmp_path, **variables)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert output.startswith(message), output
    assert len(output.splitlines()) == 1, output
    assert "Uvicorn" not in output


def test_make_run_names_port_when_the_port_is_busy(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _make_run(tmp_path, PORT=str(port))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2
    assert output == (
        f"PORT: 127.0.0.1:{port} is already in use (another `make run`?); "
        f"choose another port, e.g. PORT={port + 1} make run"
    )


def test_a_password_in_a_url_is_not_printed() -> None:
    assert redacted("postgres://u:s3cret@h:5432/d") == "postgres://u:***@h:5432/d"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
