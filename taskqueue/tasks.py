"""Built-in task types: `ping`, and `diagnostic` for tests and fault drills."""

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from taskqueue import backend
from taskqueue.conf import conf
from taskqueue.exceptions import TaskError
from taskqueue.progress import report_progress
from taskqueue.registry import Backoff, PayloadSerializer, register


@register("ping", max_attempts=1, timeout=30, priority=3)
def ping() -> dict[str, Any]:
    """Return when and where it ran: the smoke test of a deployment."""
    return {
        "pong": True,
        "at": timezone.now().isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "worker": backend.current_job().worker_name,
    }


class DiagnosticPayload(PayloadSerializer):
    ACTIONS = (
        "succeed",
        "sleep",
        "fail",
        "exit",
        "kill",
        "kill_once",
        "stubborn_sleep",
        "progress",
        "sleep_fail",
        "fail_final",
    )

    action = serializers.ChoiceField(choices=ACTIONS, default="succeed")
    seconds = serializers.FloatField(min_value=0, max_value=3600, default=0)
    exit_code = serializers.IntegerField(min_value=0, max_value=255, default=1)
    marker = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False)


def diagnostic(
    action: str = "succeed", seconds: float = 0, exit_code: int = 1, marker: str | None = None
) -> dict[str, Any]:
    """Sleep, fail, exit or kill itself on demand; witness lines go to var/diagnostics/<marker>."""
    witness = Path(settings.VAR_DIR) / "diagnostics" / marker if marker else None
    previous = ""
    if witness:
        witness.parent.mkdir(parents=True, exist_ok=True)
        previous = witness.read_text() if witness.exists() else ""
        _witness(witness, "start")
    if action == "stubborn_sleep":  # ignores RQ's timeout signal: only a hard kill ends it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if action == "progress":  # half-way after a moment, then the rest of the time
        report_progress(50, "half-way")
    if action in ("sleep", "stubborn_sleep", "progress"):
        time.sleep(seconds)
    elif action == "fail":
        raise RuntimeError("diagnostic failure on request")
    elif action in ("sleep_fail", "fail_final"):  # sleep, witness "fail", then fail
        time.sleep(seconds)
        if witness:
            _witness(witness, "fail")
        if action == "fail_final":
            raise TaskError("diagnostic_final", "diagnostic final failure", retryable=False)
        raise RuntimeError("diagnostic failure after a sleep")
    elif action == "exit":
        os._exit(exit_code)
    elif action == "kill" or (action == "kill_once" and "start" not in previous):
        os.kill(os.getpid(), signal.SIGKILL)
    if witness:
        _witness(witness, "end")
    return {"action": action, "pid": os.getpid()}


def _witness(path: Path, event: str) -> None:
    with path.open("a") as handle:
        handle.write(f"{event} {time.time():.6f} {os.getpid()}\n")


def register_diagnostics() -> None:
    """Register `diagnostic` and `diagnostic_exclusive` (off unless enabled in settings)."""
    quick = Backoff(base=0, jitter=0)
    register("diagnostic", serializer=DiagnosticPayload, max_attempts=3, timeout=10, backoff=quick)(
        diagnostic
    )
    register(
        "diagnostic_exclusive",
        serializer=DiagnosticPayload,
        max_attempts=1,
        timeout=10,
        exclusive=True,
        backoff=quick,
    )(diagnostic)


if conf.ENABLE_DIAGNOSTICS:
    register_diagnostics()
