"""Fault drills with real processes: nothing accepted is lost, no task stays leased.

Workers here heartbeat every second with a 2 s margin (production: 30 s and 60 s), so a
dead worker is noticed in seconds instead of about two minutes; the mechanism is the same.
"""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from project.http import UVICORN_OPTIONS
from taskqueue.exceptions import InvalidTransition
from taskqueue.models import Task
from taskqueue.services import cancel_task, enqueue_task, reconcile_tasks
from tests.helpers import (
    ROOT,
    free_port,
    http_status,
    stop_process_group,
    subprocess_env,
    wait_for,
)
from tests.proxy import CuttableProxy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FAST = {"TASKQUEUE_JOB_MONITORING_INTERVAL": "1", "TASKQUEUE_HEARTBEAT_MARGIN": "2"}
# The reconciler judges heartbeats with the same settings as the workers it watches.
NO_GRACE = override_settings(
    TASKQUEUE={
        **settings.TASKQUEUE,
        "RECONCILE_GRACE": 0,
        "JOB_MONITORING_INTERVAL": 1,
        "HEARTBEAT_MARGIN": 2,
    }
)


def status_of(task: Task) -> str:
    return Task.objects.get(pk=task.pk).status


def witness(marker: str) -> list[str]:
    path = Path(settings.VAR_DIR) / "diagnostics" / marker
    return path.read_text().split() if path.exists() else []


def horse(marker: str) -> psutil.Process:
    """The work horse running the diagnostic task with this marker (it wrote its pid)."""
    line = wait_for(lambda: witness(marker)[:3], timeout=20)
    return psutil.Process(int(line[2]))


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"drill-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    (Path(settings.VAR_DIR) / "diagnostics" / name).unlink(missing_ok=True)


def reconcile_until(predicate, timeout: float = 30, margin: int = 2) -> None:
    """Run the reconciler like the cron process would (every 0.5 s here) until `predicate`,
    judging heartbeats like workers started with FAST (and HEARTBEAT_MARGIN=`margin`)."""
    fast = {"RECONCILE_GRACE": 0, "JOB_MONITORING_INTERVAL": 1, "HEARTBEAT_MARGIN": margin}

    def step() -> bool:
        with override_settings(TASKQUEUE={**settings.TASKQUEUE, **fast}):
            reconcile_tasks()
        return bool(predicate())

    wait_for(step, timeout=timeout, interval=0.5)


@pytest.mark.parametrize(("max_attempts", "final"), [(2, "completed"), (1, "failed")])
def test_a_sigkilled_worker_loses_no_task(worker_process, marker, max_attempts, final):
    payload = {"action": "sleep", "seconds": 3, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=max_attempts)
    worker = worker_process("--with-scheduler", **FAST)
    wait_for(lambda: status_of(task) == "leased")
    running = horse(marker)
    worker.kill()  # the whole worker: its parent and its work horse
    running.kill()
    started = time.monotonic()
    reconcile_until(lambda: status_of(task) != "leased", timeout=30)
    print(f"left leased {time.monotonic() - started:.1f}s after the kill")
    if max_attempts > 1:
        worker_process("--with-scheduler", **FAST)
    wait_for(lambda: status_of(task) == final, timeout=30)
    task.refresh_from_db()
    outcomes = [(a.outcome, a.error_code) for a in task.attempt_set.all()]
    assert outcomes[0] == ("failed", "worker_lost")
    assert len(outcomes) == max_attempts


def test_a_killed_horse_is_worker_lost_and_the_worker_goes_on(worker_process, marker):
    payload = {"action": "sleep", "seconds": 30, "marker": marker}
    doomed, _ = enqueue_task("diagnostic", payload, max_attempts=1)
    worker = worker_process()
    wait_for(lambda: status_of(doomed) == "leased")
    after, _ = enqueue_task("ping")
    horse(marker).kill()
    wait_for(lambda: status_of(doomed) == "failed")
    wait_for(lambda: status_of(after) == "completed")
    doomed.refresh_from_db()
    assert doomed.error_code == "worker_lost"
    assert worker.poll() is None  # the same worker, still running


def test_a_warm_shutdown_lets_the_running_task_finish(worker_process):
    task, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 2}, max_attempts=1)
    worker = worker_process()
    wait_for(lambda: status_of(task) == "leased")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert status_of(task) == "completed"


