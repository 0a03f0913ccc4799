"""Race reproductions with real processes: the Task row must be the truth.

Each test asserts what a correct system does (a task runs at most once per attempt, its
recorded outcome is what really happened, nothing stays stuck), so it fails where the
race exists. Loops aim their timing at the moment the race is decided (an adaptive
offset around a handler's end) and count how often the racy case really happened, so
that a pass is never vacuous.

Workers heartbeat every second here (FAST), as in test_fault_drills.
"""

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psutil
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from taskqueue import backend
from taskqueue.exceptions import InvalidTransition
from taskqueue.models import Task
from taskqueue.services import CANCELLED, STOPPING, cancel_task, enqueue_task, reconcile_tasks
from tests.e2e.test_fault_drills import FAST
from tests.helpers import (
    ROOT,
    command_line,
    database_url,
    free_port,
    http_status,
    stop_process_group,
    subprocess_env,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TERMINAL = ("completed", "failed", "cancelled")


# --- helpers -------------------------------------------------------------------------------


def row(task: Task | int) -> Task:
    return Task.objects.get(pk=task if isinstance(task, int) else task.pk)


def events(marker: str, var_dir: Path | None = None) -> list[tuple[str, float, int]]:
    """The witness lines of a diagnostic task: (event, unix time, pid), in order."""
    path = Path(var_dir or settings.VAR_DIR) / "diagnostics" / marker
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(e, float(t), int(p)) for e, t, p in (line for line in lines if len(line) == 3)]


def starts(marker: str, var_dir: Path | None = None) -> list[tuple[str, float, int]]:
    return [line for line in events(marker, var_dir) if line[0] == "start"]


def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.001) -> object:
    """Like wait_for, but fast, and returns None instead of failing on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_terminal(task: Task, timeout: float = 15) -> Task | None:
    found = poll(lambda: (t := row(task)).status in TERMINAL and t, timeout, interval=0.005)
    return found or None


def rq_view(task: Task) -> dict:
    """RQ's view of the task's current job: status and registry membership."""
    connection = backend.get_connection()
    try:
        job = Job.fetch(task.job_id, connection=connection)
        status = job.get_status(refresh=False)
        status = status.value if status else None
    except NoSuchJobError:
        status = None
    finished = FinishedJobRegistry(task.queue, connection=connection)
    failed = FailedJobRegistry(task.queue, connection=connection)
    return {
        "status": status,
        "finished_registry": task.job_id in finished.get_job_ids(),
        "failed_registry": task.job_id in failed.get_job_ids(),
    }


def rq_settled(task: Task, timeout: float = 3) -> dict:
    """RQ's view once the job is no longer queued or started (or after `timeout`)."""
    view = {}

    def settled() -> bool:
        view.update(rq_view(task))
        return view["status"] not in ("queued", "started", "scheduled")

    poll(settled, timeout, interval=0.01)
    return view


def workers_registered(count: int) -> None:
    from rq.worker import Worker

    wait_for(lambda: len(Worker.all(connection=backend.get_connection())) >= count, timeout=30)


def new_marker(tag: str) -> str:
    return f"race-{tag}-{os.getpid()}-{time.monotonic_ns()}"


@pytest.fixture
def markers() -> Iterator[list[str]]:
    """Markers this test used; their witness files are removed afterwards."""
    used: list[str] = []
    yield used
    for name in used:
        (Path(settings.VAR_DIR) / "diagnostics" / name).unlink(missing_ok=True)


def reconcile_once(grace: int = 0) -> dict:
    """One pass, judging heartbeats with the settings the workers here run with (FAST)."""
    fast = {"JOB_MONITORING_INTERVAL": 1, "HEARTBEAT_MARGIN": 2, "RECONCILE_GRACE": grace}
    with override_settings(TASKQUEUE={**settings.TASKQUEUE, **fast}):
        return reconcile_tasks()


@pytest.fixture
def worker_process(worker_process):
    """Workers that heartbeat every second with a 2 s margin, as the reconciler here expects."""

    def start(*args: str, **env: str):
        return worker_process(*args, **{**FAST, **env})

    return start


class Aim:
    """An adaptive offset (seconds after a handler's planned end) at which to act.

    Each iteration reports whether acting came too early (the stop won) or too late (the
    completion won); the offset walks towards the moment the race is decided, with a
    little jitter, so that most iterations land in the racy window.
    """

    def __init__(self, start: float = 0.0, step: float = 0.002, jitter: float = 0.002):
        self.offset, self.step, self.jitter = start, step, jitter

    def next(self) -> float:
        return self.offset + random.uniform(-self.jitter, self.jitter)

    def early(self) -> None:
        self.offset += self.step

    def late(self) -> None:
        self.offset -= self.step


def sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


# --- race 1: a stop racing the completion -----------------------------------------------------


