"""Helpers for tests that start real processes."""

import contextlib
import hashlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from django.conf import settings
from django.db import connection

from scripts.embedded_redis import free_port  # noqa: F401  (the tests' one too)

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database the tests use (the test database, once created)."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = quote(s["USER"] or "", safe="")
    if s["PASSWORD"]:
        auth += ":" + quote(s["PASSWORD"], safe="")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "TASKQUEUE_DIAGNOSTICS": "1",
        "VAR_DIR": str(settings.VAR_DIR),
        **extra,
    }


def command_line(process: psutil.Process) -> str | None:
    """A process's command line, or None once it has exited (a zombie not yet reaped by its
    parent, such as the horse of a cron job just done, has none left to read)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess is one
        return None


def stop_process_group(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the group, then SIGKILL it and every descendant (RQ's work horses run in
    process groups of their own)."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1) -> object:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s: {predicate}")


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` with a digest of its content (or its link target)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                state[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[str(path)] = "dir"
    return state


def age(path: Path, hours: float) -> None:
    """Set a path's modification time `hours` ago, without following a symlink."""
    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment), follow_symlinks=False)


def http_status(url: str, **headers: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """`source` mounted at `target` (created) with `mount --bind`; unmounted after."""
    target.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