def _stop_in_a_stream(worker_process, how: str, tasks: int = 120) -> list[Task]:
    """Start a worker on a stream of short tasks and stop it (`how`: SIGTERM or SIGKILL)
    after a random number of them, at a random moment: when the worker ends a task it
    takes the next job in the same step (bookkeeping.finish), so it is often holding one
    it has not leased yet."""
    uncapped = {**settings.TASKQUEUE, "MAX_ACTIVE_PER_TYPE": 10_000}
    with override_settings(TASKQUEUE=uncapped):
        stream = [enqueue_task("ping")[0] for _ in range(tasks)]
    ids = [task.pk for task in stream]
    worker = worker_process(**FAST)
    goal = random.randint(3, tasks // 2)
    wait_for(lambda: Task.objects.filter(pk__in=ids, status="completed").count() >= goal)
    time.sleep(random.uniform(0, 0.02))
    if how == "SIGTERM":
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    else:
        worker.kill()  # its horse dies with it (PR_SET_PDEATHSIG)
        worker.wait(30)
    return list(Task.objects.filter(pk__in=ids))


def test_a_warm_shutdown_in_a_stream_gives_back_the_job_it_took(worker_process):
    """After each warm shutdown every task not run is queued with its job in its queue
    (none is held by the stopped worker: a job taken with the end of the last task is put
    back), and a new worker runs them all, once each. The worker stops within 30 s every
    time: a SIGTERM that landed while it wrote a log line between jobs used to be lost."""
    from taskqueue import backend

    for _ in range(8):
        left = [t for t in _stop_in_a_stream(worker_process, "SIGTERM") if t.status != "completed"]
        assert all(t.status == "queued" for t in left), [(t.pk, t.status) for t in left]
        states = backend.job_states([t.job_id for t in left])
        lost = [t.pk for t in left if states[t.job_id].status != "queued"]
        assert not lost, f"tasks whose job is in no queue after a warm shutdown: {lost}"
    worker_process(**FAST)
    wait_for(lambda: not Task.objects.exclude(status="completed").exists(), timeout=60)
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}


def test_a_sigkill_in_a_stream_loses_no_task(worker_process):
    """A worker SIGKILLed while it holds a job it took but has not leased: the task is
    queued with its job in no queue; the reconciler dispatches it again and a new worker
    runs it. Every task ends; none runs twice; only the one that was running can fail."""
    for _ in range(4):
        _stop_in_a_stream(worker_process, "SIGKILL")
        reconcile_until(lambda: not Task.objects.filter(status="leased").exists())
        with NO_GRACE:
            reconcile_tasks()  # the tasks whose job the killed worker held
    worker_process(**FAST)
    wait_for(lambda: not Task.objects.filter(status__in=["queued", "leased"]).exists(), 60)
    failed = list(Task.objects.exclude(status="completed").values_list("error_code", flat=True))
    assert set(failed) <= {"worker_lost", "redis_lost"} and len(failed) <= 4, failed
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}


def test_a_redis_restart_without_persistence_loses_no_task(worker_process, private_redis):
    private_redis.start()
    markers = [f"restart-{os.getpid()}-{n}" for n in range(20)]
    with override_settings(REDIS_URL=private_redis.url):
        tasks = [enqueue_task("diagnostic", {"marker": m})[0] for m in markers]
        private_redis.kill()
        private_redis.start()  # empty: every job is gone
        with NO_GRACE:
            assert reconcile_tasks() == {"dispatched": 20}
    worker_process(REDIS_URL=private_redis.url)
    wait_for(lambda: Task.objects.filter(status="completed").count() == 20, timeout=60)
    for task, marker in zip(tasks, markers, strict=True):
        assert witness(marker).count("start") == 1, marker  # exactly once
        assert Task.objects.get(pk=task.pk).attempts == 1


def test_posts_while_redis_is_down_are_accepted_and_run_once_it_is_back(
    worker_process, private_redis, django_user_model, tmp_path
):
    token = Token.objects.create(
        user=django_user_model.objects.create_superuser("ops", "", "x")
    ).key
    port = free_port()
    env = subprocess_env(REDIS_URL=private_redis.url)  # not started: Redis is down
    with (tmp_path / "web.log").open("w") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "project.asgi:application", "--port", str(port),
             *UVICORN_OPTIONS],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/system/maintenance/log-statistics"
        wait_for(lambda: http_status(url) == 401, timeout=30)
        statuses = [_post(url, token) for _ in range(5)]
        assert statuses == [202] * 5
        assert Task.objects.filter(status="queued").count() == 5
        private_redis.start()
        with override_settings(REDIS_URL=private_redis.url), NO_GRACE:
            assert reconcile_tasks() == {"dispatched": 5}
        worker_process(REDIS_URL=private_redis.url)
        wait_for(lambda: Task.objects.filter(status="completed").count() == 5, timeout=60)
    finally:
        stop_process_group(web)