@pytest.mark.timeout(120)
def test_race1_stop_racing_completion_leaves_exactly_one_truth(worker_process, admin_user, markers):
    """Cancel a running task at the moment it completes: the row and RQ tell one story.

    Either the stop won (cancelled, `stopped`, no result, attempt `stopped`, RQ has no
    finished job) or the completion won (completed, `cancelled_by` unset, RQ finished it
    and has no failed job).
    """
    worker_process()
    workers_registered(1)
    seconds = 0.05
    aim = Aim()
    counts: Counter = Counter()
    kinds: Counter = Counter()
    violations: list[str] = []
    deadline = time.monotonic() + 80
    iterations = 0
    while iterations < 60 and time.monotonic() < deadline:
        iterations += 1
        marker = new_marker("r1")
        markers.append(marker)
        payload = {"action": "sleep", "seconds": seconds, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=1)
        started = poll(lambda m=marker: starts(m), timeout=10)
        assert started, f"iteration {iterations}: the handler of task {task.pk} never started"
        sleep_until(started[0][1] + seconds + aim.next())
        try:
            answer = cancel_task(task.pk, by=admin_user)
        except InvalidTransition:
            answer = "terminal"
        final = wait_terminal(task)
        assert final is not None, f"task {task.pk} still {row(task).status} after 15 s"
        view = rq_settled(final)
        attempt = final.attempt_set.get()
        ended = any(e == "end" for e, _, _ in events(marker))
        if answer == STOPPING and ended:
            counts["stopping answered, handler reached its end"] += 1
        stop_won = answer == CANCELLED and (
            final.status == "cancelled"
            and final.error_code == "stopped"
            and final.result is None
            and attempt.outcome == "stopped"
            and not view["finished_registry"]
            and view["status"] != "finished"
        )
        completion_won = answer == "terminal" and (
            final.status == "completed"
            and final.cancelled_by_id is None
            and attempt.outcome == "completed"
            and view["status"] == "finished"
            and not view["failed_registry"]
        )
        if stop_won:
            counts["stop won"] += 1
            aim.early()
        elif completion_won:
            counts["completion won"] += 1
            aim.late()
        else:
            counts["two truths"] += 1
            kinds[
                f"{final.status}, cancelled_by {'set' if final.cancelled_by_id else 'unset'}, "
                f"RQ {view['status']}{' in FailedJobRegistry' if view['failed_registry'] else ''}"
            ] += 1
            violations.append(
                f"task {final.pk} (cancel answered {answer!r}, handler ended: {ended}): "
                f"status={final.status} error_code={final.error_code!r} "
                f"cancelled_by={final.cancelled_by_id} result={'set' if final.result else None} "
                f"attempt={attempt.outcome}; RQ: {view}"
            )
            aim.late() if final.status == "completed" else aim.early()
    summary = f"{iterations} iterations: {dict(counts)}"
    print(summary)
    assert not violations, (
        f"{len(violations)} of {iterations} stop/completion races left two truths "
        f"({summary}; kinds: {dict(kinds)}); first: {violations[0]}"
    )
    # The aim walks to the moment the race is decided: both outcomes, often, mean it was hit.
    assert counts["stop won"] >= 10 and counts["completion won"] >= 10, f"not raced: {summary}"


# --- race 3: the reconciler between a horse's final failure and its worker ---------------------


@pytest.mark.timeout(120)
def test_race3_reconciler_while_the_worker_records_keeps_the_real_final_failure(
    worker_process, markers
):
    """A horse reports a non-retryable failure; before its worker records it a reconcile
    pass runs (the worker's PARENT process is SIGSTOPped in between, at a random moment of
    the handler). The handler's own error code must be recorded, the task `failed` after
    its one attempt, never retried as `worker_lost`."""
    worker = worker_process()
    workers_registered(1)
    counts: Counter = Counter()
    violations: list[str] = []
    deadline = time.monotonic() + 85
    iterations = 0
    while iterations < 50 and time.monotonic() < deadline:
        iterations += 1
        marker = new_marker("r3")
        markers.append(marker)
        seconds = random.uniform(0.05, 0.15)
        payload = {"action": "fail_final", "seconds": seconds, "marker": marker}
        max_attempts = 1 + iterations % 2  # 1: the code is lost; 2: also retried
        task, _ = enqueue_task("diagnostic", payload, max_attempts=max_attempts)
        started = poll(lambda m=marker: starts(m), timeout=10)
        assert started, f"iteration {iterations}: the handler of task {task.pk} never started"
        time.sleep(random.uniform(0, seconds * 0.8))
        os.kill(worker.pid, signal.SIGSTOP)  # the parent only
        try:
            failed = poll(lambda m=marker: "fail" in [e for e, _, _ in events(m)], timeout=10)
            assert failed, f"the handler of task {task.pk} did not fail"
            time.sleep(0.02)  # the horse reports, to a worker that cannot read it yet
            before = row(task).status
            if before == "leased":
                counts["racy (leased, horse gone, worker stopped)"] += 1
            actions = reconcile_once()
            counts.update(f"reconciler: {k}" for k in actions)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        final = wait_terminal(task)
        assert final is not None, f"task {task.pk} still {row(task).status} after 15 s"
        attempts = [(a.number, a.outcome, a.error_code) for a in final.attempt_set.all()]
        runs = len(starts(marker))
        ok = (
            final.status == "failed"
            and final.error_code == "diagnostic_final"
            and final.attempts == 1
            and attempts == [(1, "failed", "diagnostic_final")]
            and runs == 1
        )
        counts["correct" if ok else "lost the real failure"] += 1
        if not ok:
            violations.append(
                f"task {final.pk} (max_attempts={max_attempts}, row was {before} when the "
                f"reconciler ran, it did "
                f"{actions}): status={final.status} error_code={final.error_code!r} "
                f"attempts={attempts} handler runs={runs}"
            )
    summary = f"{iterations} iterations: {dict(counts)}"
    print(summary)
    assert not violations, (
        f"{len(violations)} of {iterations} final failures were not recorded as they "
        f"happened ({summary}); first: {violations[0]}"
    )
    assert counts["racy (leased, horse gone, worker stopped)"] >= 10, f"not raced: {summary}"


# --- race 4: a cancel lost to a retried failure -------------------------------------------------


