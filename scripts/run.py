"""`make run`: the whole system on one machine, stopped together by Ctrl-C.

Starts an embedded Redis when REDIS_URL is unset, migrates, creates a first superuser
when there is none, then runs the web server (uvicorn, ASGI) on 127.0.0.1:$PORT, one
worker and the cron process. If any of them dies, all are stopped.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from project.http import UVICORN_OPTIONS
from scripts.embedded_redis import ROOT, VAR_DIR, die_with_parent, embedded_redis

PYTHON = sys.executable
MANAGE = [PYTHON, str(ROOT / "manage.py")]


def services(port: str) -> dict[str, list[str]]:
    return {
        "web": [PYTHON, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
                "--port", port, "--no-access-log", *UVICORN_OPTIONS],
        "worker": [*MANAGE, "rqworker", "high", "default", "low", "--with-scheduler"],
        "cron": [*MANAGE, "rqcron", "taskqueue.cron"],
    }  # fmt: skip


# Seconds a stopping worker gets to finish its running task before it is told to stop it.
WARM_SHUTDOWN_SECONDS = 15


def stop_all(children: dict[str, subprocess.Popen], hurry: "list[bool]") -> None:
    """SIGTERM every child; the worker finishes its running task (a second Ctrl-C, or
    WARM_SHUTDOWN_SECONDS, makes it stop the task and record it), then SIGKILL the rest."""
    for child in children.values():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
    worker = children.get("worker")
    if worker is not None and _wait(worker, 1.0, hurry) is None:
        print(
            f"Waiting for the worker's running task to finish (at most {WARM_SHUTDOWN_SECONDS} s;"
            " Ctrl-C again stops it now)…",
            file=sys.stderr,
            flush=True,
        )
        if _wait(worker, WARM_SHUTDOWN_SECONDS, hurry) is None:
            print("Stopping the running task (it is recorded as interrupted).", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)  # the second signal: a cold shutdown
            _wait(worker, 10, [False])
    deadline = time.monotonic() + 5
    for child in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.1, deadline - time.monotonic()))
    for child in children.values():  # the process group: the worker's work horse too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _wait(child: subprocess.Popen, seconds: float, hurry: "list[bool]") -> int | None:
    """Wait up to `seconds` for `child` to exit (less if `hurry[0]` becomes true)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not hurry[0]:
        if child.poll() is not None:
            return child.returncode
        time.sleep(0.1)
    return child.poll()


def prepare(env: dict[str, str], port: str) -> int:
    """Check the configuration, migrate, create the first superuser: 0, or the exit code of
    the step that failed (which printed its one line)."""
    steps = (
        ["preflight", "--port", port],
        ["migrate", "--no-input", "-v", "0"],
        ["ensure_superuser"],
    )
    for step in steps:
        code = subprocess.run([*MANAGE, *step], env=env, check=False).returncode
        if code:
            return code
    return 0


def serve(env: dict[str, str]) -> int:
    port = env.get("PORT", "8000")
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(
            f"Configuration error: PORT must be a TCP port number, not {port!r}.", file=sys.stderr
        )
        return 2
    code = prepare(env, port)
    if code:
        return code
    children: dict[str, subprocess.Popen] = {}
    stopping = False
    hurry = [False]  # a second Ctrl-C while stopping

    def request_stop(*_: object) -> None:
        nonlocal stopping
        hurry[0] = stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name, command in services(port).items():
            # The web process pools its PostgreSQL connections (see project/env.py).
            child_env = {**env, "DATABASE_POOL": "1"} if name == "web" else env
            children[name] = subprocess.Popen(
                command,
                env=child_env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        print(banner(port, env["REDIS_URL"]), flush=True)
        while not stopping:
            dead = [name for name, child in children.items() if child.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited; stopping everything.", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("Stopping…", file=sys.stderr)
        stop_all(children, hurry)


def banner(port: str, redis_url: str) -> str:
    manage = ".venv/bin/python manage.py"
    return (
        f"\n  Web:    http://127.0.0.1:{port}/admin/   API: http://127.0.0.1:{port}/api/\n"
        f"  Redis:  {redis_url}   (.venv/bin/rq info --url {redis_url})\n"
        f"  Try:    {manage} enqueue_task ping --wait\n"
        f"  Demo:   {manage} seed_demo_data   (runs, temp files, logs)\n"
        f"  Admin password forgotten: {manage} changepassword admin\n"
        "  Ctrl-C stops everything.\n"
    )


def main() -> None:
    env = dict(os.environ)
    if env.get("REDIS_URL"):
        sys.exit(serve(env))
    with embedded_redis(VAR_DIR / "redis", persist=True) as url:
        env["REDIS_URL"] = url
        code = serve(env)
    sys.exit(code)


if __name__ == "__main__":
    main()