def _post(url: str, token: str, timeout: float = 30) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=b"{}", method="POST")
    request.add_header("Authorization", f"Token {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_database_outage_during_a_task_leaves_nothing_stuck(worker_process):
    if connection.vendor != "postgresql":
        pytest.skip("the outage drill cuts a TCP connection to PostgreSQL (CI runs it)")
    s = connection.settings_dict
    proxy = CuttableProxy((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432)))
    through_proxy = f"postgres://{s['USER']}@127.0.0.1:{proxy.port}/{s['NAME']}"
    try:
        tasks = [
            enqueue_task("diagnostic", {"action": "sleep", "seconds": seconds}, max_attempts=1)[0]
            for seconds in (1, 6)
        ]
        # A margin longer than the outage: the worker is alive, only the database is away.
        worker_process(DATABASE_URL=through_proxy, **{**FAST, "TASKQUEUE_HEARTBEAT_MARGIN": "10"})
        wait_for(lambda: status_of(tasks[0]) == "leased")
        proxy.cut()  # the database is unreachable for the worker for 4 s
        time.sleep(4)
        proxy.restore()
        # The first task's end was written by the horse's retries, or the reconciler copies it.
        reconcile_until(
            lambda: not Task.objects.filter(status__in=["queued", "leased"]).exists(), margin=10
        )
        assert {status_of(t) for t in tasks} == {"completed"}
    finally:
        proxy.close()


@pytest.fixture
def lossy_database():
    """A proxy to PostgreSQL that can lose a reply (CuttableProxy.lose_reply_to), and the
    URL a worker reaches the test database by through it."""
    if connection.vendor != "postgresql":
        pytest.skip("the drill loses a reply of PostgreSQL's on its way (CI runs it)")
    s = connection.settings_dict
    proxy = CuttableProxy((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432)))
    try:
        yield proxy, f"postgres://{s['USER']}@127.0.0.1:{proxy.port}/{s['NAME']}"
    finally:
        proxy.close()


def attempts_of(task: Task) -> list[tuple[str, str]]:
    return list(task.attempt_set.order_by("number").values_list("outcome", "error_code"))


# The database commits a worker's statement and the connection drops before the worker
# reads the reply. The worker tries again, and the row already shows what it wrote, so the
# conditional statement refuses it: that refusal must be known for the worker's own write.


def test_an_end_committed_but_its_reply_lost_is_known_for_the_worker_s_own(
    worker_process, lossy_database
):
    """Taken for the reconciler's end, it left RQ's job unfinished: a task `retrying` that
    nothing would ever run again."""
    proxy, url = lossy_database
    proxy.lose_reply_to(b"diagnostic failure on request")  # the first attempt's end
    task, _ = enqueue_task("diagnostic", {"action": "fail"}, max_attempts=2)
    worker_process(DATABASE_URL=url, **FAST)
    wait_for(proxy.reply_lost.is_set, timeout=30)
    reconcile_until(lambda: status_of(task) in Task.TERMINAL_STATUSES, timeout=20)
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("failed", 2)
    assert attempts_of(task) == [("failed", "exception"), ("failed", "exception")]


def test_a_lease_committed_but_its_reply_lost_still_runs_the_task(worker_process, lossy_database):
    """Taken for a lease that failed, the job was failed in RQ and the leased attempt left to
    the reconciler, which ended it lost: a task that never ran, failed."""
    proxy, url = lossy_database
    name = f"lease-reply-lost-{os.getpid()}"
    proxy.lose_reply_to(name.encode())  # the lease names its worker
    task, _ = enqueue_task("ping", max_attempts=1)
    worker_process(name=name, DATABASE_URL=url, **FAST)
    wait_for(proxy.reply_lost.is_set, timeout=30)
    reconcile_until(lambda: status_of(task) in Task.TERMINAL_STATUSES, timeout=20)
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("completed", 1), task.error_message
    assert attempts_of(task) == [("completed", "")]