@pytest.mark.timeout(120)
def test_race4_a_cancel_answered_is_never_lost_to_a_retry(worker_process, markers):
    """Cancel a task whose first attempt fails (retryable, no backoff) at random moments
    around that failure. Once cancel_task has answered (not InvalidTransition), no attempt
    may start, and the task ends `cancelled` (or, had its last attempt been running, with
    that attempt's own outcome). A stop must never end a later attempt as `stopped`.
    The reconciler runs (1 s grace) while waiting, as rqcron would."""
    worker_process()
    worker_process()
    workers_registered(2)
    seconds = 0.03
    aim = Aim(start=-0.005, step=0.003, jitter=0.004)
    counts: Counter = Counter()
    violations: dict[str, list[str]] = {}
    deadline = time.monotonic() + 80
    iterations = 0

    def violation(kind: str, text: str) -> None:
        violations.setdefault(kind, []).append(text)

    while iterations < 60 and time.monotonic() < deadline:
        iterations += 1
        marker = new_marker("r4")
        markers.append(marker)
        payload = {"action": "sleep_fail", "seconds": seconds, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=2)
        started = poll(lambda m=marker: starts(m), timeout=10)
        assert started, f"iteration {iterations}: the handler of task {task.pk} never started"
        sleep_until(started[0][1] + seconds + aim.next())
        called = time.time()
        try:
            answer = cancel_task(task.pk)
        except InvalidTransition:
            answer = "terminal"
        returned = time.time()
        counts[f"answered {answer}"] += 1
        final = None
        until = time.monotonic() + 8
        while time.monotonic() < until:
            final = wait_terminal(task, timeout=0.5)
            if final is not None:
                break
            reconcile_once(grace=1)
        attempts = list(row(task).attempt_set.all())
        first = attempts[0].outcome if attempts else None
        aim.early() if first == "stopped" else aim.late()
        if answer == "terminal":
            continue
        current = final or row(task)
        late = [t for e, t, _ in starts(marker) if t > returned]
        history = [
            (a.number, a.outcome, a.error_code, round(a.started_at.timestamp() - returned, 3))
            for a in attempts
        ]
        story = (
            f"task {task.pk}: cancel answered {answer!r} at +{returned - started[0][1]:.3f}s "
            f"(took {returned - called:.3f}s); now {current.status} "
            f"error_code={current.error_code!r}; attempts (number, outcome, code, start "
            f"relative to the answer)={history}"
            f"; handler starts after the answer: {len(late)}"
        )
        if final is None:
            violation("stuck", story)
        if late:
            violation("attempt started after the cancel answered", story)
        stale = [
            a for a in attempts if a.outcome == "stopped" and a.started_at.timestamp() > returned
        ]
        if stale:
            violation("a later attempt ended `stopped` by the earlier stop", story)
        if final is not None and final.status != "cancelled":
            last = attempts[-1]
            ran_when_cancelled = last.started_at.timestamp() < called
            if not (ran_when_cancelled and last.number == final.max_attempts and not late):
                violation(f"answered {answer!r} but ended {final.status}", story)
        if attempts and attempts[0].outcome == "failed":
            counts["racy (cancel asked as attempt 1 failed)"] += 1
    summary = f"{iterations} iterations: {dict(counts)}"
    print(summary)
    kinds = {kind: len(texts) for kind, texts in violations.items()}
    assert not violations, f"cancels were lost: {kinds} ({summary}); first: " + "; ".join(
        f"[{kind}] {texts[0]}" for kind, texts in violations.items()
    )
    assert counts["racy (cancel asked as attempt 1 failed)"] >= 5, f"not raced: {summary}"


@pytest.mark.timeout(90)
def test_race4_a_stale_stop_does_not_turn_a_later_attempts_failure_into_stopped(
    worker_process, markers
):
    """Deterministic: a stop requested during attempt 1 does not reach it (its worker's
    parent is SIGSTOPped; the attempt fails, retryable, and is retried on a second
    worker). Attempt 2 then fails for real while its worker's parent is SIGSTOPped too,
    and a reconcile pass runs. Correct: attempt 2 never runs (the cancel was answered), or
    its genuine failure is what is recorded; never `stopped` by attempt 1's stop."""
    marker = new_marker("r4s")
    markers.append(marker)
    worker = worker_process(**FAST)
    workers_registered(1)
    payload = {"action": "sleep_fail", "seconds": 0.5, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=2)
    wait_for(lambda: starts(marker), timeout=20)
    os.kill(worker.pid, signal.SIGSTOP)  # the worker cannot hear the stop, nor record
    try:
        answer = cancel_task(task.pk, wait=0)
        assert answer == STOPPING  # recorded on the row and sent; not confirmed
        assert row(task).stop_requested_at is not None
        time.sleep(1.0)  # attempt 1's handler fails meanwhile (its report waits in the pipe)
        early = reconcile_once()  # the worker's heartbeat is still fresh: the stop is resent
        assert set(early) <= {"stop_resent"}, early
        time.sleep(3.5)  # silent past JOB_MONITORING_INTERVAL + HEARTBEAT_MARGIN (FAST)
        actions = reconcile_once()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    time.sleep(2)  # the worker wakes, finds the attempt no longer its own, records nothing
    task.refresh_from_db()
    attempts = [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()]
    story = f"task {task.pk}: {task.status} {task.error_code!r} {attempts}; reconciler {actions}"
    assert actions == {"stopped": 1}, story
    assert (task.status, task.error_code, attempts) == (
        "cancelled",
        "stopped",
        [(1, "stopped", "stopped")],
    ), story
    assert len(starts(marker)) == 1, f"an attempt ran after the cancel was answered: {story}"


