"""Outages seen by the web: Redis unreachable from the web host, PostgreSQL restarted.

Redis: the web host's traffic to and from Redis's port is dropped (silently, as by a
partition) for 30 s while a client POSTs `log-statistics` back to back. Every POST must
answer 202 (the task is in the database), and every accepted task must complete once
Redis is reachable again: the reconciler dispatches waiting tasks that have no job.

PostgreSQL: the drill's cluster is stopped (fast shutdown) for 10 s and started again while
the client POSTs and GETs, and while workers run tasks. Meanwhile the API must answer 503,
JSON with a stable `code` and a Retry-After header (never a 500, never a hang), and once
the database is back every task accepted with a 202 must complete; the workers must go on
(each takes new work after the restart).
"""

import time
from datetime import UTC, datetime
from typing import Any

from tests.drills.faults import (
    Counter,
    Result,
    actions_since,
    enqueue,
    http,
    post_enqueue,
    reconciler_actions,
    wait_until,
)
from tests.drills.fleet import Fleet

REDIS_CUT_SECONDS = 30
POSTGRES_DOWN_SECONDS = 10


def redis_from_web(fleet: Fleet, web: str, token: str) -> Result:
    from taskqueue.models import Task

    before = reconciler_actions()
    host = fleet.host("web")
    fleet.network.block_port(host, fleet.redis.port)
    cut = time.monotonic()
    answers = []
    reads = []
    while time.monotonic() - cut < REDIS_CUT_SECONDS:
        answers.append(post_enqueue(web, token))
        if answers[-1]["status"] == 202:
            task_url = f"{web}/api/system/maintenance/tasks/{answers[-1]['body']['task_id']}"
            reads.append(http("GET", task_url, token))
    fleet.network.heal(host)
    restored = time.time()
    accepted = [a["body"]["task_id"] for a in answers if a["status"] == 202]
    problems = [f"a request answered {a['status']}: {a.get('body') or a.get('error')}"
                for a in answers + reads if a["status"] not in (200, 202)]  # fmt: skip
    completed = Task.objects.filter(pk__in=accepted, status="completed")
    if not wait_until(lambda: completed.count() == len(accepted), 120, 0.5):
        problems.append(f"{len(accepted) - completed.count()} accepted tasks did not complete")
    ends = [t.timestamp() - restored for t in completed.values_list("finished_at", flat=True)]
    latencies = sorted(a["latency"] for a in answers)
    read_latencies = sorted(a["latency"] for a in reads) or [0]
    return {
        "posts": len(answers),
        "accepted": len(accepted),
        "latency_p50": latencies[len(latencies) // 2],
        "latency_max": latencies[-1],
        "gets": len(reads),
        "get_latency_p50": read_latencies[len(read_latencies) // 2],
        "get_latency_max": read_latencies[-1],
        "all_done_after_restore": max(ends, default=0),
        "actions": actions_since(before),
        "problems": problems,
    }


def postgres_restart(fleet: Fleet, web: str, token: str, counter: Counter) -> Result:
    from django.db import close_old_connections, connections

    before = reconciler_actions()
    running = [enqueue(counter(), 3) for _ in range(6)]  # running while the database goes
    time.sleep(1.0)
    answers: list[dict[str, Any]] = []
    stopped = time.time()
    fleet.postgres.stop("fast")
    while time.time() - stopped < POSTGRES_DOWN_SECONDS:
        answers.append(post_enqueue(web, token) | {"phase": "down"})
        answers.append(
            http("GET", f"{web}/api/system/maintenance/tasks", token) | {"phase": "down"}
        )
    fleet.postgres.start()
    started = time.time()
    while time.time() - started < 10:
        answers.append(post_enqueue(web, token) | {"phase": "after"})
    connections.close_all()
    close_old_connections()
    problems = _check_answers(answers)
    accepted = running + [a["body"]["task_id"] for a in answers if a["status"] == 202]
    problems += _wait_completed(accepted)
    problems += _workers_took_work_since(fleet, started, counter)
    first_202 = min((a["at"] for a in answers if a["phase"] == "after" and a["status"] == 202),
                    default=None)  # fmt: skip
    down = [a for a in answers if a["phase"] == "down"]
    return {
        "requests_while_down": len(down),
        "statuses_while_down": sorted({str(a["status"]) for a in down}),
        "latency_max_while_down": max((a["latency"] for a in down), default=0),
        "statuses_after": sorted({str(a["status"]) for a in answers if a["phase"] == "after"}),
        "first_202_after_start": None if first_202 is None else first_202 - started,
        "accepted": len(accepted),
        "actions": actions_since(before),
        "problems": problems,
    }


def _check_answers(answers: list[dict[str, Any]]) -> list[str]:
    problems = []
    for answer in answers:
        status, body = answer["status"], answer.get("body") or {}
        if status in (202, 200):
            continue
        if status != 503:
            problems.append(f"{answer['phase']}: answered {status}: {body or answer.get('error')}")
        elif not (answer["retry_after"] and "json" in answer["content_type"] and body.get("code")):
            problems.append(f"a 503 without JSON code or Retry-After: {answer}")
    return problems


def _wait_completed(ids: list[int]) -> list[str]:
    from taskqueue.models import Task

    done = Task.objects.filter(pk__in=ids, status="completed")
    if wait_until(lambda: done.count() == len(ids), 180, 1):
        return []
    stuck = Task.objects.filter(pk__in=ids).exclude(status="completed")
    return [f"accepted but not completed: {list(stuck.values_list('pk', 'status'))[:10]}"]


def _workers_took_work_since(fleet: Fleet, since: float, counter: Counter) -> list[str]:
    """Every worker leases a task started after `since`: it reconnected."""
    from taskqueue.models import TaskAttempt

    after = datetime.fromtimestamp(since, UTC)
    names = set(fleet.workers)

    def all_worked() -> bool:
        for _ in range(len(names)):
            enqueue(counter())
        seen = TaskAttempt.objects.filter(started_at__gt=after, worker_name__in=names)
        return set(seen.values_list("worker_name", flat=True)) == names

    if wait_until(all_worked, 60, 1):
        return []
    return [f"workers that took no work after the restart: {sorted(names)}"]