def test_an_end_and_next_lease_committed_but_their_reply_lost_run_the_next_task(
    worker_process, lossy_database
):
    """One statement ends an attempt and leases the task of the job taken with that end.
    Its reply lost, the worker let the leased task go and took its job as a new one, whose
    lease was refused (the task was leased already): a task leased that nobody ran, until
    the reconciler ended it lost."""
    proxy, url = lossy_database
    proxy.lose_reply_to(b'"pong": true')  # the first ping's end, with the second's lease
    first, second = (enqueue_task("ping", max_attempts=1)[0] for _ in range(2))
    worker_process(DATABASE_URL=url, **FAST)
    wait_for(proxy.reply_lost.is_set, timeout=30)
    reconcile_until(
        lambda: {status_of(first), status_of(second)} <= set(Task.TERMINAL_STATUSES), timeout=20
    )
    for task in (first, second):
        task.refresh_from_db()
        assert (task.status, task.attempts) == ("completed", 1), task.error_message
        assert attempts_of(task) == [("completed", "")]
    # The lost statement was the end with the lease: one statement, one timestamp for both.
    assert second.leased_at == first.finished_at


def test_a_stop_committed_but_its_reply_lost_leaves_the_worker_running(
    worker_process, lossy_database
):
    """The end of a stopped attempt was written once, unguarded: the error of a lost reply
    went up RQ's loop, and the worker quit."""
    proxy, url = lossy_database
    marker = f"stop-lost-{os.getpid()}"
    task, _ = enqueue_task(
        "diagnostic", {"action": "sleep", "seconds": 30, "marker": marker}, max_attempts=1
    )
    worker = worker_process(DATABASE_URL=url, **FAST)
    wait_for(lambda: "start" in witness(marker), timeout=30)
    proxy.lose_reply_to(b"Stopped while running.")  # the stopped attempt's end
    cancel_task(task, wait=0)
    wait_for(proxy.reply_lost.is_set, timeout=30)
    after, _ = enqueue_task("ping")
    wait_for(lambda: status_of(after) in Task.TERMINAL_STATUSES, timeout=30)
    assert worker.poll() is None
    assert (status_of(after), status_of(task)) == ("completed", "cancelled")
    assert attempts_of(Task.objects.get(pk=task.pk)) == [("stopped", "stopped")]


def test_cancel_racing_with_start_never_runs_a_cancelled_task(worker_process):
    worker_process()
    worker_process()
    raced = []
    for n in range(40):
        marker = f"race-{os.getpid()}-{n}"
        task, _ = enqueue_task("diagnostic", {"marker": marker, "action": "succeed"})
        time.sleep(random.uniform(0, 0.03))
        with contextlib.suppress(InvalidTransition):  # it completed first: that is allowed
            cancel_task(task, wait=0)
        raced.append((task, marker))
    wait_for(lambda: not Task.objects.filter(status__in=["queued", "leased"]).exists(), timeout=60)
    cancelled_before_start = 0
    for task, marker in raced:
        task.refresh_from_db()
        if task.status == "cancelled" and task.error_code == "":
            cancelled_before_start += 1
            assert witness(marker) == [], f"task {task.pk} was cancelled but its handler ran"
        else:
            assert task.status in ("completed", "cancelled")
    assert cancelled_before_start > 0


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- the bounds with the production settings (30 s heartbeats, 60 s margin, a pass every 15 s)


def test_a_cold_shutdown_mid_task_records_the_attempt_before_the_worker_exits(
    worker_process, marker
):
    payload = {"action": "sleep", "seconds": 60, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=1, timeout=120)
    worker = worker_process()  # the production defaults
    running = horse(marker)
    worker.send_signal(signal.SIGTERM)  # warm: it would wait for the task
    time.sleep(1.5)  # RQ ignores a second signal within 1 s of the first
    worker.send_signal(signal.SIGTERM)  # cold: stop the task, record it, exit
    assert worker.wait(15) != 0
    assert gone(running)
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "worker_lost")
    assert "shut down" in task.error_message


@pytest.mark.timeout(200)
def test_a_sigkilled_worker_leaves_its_task_leased_no_longer_than_the_documented_bound(
    worker_process, marker
):
    """JOB_MONITORING_INTERVAL (30 s) + HEARTBEAT_MARGIN (60 s), then the next pass of a
    reconciler run every 15 s as rqcron runs it: at most 105 s, with the defaults."""
    payload = {"action": "sleep", "seconds": 300, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=1, timeout=600)
    worker = worker_process()  # the production defaults
    running = horse(marker)
    killed = time.monotonic()
    worker.kill()  # the worker; PR_SET_PDEATHSIG takes its horse
    wait_for(lambda: gone(running), timeout=5)
    passes = 0
    while time.monotonic() - killed < 150:
        reconcile_tasks()  # the production settings: no override
        passes += 1
        if status_of(task) != "leased":
            break
        time.sleep(15)
    left = time.monotonic() - killed
    print(f"left leased {left:.0f} s after the kill, {passes} reconciler passes")
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "worker_lost")
    assert left <= 30 + 60 + 15 + 5