@pytest.mark.timeout(60)
def test_race4_an_attempt_the_reconciler_ends_leaves_no_job_behind(worker_process, markers):
    """Found by the soak: a whole worker is SIGKILLed mid-task and the task is cancelled
    meanwhile; the reconciler's pass ends the attempt `stopped` (the task `cancelled`), but
    RQ's own cleanup of the abandoned job, in that same pass, had scheduled it for a retry
    of RQ's own: later a worker ran that job (skipped) and RQ called a cancelled task's job
    `finished`. Once the reconciler ends an attempt, no job of it is left to run."""
    marker = new_marker("r4j")
    markers.append(marker)
    worker = worker_process(**FAST)
    workers_registered(1)
    task, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 5, "marker": marker})
    wait_for(lambda: starts(marker), timeout=20)
    os.killpg(worker.pid, signal.SIGKILL)  # the horse dies with it
    assert cancel_task(task.pk, wait=0) == STOPPING  # nobody can honour it: the reconciler will
    time.sleep(4.5)  # the heartbeat is silent past 1 + 2 s (FAST); RQ's TTL has expired too
    actions = reconcile_once()
    after_pass = backend.job_states([task.job_id])[task.job_id].status
    worker_process("--with-scheduler", **FAST)
    workers_registered(1)
    time.sleep(4)  # time for a retry RQ scheduled to be run (its backoff here is 0)
    later = backend.job_states([task.job_id])[task.job_id].status
    task.refresh_from_db()
    attempts = [(a.number, a.outcome) for a in task.attempt_set.all()]
    story = (
        f"task {task.pk}: {task.status} {attempts}; reconciler {actions}; RQ job status "
        f"after the pass {after_pass}, 4 s after a new worker started {later}"
    )
    assert (task.status, attempts) == ("cancelled", [(1, "stopped")]), story
    assert after_pass not in ("queued", "scheduled", "deferred", "started"), story
    assert later not in ("queued", "scheduled", "deferred", "started", "finished"), story
    assert len(starts(marker)) == 1, story


# --- race 5: a stop sent just after the lease -----------------------------------------------------


@pytest.mark.timeout(120)
def test_race5_a_stop_sent_right_after_the_lease_ends_the_task_at_once(worker_process, markers):
    """Cancel a 5 s task the instant its row shows `leased` (the worker leases before it
    forks, and before it knows its own lease): it must be `cancelled` within 2 s, every
    time, and its handler must not run to its end."""
    worker_process()
    workers_registered(1)
    counts: Counter = Counter()
    violations: list[str] = []
    deadline = time.monotonic() + 80
    iterations = 0
    while iterations < 50 and time.monotonic() < deadline and len(violations) < 3:
        iterations += 1
        marker = new_marker("r5")
        markers.append(marker)
        payload = {"action": "sleep", "seconds": 5, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=1)
        status = Task.objects.filter(pk=task.pk).values_list("status", flat=True)
        leased = poll(lambda s=status: s.first() == "leased", timeout=10, interval=0.0002)
        assert leased, f"task {task.pk} was never leased"
        answer = cancel_task(task.pk)
        sent = time.monotonic()
        counts["handler already started" if starts(marker) else "handler not started yet"] += 1
        final = wait_terminal(task, timeout=2)
        took = time.monotonic() - sent
        if final is not None and final.status == "cancelled":
            counts["cancelled within 2 s"] += 1
            continue
        final = wait_terminal(task, timeout=10)
        violations.append(
            f"task {task.pk}: cancel answered {answer!r}; not cancelled within 2 s; ended "
            f"{final.status if final else row(task).status} after {took:.1f}s+ "
            f"(error_code={final.error_code if final else ''!r}, witness={events(marker)})"
        )
    summary = f"{iterations} iterations: {dict(counts)}"
    print(summary)
    assert not violations, (
        f"{len(violations)} of {iterations} stops were not honoured at once ({summary}); "
        f"first: {violations[0]}"
    )
    assert iterations >= 50, f"only {iterations} iterations in the time allowed: {summary}"


# --- race 2: Redis restarted empty while a task runs ------------------------------------------


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(100)
def test_race2_redis_restarted_empty_while_a_task_runs_does_not_run_it_twice(
    worker_process, private_redis, markers
):
    """Two workers; Redis is killed and restarted without its data while an exclusive
    task's handler runs; the reconciler runs every 0.5 s (no grace). The running attempt
    must not be run again while its horse still runs, and its real outcome (completed)
    must be what the row records. The workers must survive the restart."""
    private_redis.start()
    env = {"REDIS_URL": private_redis.url, **FAST}
    workers = [worker_process(**env), worker_process(**env)]
    marker = new_marker("r2")
    markers.append(marker)
    reconciler_actions: Counter = Counter()
    with override_settings(REDIS_URL=private_redis.url):
        workers_registered(2)
        payload = {"action": "sleep", "seconds": 6, "marker": marker}
        task, _ = enqueue_task("diagnostic_exclusive", payload, max_attempts=2)
        first = poll(lambda: starts(marker), timeout=20)
        assert first, "the exclusive task never started"
        _, first_start, first_pid = first[0]
        wait_for(lambda: row(task).status == "leased", timeout=10)
        private_redis.kill()
        private_redis.start()  # empty: the job, its lock and the workers' keys are gone
        restarted = time.time()
        # The reconciler, as rqcron would run it (faster), while the first horse runs.
        while alive(first_pid) and time.time() < first_start + 15:
            reconciler_actions.update(reconcile_once())
            time.sleep(0.5)
        first_end = time.time()
        for _ in range(6):  # and a few seconds more
            reconciler_actions.update(reconcile_once())
            time.sleep(0.5)
        final = wait_terminal(task, timeout=20)
        alive_workers = [w.poll() is None for w in workers]
    runs = starts(marker)
    overlapping = [(t, pid) for _, t, pid in runs[1:] if t < first_end]
    task.refresh_from_db()
    attempts = [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()]
    story = (
        f"task {task.pk}: {task.status} error_code={task.error_code!r} attempts={attempts}; "
        f"handler starts: {[(round(t - first_start, 2), pid) for _, t, pid in runs]} "
        f"(first horse pid {first_pid} ran until +{first_end - first_start:.1f}s, Redis "
        f"restarted at +{restarted - first_start:.1f}s); reconciler: {dict(reconciler_actions)}; "
        f"workers alive: {alive_workers}"
    )
    print(story)
    assert not overlapping, f"a second run started while the first horse still ran: {story}"
    assert final is not None and final.status == "completed", f"not completed: {story}"
    assert attempts == [(1, "completed", "")], f"the real outcome was not recorded: {story}"
    assert all(alive_workers), f"a worker did not survive the Redis restart: {story}"


