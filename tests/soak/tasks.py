"""The soak's task types: `ping` that also writes each run to a ledger, and an exclusive one.

Every handler run appends one line to the ledger (SOAK_LEDGER): `run <task> <attempt>
<unix time> <pid>` when the handler starts and, for the exclusive type, `end …` when it
returns. Lines are single O_APPEND writes, so runs in several processes never interleave;
the soak reads the file only at the end.
"""

import os
import time
from typing import Any

from rest_framework import serializers

from taskqueue.progress import current_attempt
from taskqueue.registry import Backoff, PayloadSerializer, register
from taskqueue.tasks import ping

RETRY_SOON = Backoff(base=1, jitter=0)


class SoakPayload(PayloadSerializer):
    n = serializers.IntegerField(min_value=0)  # sets identical requests apart
    seconds = serializers.FloatField(min_value=0, max_value=60, default=0)


def _ledger(event: str) -> None:
    task_id, attempt = current_attempt()
    line = f"{event} {task_id} {attempt} {time.time():.6f} {os.getpid()}\n"
    descriptor = os.open(os.environ["SOAK_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


@register("soak_ping", serializer=SoakPayload, max_attempts=3, timeout=30, backoff=RETRY_SOON)
def soak_ping(n: int, seconds: float = 0) -> dict[str, Any]:
    """`ping`, written to the soak's ledger (and slow on request)."""
    _ledger("run")
    time.sleep(seconds)
    return ping()


@register(
    "soak_exclusive",
    serializer=SoakPayload,
    max_attempts=3,
    timeout=30,
    exclusive=True,
    backoff=RETRY_SOON,
)
def soak_exclusive(n: int, seconds: float = 0) -> dict[str, Any]:
    """One at a time: the ledger's run/end lines of two of these must never overlap."""
    _ledger("run")
    time.sleep(seconds)
    _ledger("end")
    return {"n": n}
