"""Throughput stages: N tasks through k workers, on the hosts or on loopback.

Each stage starts its workers, waits until all are registered and idle, suspends them
(`rq suspend`), enqueues its tasks (`soak_ping`: a `ping` that writes each handler run to
the ledger), resumes them and waits until every task is completed. The rate is measured
in the steady state, between the 10th and the 90th percentile of the tasks' ends, so that
neither the ramp-up nor the tail counts. Then each task must have run exactly once.
"""

import statistics
import time
from collections import Counter
from dataclasses import dataclass

from tests.drills.fleet import Fleet
from tests.drills.hosts import Host
from tests.soak.run import read_ledger


@dataclass
class Stage:
    where: str  # "hosts" or "loopback"
    workers: int
    tasks: int
    rate: float = 0.0  # tasks per second, steady state
    attempt_p50_ms: float = 0.0  # lease to end of attempt, as the worker records it
    wall: float = 0.0  # seconds from resume to the last task's end
    not_exactly_once: int = 0  # tasks with != 1 attempt, != 1 handler run, or not completed

    @property
    def per_worker(self) -> float:
        return self.rate / self.workers


def placement(fleet: Fleet, where: str, workers: int) -> list[Host | None]:
    """Where k workers run: spread over the three hosts (1-2 each), or all on loopback."""
    if where == "loopback":
        return [None] * workers
    hosts = [fleet.host(name) for name in ("h1", "h2", "h3")]
    return [hosts[n % 3] for n in range(workers)]


def run_stage(fleet: Fleet, where: str, workers: int, tasks: int, first_n: int) -> Stage:
    from rq.suspension import resume, suspend

    from taskqueue import backend
    from taskqueue.models import Task, TaskAttempt
    from taskqueue.services import enqueue_task

    stage = Stage(where, workers, tasks)
    names = [fleet.start_worker(host) for host in placement(fleet, where, workers)]
    fleet.wait_registered(names)
    connection = backend.get_connection()
    suspend(connection)
    time.sleep(1.5)  # each worker looks at the suspension once a second
    ids = [
        enqueue_task("soak_ping", {"n": first_n + n}, source=f"drill:{where}:{workers}")[0].pk
        for n in range(tasks)
    ]
    began = time.time()
    resume(connection)
    deadline = time.monotonic() + 120 + tasks / 5
    done = Task.objects.filter(pk__in=ids, status="completed")
    while done.count() < tasks and time.monotonic() < deadline:
        time.sleep(1)
    fleet.stop_workers(names)
    ends = sorted(t.timestamp() for t in done.values_list("finished_at", flat=True))
    if len(ends) >= 10:
        low, high = int(len(ends) * 0.1), int(len(ends) * 0.9)
        stage.rate = (high - low) / max(ends[high] - ends[low], 1e-6)
        stage.wall = ends[-1] - began
    durations = [
        (a.finished_at - a.started_at).total_seconds()
        for a in TaskAttempt.objects.filter(task_id__in=ids, finished_at__isnull=False)
    ]
    stage.attempt_p50_ms = statistics.median(durations) * 1000 if durations else 0
    stage.not_exactly_once = _not_exactly_once(fleet, ids)
    return stage


def _not_exactly_once(fleet: Fleet, ids: list[int]) -> int:
    """Tasks that did not complete with exactly one attempt and one handler run."""
    from taskqueue.models import Task

    runs, _, _ = read_ledger(fleet.ledger)
    per_task: Counter = Counter()
    for (task, _), count in runs.items():
        per_task[task] += count
    rows = Task.objects.filter(pk__in=ids).values_list("pk", "status", "attempts")
    found = {pk: (status, attempts) for pk, status, attempts in rows}
    bad = 0
    for pk in ids:
        status, attempts = found.get(pk, ("missing", 0))
        if status != "completed" or attempts != 1 or per_task[pk] != 1:
            bad += 1
    return bad