def test_redis_lost_between_the_pop_and_the_start_leaves_the_worker_running(
    worker_process, private_redis, markers
):
    """Redis goes (and comes back empty) after a worker popped a job and before it wrote
    RQ's start of it: the start is not written, and RQ's heartbeat of the execution it
    never made raised an AttributeError out of RQ's loop, so the worker quit mid-task (its
    attempt then ended lost by the reconciler, and run again beside the first). Seen once
    in CI's race2; made certain here by holding the task's row so that the lease waits
    while Redis is killed."""
    if connection.vendor != "postgresql":
        pytest.skip("the drill holds a row lock (CI runs it on PostgreSQL)")
    private_redis.start()
    marker = new_marker("popstart")
    markers.append(marker)
    with override_settings(REDIS_URL=private_redis.url):
        payload = {"action": "sleep", "seconds": 6, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=1)
        url = database_url()
        with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watch:
            holder.execute("SELECT id FROM taskqueue_task WHERE id = %s FOR UPDATE", [task.pk])
            worker = worker_process(REDIS_URL=private_redis.url, **FAST)
            wait_for(
                lambda: watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ).fetchone(),
                timeout=30,
            )  # the worker has popped the job, and its lease waits for the row
            private_redis.kill()
        # The lease goes on, and RQ's start finds no Redis; the horse runs; the first
        # heartbeat comes a second later, before Redis is back (empty).
        wait_for(lambda: starts(marker), timeout=20)
        time.sleep(2)
        private_redis.start()
        final = wait_terminal(task, timeout=20)
        time.sleep(1)  # a worker on its way out would be gone by now
    story = f"{row(task).status}, runs {starts(marker)}, worker exit {worker.poll()}"
    assert worker.poll() is None, f"the worker quit: {story}"
    assert final is not None and final.status == "completed", story
    assert len(starts(marker)) == 1, story


@pytest.mark.timeout(100)
def test_redis_down_when_a_task_ends_does_not_stop_the_worker(
    worker_process, private_redis, markers
):
    """Redis dies while a task runs and is still down when it ends (found by the soak: RQ's
    loop quits on a Redis error after a job). The worker records the task, waits for Redis,
    registers itself again in the empty Redis and runs the next task."""
    from rq.worker import Worker

    private_redis.start()
    worker = worker_process(REDIS_URL=private_redis.url, **FAST)
    marker = new_marker("redis-down")
    markers.append(marker)
    with override_settings(REDIS_URL=private_redis.url):
        workers_registered(1)
        payload = {"action": "sleep", "seconds": 1.5, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload)
        assert poll(lambda: starts(marker), timeout=20), "the task never started"
        private_redis.kill()
        recorded = wait_terminal(task, timeout=10)
        time.sleep(3)  # Redis still down after the job: the worker's bookkeeping fails
        alive_while_down = worker.poll() is None
        private_redis.start()
        registered = poll(lambda: Worker.all(connection=backend.get_connection()), timeout=20)
        after, _ = enqueue_task("diagnostic", {"action": "succeed"})
        final = wait_terminal(after, timeout=30)
    story = (
        f"recorded {recorded and recorded.status}; alive while Redis was down: {alive_while_down}"
    )
    assert recorded is not None and recorded.status == "completed", story
    assert alive_while_down and worker.poll() is None, f"the worker quit: {story}"
    assert registered, f"the worker never registered again in the restarted Redis: {story}"
    assert final is not None and final.status == "completed", f"next task: {final}; {story}"


@pytest.mark.timeout(60)
def test_a_reconciler_killed_mid_pass_holds_up_the_next_pass_seconds_not_minutes(redis_db):
    """Found by the soak: a worker SIGKILLed while its horse ran a reconcile pass left the
    reconciler's lock for its 300 s TTL, and 4,386 tasks whose jobs Redis had lost waited
    all that time. Here `manage.py reconcile_tasks` dispatches 1,000 such tasks and is
    SIGKILLed mid-pass: the lock it leaves must expire within 30 s, and the next pass,
    once it has, finishes the work."""
    from taskqueue.services.reconcile import LOCK

    old = timezone.now() - timedelta(minutes=5)
    Task.objects.bulk_create(
        [Task(task_type="ping", created_at=old, updated_at=old) for _ in range(1000)]
    )
    key = backend.LOCK_PREFIX + LOCK
    connection = backend.get_connection()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "reconcile_tasks"], cwd=ROOT, env=subprocess_env()
    )
    try:
        assert poll(lambda: connection.exists(key), timeout=20), "the pass never started"
        dispatched = poll(lambda: Task.objects.filter(dispatch=1).count() >= 20, timeout=20)
        process.kill()
    finally:
        process.wait()
    left = connection.ttl(key)
    done = Task.objects.filter(dispatch=1).count()
    story = f"killed after {done} of 1000 dispatches; the lock's TTL then: {left} s"
    assert dispatched and done < 1000, f"the pass was not killed half-way: {story}"
    assert 0 < left <= 30, story
    assert poll(lambda: not connection.exists(key), timeout=35), story
    actions = reconcile_once(grace=30)
    story += f"; next pass: {actions}"
    # The rest, and the one whose row was updated when the kill came before its enqueue.
    assert 1000 - done <= actions.get("dispatched", 0) <= 1001 - done, story
    assert not Task.objects.filter(dispatch=0).exists(), story


