"""The faults: a worker host partitioned mid-task, Redis cut off from the web, PostgreSQL
restarted, a worker host's clock off. Each returns its figures and the problems it found
(an empty list: the promise held)."""

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def reconciler_actions() -> dict[str, int]:
    from taskqueue import backend

    return backend.action_totals("reconciler")


def actions_since(before: dict[str, int]) -> dict[str, int]:
    after = reconciler_actions()
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def enqueue(n: int, seconds: float = 0, **options: Any) -> int:
    from taskqueue.services import enqueue_task

    return enqueue_task("soak_ping", {"n": n, "seconds": seconds}, source="drill", **options)[0].pk


def attempts_of(task_id: int) -> list[Any]:
    from taskqueue.models import TaskAttempt

    return list(TaskAttempt.objects.filter(task_id=task_id).order_by("number"))


class Counter:
    """Distinct `n` payloads, so that no two drill tasks are identical requests."""

    def __init__(self, start: int) -> None:
        self.value = start

    def __call__(self) -> int:
        self.value += 1
        return self.value


# --- HTTP -----------------------------------------------------------------------------------


def http(method: str, url: str, token: str, body: dict | None = None) -> Result:
    """One request: status, latency, the headers that matter and the JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Token {token}")
    request.add_header("Content-Type", "application/json")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    except OSError as exc:
        return {"status": None, "error": str(exc), "latency": time.monotonic() - began}
    parsed = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw)
    return {
        "status": status,
        "latency": time.monotonic() - began,
        "retry_after": headers.get("Retry-After"),
        "content_type": headers.get("Content-Type", ""),
        "body": parsed,
        "at": time.time(),
    }


def api_token() -> str:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_superuser("drill", password="drill-pw-unused")
    return Token.objects.create(user=user).key


def post_enqueue(web: str, token: str) -> Result:
    return http("POST", f"{web}/api/system/maintenance/log-statistics", token, {})
