"""Bad configuration stops the program with one clear line, not a traceback."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT


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