@pytest.mark.timeout(60)
def test_a_job_popped_by_a_worker_that_died_before_its_lease_is_dispatched_again(
    worker_process, markers
):
    """Found by the soak: a worker SIGKILLed between RQ's pop of a job and its lease left
    the job's hash `queued` in no queue, and the reconciler, trusting the hash, left the
    task `queued` for ever. The window is a few microseconds wide; the soak hit it once in
    20,000 tasks. Here the pop is RQ's own (`Queue.dequeue_any`, what the worker runs) in
    this process, which then never leases, as the dead worker did not: the next reconcile
    pass must dispatch the task again, and a worker complete it once."""
    from rq.queue import Queue

    marker = new_marker("popped")
    markers.append(marker)
    task, _ = enqueue_task("diagnostic", {"action": "succeed", "marker": marker})
    queue = backend.get_queue(task.queue)
    popped = Queue.dequeue_any([queue], None, connection=backend.get_connection())
    assert popped and popped[0].id == task.job_id
    actions = reconcile_once()
    worker_process(**FAST)
    final = wait_terminal(task, timeout=30)
    story = f"reconciler {actions}; task {final and final.status}; runs {len(starts(marker))}"
    assert actions == {"dispatched": 1}, story
    assert final is not None and final.status == "completed", story
    assert len(starts(marker)) == 1, story


def test_a_warm_shutdown_between_the_dequeue_and_the_start_finishes_the_task(
    worker_process, markers
):
    """Found when RQ's started bookkeeping moved after the horse's hand-off: a SIGTERM
    after the worker took a job but before it called itself busy made RQ raise
    StopRequested from inside the lease. The worker exited with the task `leased` (the
    reconciler ended it as `worker_lost` a heartbeat margin later) instead of finishing
    it. Here the test holds the task's row lock so that the worker waits in its lease,
    sends the SIGTERM there, then lets the lease through: the task must complete."""
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("waits for the worker's lock wait in pg_stat_activity")
    for _ in range(2):
        marker = new_marker("warm")
        markers.append(marker)
        task, _ = enqueue_task("diagnostic", {"action": "succeed", "marker": marker})
        with transaction.atomic():
            Task.objects.select_for_update().get(pk=task.pk)
            worker = worker_process(**FAST)

            def waits_in_its_lease() -> bool:
                with connection.cursor() as cursor:  # (a transaction's view is a snapshot)
                    cursor.execute("SELECT pg_stat_clear_snapshot()")
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                    return cursor.fetchone()[0] > 0

            wait_for(waits_in_its_lease, interval=0.02)
            worker.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        exited = worker.wait(30)
        final = row(task)
        story = f"exit {exited}; task {final.status} {final.error_code}; runs {len(starts(marker))}"
        assert exited == 0, story
        assert final.status == "completed", story
        assert len(starts(marker)) == 1, story


# --- race 6: retries that depend on one worker's scheduler -----------------------------------

BACKOFF_2S = override_settings(
    TASKQUEUE={
        **settings.TASKQUEUE,
        "TASK_TYPES": {"diagnostic": {"backoff": {"base": 2, "jitter": 0}}},
    }
)


def scheduler_locks() -> dict[str, str | None]:
    from taskqueue.registry import QUEUES

    connection = backend.get_connection()
    return {
        name: (v.decode() if (v := connection.get(f"rq:scheduler-lock:{name}")) else None)
        for name in QUEUES
    }


