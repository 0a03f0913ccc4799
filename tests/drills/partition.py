"""A worker host partitioned mid-task for longer than the heartbeat margin.

Every worker takes a long `soak_ping` (8 s); then h2 loses its link (silent drops, both
directions) for at least 30 s: longer than JOB_MONITORING_INTERVAL + HEARTBEAT_MARGIN
(6 s here) plus a reconciler period (15 s). The reconciler must end h2's attempts
(`worker_lost`) and re-dispatch them as a new generation, and workers on h1/h3 must
complete them. When the link comes back, h2's workers report their attempts' late
outcomes: those must be refused and recorded nowhere (not on the task, not on its
attempts, not in RQ: the old job stays deleted), and each h2 worker must go on working.
"""

import time
from typing import Any

from tests.drills.faults import Counter, Result, actions_since, attempts_of, enqueue, wait_until
from tests.drills.fleet import Fleet
from tests.soak.run import read_ledger

TASK_SECONDS = 8
MIN_CUT_SECONDS = 30


def run(fleet: Fleet, counter: Counter, before: dict[str, int]) -> Result:
    from taskqueue.models import Task, job_id_for

    host = fleet.host("h2")
    ids = [enqueue(counter(), TASK_SECONDS, max_attempts=3) for _ in fleet.workers]
    wait_until(lambda: Task.objects.filter(pk__in=ids, status="leased").count() == len(ids), 30)
    victims = [pk for pk in ids if attempts_of(pk)[-1].worker_name.startswith("h2-")]
    problems: list[str] = [] if victims else ["no task was running on h2 when it was cut"]
    cut = time.time()
    fleet.network.partition(host)
    lost_at: dict[int, float] = {}
    done_at: dict[int, float] = {}
    stamps: dict[int, Any] = {}
    while time.time() - cut < 120:
        _watch(victims, cut, lost_at, done_at, stamps)
        if len(done_at) == len(victims) and time.time() - cut >= MIN_CUT_SECONDS:
            break
        enqueue(counter())  # the other hosts keep working meanwhile
        time.sleep(0.5)
    fleet.network.heal(host)
    healed = time.time()
    cut_for = healed - cut
    # Each h2 worker deals with its late outcome before it takes another job: once each
    # has leased a task started after the heal, its late outcome has been handled.
    h2_workers = [name for name in fleet.workers if name.startswith("h2-")]
    resumed = wait_until(lambda: _all_worked_since(h2_workers, healed, counter), 180, 1)
    if not resumed:
        problems.append(f"h2's workers did not take new work within 180 s of the heal: "
                        f"{h2_workers}")  # fmt: skip
    late_in = time.time() - healed
    problems += _check_victims(victims, stamps, fleet)
    old_jobs = _old_jobs_left([job_id_for(pk, 0) for pk in victims])
    if old_jobs:
        problems.append(f"the stale worker's outcome reached RQ: {old_jobs}")
    return {
        "victims": victims,
        "cut_seconds": cut_for,
        "lost_after": [lost_at[pk] for pk in victims if pk in lost_at],
        "completed_after": [done_at[pk] for pk in victims if pk in done_at],
        "late_handled_within": late_in,
        "actions": actions_since(before),
        "problems": problems,
    }


def _watch(victims: list[int], cut: float, lost_at: dict, done_at: dict, stamps: dict) -> None:
    from taskqueue.models import Task

    for task in Task.objects.filter(pk__in=victims):
        first = attempts_of(task.pk)[0]
        if task.pk not in lost_at and first.outcome != "running":
            lost_at[task.pk] = time.time() - cut
        if task.pk not in done_at and task.status == "completed":
            done_at[task.pk] = time.time() - cut
            stamps[task.pk] = (task.updated_at, task.result, [(a.pk, a.outcome, a.finished_at,
                               a.error_code) for a in attempts_of(task.pk)])  # fmt: skip


def _all_worked_since(workers: list[str], since: float, counter: Counter) -> bool:
    from datetime import UTC, datetime

    from taskqueue.models import TaskAttempt

    enqueue(counter())
    after = datetime.fromtimestamp(since, UTC)
    seen = set(
        TaskAttempt.objects.filter(started_at__gt=after, worker_name__in=workers)
        .values_list("worker_name", flat=True)
        .distinct()
    )
    return seen == set(workers)


def _check_victims(victims: list[int], stamps: dict, fleet: Fleet) -> list[str]:
    from taskqueue.models import Task

    problems = []
    runs, _, _ = read_ledger(fleet.ledger)
    for pk in victims:
        task = Task.objects.get(pk=pk)
        attempts = attempts_of(pk)
        first, last = attempts[0], attempts[-1]
        where = f"task #{pk}"
        if task.status != "completed" or last.outcome != "completed":
            problems.append(f"{where}: {task.status}, last attempt {last.outcome}")
            continue
        if (first.outcome, first.error_code) != ("failed", "worker_lost"):
            problems.append(f"{where}: h2's attempt ended {first.outcome} {first.error_code}")
        if last.worker_name.startswith("h2-") or task.result.get("worker") != last.worker_name:
            problems.append(f"{where}: completed by {last.worker_name}, result {task.result}")
        if task.attempts != len(attempts) or task.error_code:
            problems.append(f"{where}: attempts={task.attempts} rows={len(attempts)}")
        now = (task.updated_at, task.result, [(a.pk, a.outcome, a.finished_at, a.error_code)
                                              for a in attempts])  # fmt: skip
        if stamps.get(pk) != now:
            problems.append(f"{where}: changed after it completed elsewhere: {stamps.get(pk)}"
                            f" -> {now}")  # fmt: skip
        if runs[(pk, 1)] != 1 or runs[(pk, last.number)] != 1:
            problems.append(f"{where}: handler runs {runs[(pk, 1)]}, {runs[(pk, last.number)]}")
    return problems


def _old_jobs_left(job_ids: list[str]) -> dict[str, Any]:
    """What Redis holds of the superseded jobs: the reconciler deleted them; nothing may
    bring them back (a `finished` job with the stale result would be that outcome)."""
    from taskqueue import backend

    connection = backend.get_connection()
    left = {}
    for job_id in job_ids:
        fields = connection.hmget(f"rq:job:{job_id}", "status", "worker_name")
        if connection.exists(f"rq:job:{job_id}", f"rq:results:{job_id}"):
            left[job_id] = [None if f is None else f.decode() for f in fields]
    return left
