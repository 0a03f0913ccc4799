"""`make run`'s launcher: the whole system starts, runs a task, and Ctrl-C leaves nothing."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.helpers import (
    ROOT,
    command_line,
    free_port,
    http_status,
    stop_process_group,
    subprocess_env,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SERVICES = ("redis-server", "uvicorn", "rqworker", "rqcron")


def not_running(pid: int) -> list[str]:
    """Which of the services `make run` starts are not among a process's descendants now.

    A child that has just exited (the horse of a cron job) is skipped.
    """
    lines = [command_line(child) or "" for child in psutil.Process(pid).children(recursive=True)]
    return [part for part in SERVICES if not any(part in line for line in lines)]


def test_run_serves_web_worker_cron_and_ctrl_c_stops_everything() -> None:
    var_dir = tempfile.mkdtemp(prefix="tq-run-")  # short: unix socket paths are limited
    port = free_port()
    env = subprocess_env(VAR_DIR=var_dir, PORT=str(port))
    env.pop("REDIS_URL")  # the launcher starts its own embedded Redis
    log = open(os.path.join(var_dir, "run.log"), "w")  # noqa: SIM115
    launcher = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/admin/login/") == 200, timeout=60)
        deadline = time.monotonic() + 30
        while (missing := not_running(launcher.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not missing, f"not running: {missing}"
        ping = subprocess.run(  # noqa: PLW1510
            [sys.executable, "manage.py", "enqueue_task", "ping", "--wait", "--wait-timeout", "30"],
            cwd=ROOT,
            env={**env, "REDIS_URL": f"unix://{var_dir}/redis/redis.sock"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert '"status": "completed"' in ping.stdout
        descendants = psutil.Process(launcher.pid).children(recursive=True)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        launcher.wait(30)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert alive == [], f"left behind: {alive}"
        assert launcher.returncode == 0
        log.flush()
        with open(os.path.join(var_dir, "run.log")) as written:
            output = written.read()
        # The banner names the Redis in use (for `rq info`) and how to reset the password.
        assert f"Redis:  unix://{var_dir}/redis/redis.sock" in output
        assert "manage.py changepassword admin" in output
        # Each start-up line once: django-rq's rqcron used to print RQ's own lines again.
        assert output.count("Loading cron configuration from taskqueue.cron") == 1, output
        assert "Starting cron scheduler" not in output
    finally:
        if launcher.poll() is None:
            stop_process_group(launcher)
        log.close()
        shutil.rmtree(var_dir, ignore_errors=True)