def wait_for_retry(task: Task, marker: str, timeout: float, final: str) -> tuple[bool, float]:
    """Run the reconciler every 0.5 s (1 s grace) until the task is `final`; (done, seconds)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if row(task).status == final:
            return True, time.monotonic() - began
        reconcile_once(grace=1)
        time.sleep(0.5)
    return False, time.monotonic() - began


@pytest.mark.timeout(100)
@pytest.mark.parametrize("kill", ["parent_and_horse", "whole_worker"])
def test_race6_a_retry_runs_when_the_worker_holding_the_scheduler_dies(
    worker_process, markers, kill
):
    """Worker A (started first) holds RQ's scheduler lock, B runs `--with-scheduler` too.
    A dies (SIGKILL: its parent and its horse; or the whole worker, its scheduler process
    as well, as when its machine dies) while running a task with a 2 s retry backoff. Once
    the reconciler has ended the attempt, the retry must complete on B within 30 s."""
    marker = new_marker("r6")
    markers.append(marker)
    with BACKOFF_2S:
        worker_a = worker_process("--with-scheduler", name=f"race6-a-{os.getpid()}", **FAST)
        wait_for(lambda: all(scheduler_locks().values()), timeout=20)
        payload = {"action": "sleep", "seconds": 3, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=2, timeout=30)
        first = wait_for(lambda: starts(marker), timeout=20)
        assert task.attempt_set.get().worker_name.startswith("race6-a-")
        worker_process("--with-scheduler", name=f"race6-b-{os.getpid()}", **FAST)
        workers_registered(2)
        locks = scheduler_locks()
        parent = psutil.Process(worker_a.pid)
        doomed = [parent, psutil.Process(first[0][2])]
        if kill == "whole_worker":
            doomed = [parent, *parent.children(recursive=True)]
        others = [p.pid for p in parent.children(recursive=True) if p not in doomed]
        for process in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        began = time.monotonic()
        wait_for(
            lambda: reconcile_once(grace=1) is not None and row(task).status != "leased",
            timeout=30,
            interval=0.5,
        )
        left_leased = time.monotonic() - began
        after = row(task)  # retrying, or already re-run: the reconciler retries at once
        assert after.status == "retrying" or after.attempts == 2, f"got {after.status}"
        done, took = wait_for_retry(task, marker, timeout=35, final="completed")
    task.refresh_from_db()
    rq = rq_view(task)
    attempts = [(a.number, a.outcome, a.error_code, a.worker_name) for a in task.attempt_set.all()]
    story = (
        f"task {task.pk}: {task.status} after {took:.0f}s (left leased {left_leased:.1f}s after "
        f"the kill); attempts={attempts}; RQ job {rq}; scheduler locks before the kill: {locks}; "
        f"A's processes left alive: {[p for p in others if alive(p)]}"
    )
    print(story)
    assert done, f"the retry did not complete within 35 s: {story}"


@pytest.mark.timeout(100)
def test_race6_a_retry_with_backoff_runs_without_any_worker_scheduler(worker_process, markers):
    """No worker runs RQ's scheduler (no `--with-scheduler`); the reconciler runs every
    0.5 s as rqcron would. A failed attempt with a 2 s backoff must be retried (its second
    attempt run and the task finished) within 30 s."""
    marker = new_marker("r6b")
    markers.append(marker)
    with BACKOFF_2S:
        worker_process(**FAST)
        worker_process(**FAST)
        workers_registered(2)
        payload = {"action": "sleep_fail", "seconds": 0.1, "marker": marker}
        task, _ = enqueue_task("diagnostic", payload, max_attempts=2)
        wait_for(lambda: row(task).status == "retrying", timeout=20)
        done, took = wait_for_retry(task, marker, timeout=30, final="failed")
    task.refresh_from_db()
    attempts = [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()]
    story = (
        f"task {task.pk}: {task.status} after {took:.0f}s, next_attempt_at "
        f"{task.next_attempt_at}; attempts={attempts}; handler runs={len(starts(marker))}; "
        f"RQ job {rq_view(task)}"
    )
    print(story)
    assert done and len(starts(marker)) == 2, f"the retry did not run within 30 s: {story}"


# --- race 7: the exclusive lock, and cancels racing the worker ----------------------------------

EXCLUSIVE_LOCK = backend.LOCK_PREFIX + "diagnostic_exclusive"


def lock_state() -> tuple[str | None, int | None]:
    """Who holds the exclusive type: (the leased task's job id, its attempt) or (None, None).

    Exclusivity lives in the database (one leased task per exclusive type, a unique index),
    and no Redis key may stand in for it any more.
    """
    assert backend.get_connection().get(EXCLUSIVE_LOCK) is None
    leased = Task.objects.filter(task_type="diagnostic_exclusive", status="leased").first()
    return (leased.job_id, leased.attempts) if leased else (None, None)


@pytest.mark.timeout(120)
def test_race7a_a_stop_racing_an_exclusive_completion_never_leaks_the_lock(worker_process, markers):
    """Cancel exclusive tasks at the moment they complete: once every task is terminal no
    `taskqueue:lock:diagnostic_exclusive` key remains, and one more exclusive task then
    completes within 10 s."""
    worker_process("--with-scheduler")
    worker_process("--with-scheduler")
    workers_registered(2)
    seconds = 0.05
    aim = Aim()
    counts: Counter = Counter()
    leak = None
    deadline = time.monotonic() + 75
    iterations = 0
    while iterations < 60 and time.monotonic() < deadline:
        iterations += 1
        marker = new_marker("r7a")
        markers.append(marker)
        payload = {"action": "sleep", "seconds": seconds, "marker": marker}
        task, _ = enqueue_task("diagnostic_exclusive", payload)
        started = poll(lambda m=marker: starts(m), timeout=10)
        assert started, f"iteration {iterations}: task {task.pk} never started: {lock_state()}"
        sleep_until(started[0][1] + seconds + aim.next())
        try:
            answer = cancel_task(task.pk)
        except InvalidTransition:
            answer = "terminal"
        final = wait_terminal(task)
        assert final is not None, f"task {task.pk} still {row(task).status} after 15 s"
        counts[final.status] += 1
        aim.early() if final.status == "cancelled" else aim.late()
        held = poll(lambda: lock_state()[0] is None, timeout=1, interval=0.01)
        if not held:
            holder, ttl = lock_state()
            leak = (
                f"task {final.pk} ended {final.status} (error_code={final.error_code!r}, cancel "
                f"answered {answer!r}, handler ended: "
                f"{any(e == 'end' for e, _, _ in events(marker))}) and left the lock held by "
                f"{holder!r} for {ttl} more seconds"
            )
            break
    summary = f"{iterations} iterations: {dict(counts)}"
    print(summary)
    marker = new_marker("r7a-after")
    markers.append(marker)
    after, _ = enqueue_task("diagnostic_exclusive", {"marker": marker})
    completed = poll(lambda: row(after).status == "completed", timeout=10, interval=0.05)
    assert leak is None, f"the exclusive lock leaked after {iterations} iterations: {leak}"
    assert completed, f"a later exclusive task did not complete in 10 s: {row(after).status}"
    assert counts["cancelled"] >= 10 and counts["completed"] >= 10, f"not raced: {summary}"


@pytest.mark.timeout(100)
def test_race7b_a_killed_worker_does_not_keep_the_exclusive_lock_from_the_retry(
    worker_process, markers
):
    """A whole worker is SIGKILLed while it runs an exclusive task (max_attempts=2); once
    the reconciler has ended the attempt, the retry must complete within 30 s on a new
    worker (the reconciler running every 0.5 s)."""
    marker = new_marker("r7b")
    markers.append(marker)
    worker = worker_process(**FAST)
    payload = {"action": "sleep", "seconds": 3, "marker": marker}
    task, _ = enqueue_task("diagnostic_exclusive", payload, max_attempts=2)
    first = wait_for(lambda: starts(marker), timeout=20)
    wait_for(lambda: row(task).status == "leased", timeout=10)
    worker.kill()
    psutil.Process(first[0][2]).kill()
    reconcile_until_left_leased = time.monotonic()
    wait_for(
        lambda: reconcile_once(grace=1) is not None and row(task).status != "leased",
        timeout=30,
        interval=0.5,
    )
    left_leased = time.monotonic() - reconcile_until_left_leased
    after_kill = row(task)
    lock_after_kill = lock_state()
    worker_process("--with-scheduler", **FAST)
    done, took = wait_for_retry(task, marker, timeout=30, final="completed")
    task.refresh_from_db()
    attempts = [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()]
    story = (
        f"task {task.pk}: {task.status} (dispatch {task.dispatch}) {took:.0f}s after a new worker "
        f"started; it left leased {left_leased:.1f}s after the kill, as {after_kill.status}; "
        f"attempts={attempts}; handler runs={len(starts(marker))}; lock after the kill "
        f"(holder, ttl)={lock_after_kill}, now={lock_state()}"
    )
    print(story)
    assert done, f"the retry did not complete within 30 s: {story}"


@pytest.mark.timeout(120)
def test_race7c_a_cancel_racing_the_worker_never_answers_5xx(worker_process, api):
    """DELETE /api/system/maintenance/tasks/{id} at random moments after enqueueing, with
    two live workers (tasks that succeed, and tasks that fail and are retried at once):
    the answer is 200, 202 or 409, never a server error."""
    from django.core.signals import got_request_exception

    api.raise_request_exception = False
    errors: list[str] = []

    def record(sender, request=None, **kwargs) -> None:
        import sys

        exc = sys.exc_info()[1]
        errors.append(f"{type(exc).__name__}: {exc}")

    got_request_exception.connect(record, weak=False)
    worker_process()
    worker_process()
    workers_registered(2)
    statuses: Counter = Counter()
    server_errors: list[str] = []
    deadline = time.monotonic() + 75
    iterations = 0
    try:
        while iterations < 600 and time.monotonic() < deadline:
            iterations += 1
            # A quarter at a random moment; the rest the instant a failed attempt shows `retrying`
            # (its horse records that before RQ re-queues the job and ends its execution).
            moment = random.choice(["random", "retrying", "retrying", "retrying"])
            action = "succeed" if moment == "random" and random.random() < 0.5 else "sleep_fail"
            payload = {"action": action, "seconds": random.uniform(0, 0.01)}
            task, _ = enqueue_task("diagnostic", payload, max_attempts=3)
            if moment == "random":
                time.sleep(random.uniform(0, 0.06))
            else:
                status = Task.objects.filter(pk=task.pk).values_list("status", flat=True)
                poll(lambda s=status: s.first() != "queued" and s.first() != "leased", 5, 0.0002)
            before = len(errors)
            response = api.delete(f"/api/system/maintenance/tasks/{task.pk}")
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                server_errors.append(
                    f"task {task.pk} ({action}, DELETE at a {moment} moment): "
                    f"{response.status_code}, {errors[before:] or response.content[:200]}, "
                    f"now {row(task).status}"
                )
    finally:
        got_request_exception.disconnect(record)
    summary = f"{iterations} DELETEs: {dict(statuses)}"
    print(summary)
    assert not server_errors, (
        f"{len(server_errors)} of {iterations} cancels answered a server error ({summary}); "
        f"first: {server_errors[0]}"
    )
    assert statuses[200] >= 5 and statuses[409] >= 5, f"not raced: {summary}"


# --- race 9: Ctrl-C on `make run` while a task runs ---------------------------------------------


@pytest.mark.timeout(110)
def test_race9_ctrl_c_on_make_run_leaves_no_work_horse_behind():
    """`make run` (scripts/run.py) runs a 60 s task; Ctrl-C (SIGINT to the launcher's
    group, as a terminal sends it): within 30 s no process of the system remains, the
    work horse included, and the launcher says it is waiting for the running task."""
    var_dir = tempfile.mkdtemp(prefix="tq-run-")  # short: unix socket paths are limited
    port = free_port()
    env = subprocess_env(VAR_DIR=var_dir, PORT=str(port))
    env.pop("REDIS_URL")  # the launcher starts its own embedded Redis
    log_path = Path(var_dir) / "run.log"
    log = log_path.open("w")
    launcher = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    processes: list[psutil.Process] = []
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/admin/login/") == 200, timeout=60)
        marker = new_marker("r9")
        with override_settings(REDIS_URL=f"unix://{var_dir}/redis/redis.sock"):
            payload = {"action": "sleep", "seconds": 60, "marker": marker}
            task, _ = enqueue_task("diagnostic", payload, max_attempts=1, timeout=120)
        running = wait_for(lambda: starts(marker, Path(var_dir)), timeout=30)
        horse = psutil.Process(running[0][2])
        processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(True)]
        if horse not in processes:
            processes.append(horse)
        described = {p.pid: (command_line(p) or "(exited)")[:80] for p in processes}
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        interrupted = time.monotonic()
        _, left = psutil.wait_procs(processes, timeout=30)
        took = time.monotonic() - interrupted
        log.flush()
        output = log_path.read_text()
        tail = output[output.find("Stopping") :][-1500:] if "Stopping" in output else output[-1500:]
        left_behind = [
            f"{p.pid} {'(the work horse) ' if p.pid == horse.pid else ''}{described[p.pid]}"
            for p in left
        ]
        print(f"{took:.0f}s after Ctrl-C; left: {left_behind}; task {row(task).status}")
        assert not left_behind, (
            f"30 s after Ctrl-C these still run: {left_behind}; the task is "
            f"{row(task).status}; the launcher said: {tail!r}"
        )
        assert re.search(r"wait\w*\b.*\brunning\b.*\btask", output, re.IGNORECASE), (
            f"the launcher never said it waits for the running task: {tail!r}"
        )
    finally:
        if launcher.poll() is None:
            stop_process_group(launcher)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        log.close()
        shutil.rmtree(var_dir, ignore_errors=True)
