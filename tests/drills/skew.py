"""One worker host's clock a few seconds off: leases, the reconciler and the stats hold.

A time namespace cannot do this (it offsets CLOCK_MONOTONIC and CLOCK_BOOTTIME, never
CLOCK_REALTIME), so h3's workers run under libfaketime (LD_PRELOAD, FAKETIME="+5" or
"-5"): their wall clock is off, their monotonic clock is not. For each offset, h3's two
workers are restarted skewed, and then:

- every worker runs a long task (10 s: five heartbeats) while reconciler passes run on the
  skewed host too (`manage.py reconcile_tasks` under the same offset), besides rqcron's;
- then short tasks are enqueued one every 20 ms, so that each waits a few milliseconds.

The offset is larger than the drill's HEARTBEAT_MARGIN (4 s): a liveness judgement that
compared one host's clock with another's would end live attempts. Checked: the reconciler
touched none of the phase's tasks (each completed with one attempt, one handler run and
its first dispatch); every recorded wait (enqueue to lease) and run (lease to end) between
0 and 2 s (12 s for the long tasks), whichever host ran it, and the same in the stats the
API serves.
"""

import time
from typing import Any

from tests.drills.faults import (
    Counter,
    Result,
    actions_since,
    enqueue,
    reconciler_actions,
    wait_until,
)
from tests.drills.fleet import Fleet
from tests.soak.run import read_ledger

OFFSETS = (5.0, -5.0)
LONG_SECONDS = 10
SHORT_TASKS = 300


def run(fleet: Fleet, counter: Counter) -> Result:
    results = {}
    for offset in OFFSETS:
        results[f"{offset:+g} s"] = _one_offset(fleet, counter, offset)
    fleet.stop_workers([name for name in fleet.workers if name.startswith("h3-")])
    fleet.wait_registered([fleet.start_worker(fleet.host("h3")) for _ in (1, 2)])
    return results


def _one_offset(fleet: Fleet, counter: Counter, offset: float) -> Result:
    from taskqueue.models import Task

    host = fleet.host("h3")
    fleet.stop_workers([name for name in fleet.workers if name.startswith("h3-")])
    skewed = [fleet.start_worker(host, skew=offset) for _ in (1, 2)]
    fleet.wait_registered(skewed)
    before = reconciler_actions()
    phase_began = time.time()
    ids = [enqueue(counter(), LONG_SECONDS) for _ in fleet.workers]
    wait_until(lambda: Task.objects.filter(pk__in=ids, status="leased").count() == len(ids), 30)
    passes = []
    began = time.monotonic()
    while time.monotonic() - began < LONG_SECONDS - 2:  # passes on the skewed host, too
        passes.append(fleet.manage(host, "reconcile-skewed", "reconcile_tasks", skew=offset))
        time.sleep(2)
    for process in passes:
        process.wait(60)
    wait_until(lambda: not Task.objects.filter(pk__in=ids, status="leased").exists(), 60)
    for _ in range(SHORT_TASKS):  # paced: each waits for a free worker a few ms at most
        ids.append(enqueue(counter()))
        time.sleep(0.02)
    done = Task.objects.filter(pk__in=ids, status="completed")
    wait_until(lambda: done.count() == len(ids), 120, 0.5)
    problems = _check(fleet, ids, skewed)
    stats = _stats_of_type(time.time() - phase_began)
    wait = stats["wait_seconds"] or {}
    if not 0 <= (wait.get("p50") or 0) <= (wait.get("p95") or 0) <= 2:
        problems.append(f"the stats' wait times are off: {wait}")
    return {
        "tasks": len(ids),
        "on the skewed host": _count_on(ids, skewed),
        "reconciler passes on the skewed host": len(passes),
        "actions": actions_since(before),
        "stats": stats,
        "problems": problems,
    }


def _count_on(ids: list[int], workers: list[str]) -> int:
    from taskqueue.models import TaskAttempt

    return TaskAttempt.objects.filter(task_id__in=ids, worker_name__in=workers).count()


def _check(fleet: Fleet, ids: list[int], skewed: list[str]) -> list[str]:
    from taskqueue.models import Task, TaskAttempt

    problems = []
    runs, _, _ = read_ledger(fleet.ledger)
    for task in Task.objects.filter(pk__in=ids):
        attempts = list(TaskAttempt.objects.filter(task=task))
        if (
            task.status != "completed"
            or len(attempts) != 1
            or runs[(task.pk, 1)] != 1
            or (
                task.dispatch  # the reconciler dispatched it again
            )
        ):
            story = "; ".join(f"{a.number} {a.worker_name} {a.outcome} {a.error_code}"
                              f" {a.error_message[:60]!r}" for a in attempts)  # fmt: skip
            runs_of_first = runs[(task.pk, 1)]
            problems.append(f"task #{task.pk}: {task.status}, dispatch {task.dispatch},"
                            f" {runs_of_first} runs of attempt 1; attempts: {story}")  # fmt: skip
            continue
        attempt = attempts[0]
        wait = (attempt.started_at - task.created_at).total_seconds()
        ran = (attempt.finished_at - attempt.started_at).total_seconds()
        limit = LONG_SECONDS + 2 if task.payload["seconds"] else 2
        if not (0 <= wait <= 2 and 0 <= ran <= limit):
            where = "skewed" if attempt.worker_name in skewed else "on time"
            problems.append(f"task #{task.pk} ({where} worker): waited {wait:.3f} s, "
                            f"ran {ran:.3f} s")  # fmt: skip
    return problems[:20] + [f"... {len(problems) - 20} more"] * (len(problems) > 20)


def _stats_of_type(seconds: float) -> dict[str, Any]:
    """The soak_ping figures the stats endpoint serves, over this phase's tasks."""
    from datetime import timedelta

    from taskqueue.services.stats import task_stats

    stats = task_stats(window=timedelta(seconds=seconds))
    return {
        "wait_seconds": stats["wait_seconds"].get("soak_ping"),
        "run_seconds": stats["run_seconds"].get("soak_ping"),
    }
