"""Defects found by the scale-out drill (tests/drills/scale_out.py), reproduced on one host.

A partitioned worker looks, to the others, like a worker whose parent is SIGSTOPped: it
neither heartbeats nor records, while its work horse goes on and reports into the pipe.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from project.http import UVICORN_OPTIONS
from taskqueue import backend
from taskqueue.services import enqueue_task, reconcile_tasks
from tests.e2e.test_fault_drills import NO_GRACE
from tests.e2e.test_races import (
    markers,  # noqa: F401  (a fixture)
    new_marker,
    reconcile_once,
    row,
    starts,
    wait_terminal,
    worker_process,  # noqa: F401  (a fixture: FAST workers)
    workers_registered,
)
from tests.helpers import (
    ROOT,
    free_port,
    http_status,
    stop_process_group,
    subprocess_env,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("action", "final", "last"),
    [("sleep", "completed", "completed"), ("sleep_fail", "failed", "failed")],
)
def test_a_late_outcome_of_an_attempt_the_reconciler_ended_is_recorded_nowhere(
    worker_process,  # noqa: F811
    markers,  # noqa: F811
    action,
    final,
    last,
):
    """Found by the drill (a worker host partitioned mid-task): the reconciler ended the
    silent worker's attempt (`worker_lost`), deleted its job and dispatched the task as a
    new job. When the worker came back, the task row refused its horse's late outcome, but
    the worker still told RQ: the deleted job came back `finished` with the stale result
    (or `failed`). A late outcome must be recorded nowhere, RQ included; the worker then
    runs the new job like any other."""
    marker = new_marker("late")
    markers.append(marker)
    worker = worker_process()
    workers_registered(1)
    payload = {"action": action, "seconds": 1, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=2)
    wait_for(lambda: starts(marker), timeout=20)
    stale = row(task).job_id
    os.kill(worker.pid, signal.SIGSTOP)  # silent, as if cut off; its horse goes on
    try:
        time.sleep(3.5)  # past JOB_MONITORING_INTERVAL + HEARTBEAT_MARGIN (1 + 2 s here)
        actions = reconcile_once()
        assert actions.get("worker_lost") == 1, actions
    finally:
        os.kill(worker.pid, signal.SIGCONT)  # it reads the report its horse wrote meanwhile
    done = wait_terminal(task, timeout=20)
    assert done is not None, f"task {task.pk} is still {row(task).status}"
    attempts = [(a.number, a.outcome, a.error_code) for a in done.attempt_set.all()]
    assert (done.status, attempts[0], attempts[1][1]) == (final, (1, "failed", "worker_lost"), last)
    assert len(attempts) == 2
    assert len(starts(marker)) == 2  # at least once: the stale run, then the new one
    connection = backend.get_connection()
    assert not connection.exists(f"rq:job:{stale}", f"rq:results:{stale}"), (
        f"the late outcome reached RQ: job {stale} is {connection.hgetall(f'rq:job:{stale}')}"
    )
    for registry in (FinishedJobRegistry, FailedJobRegistry):
        assert stale not in registry(done.queue, connection=connection).get_job_ids()
    assert worker.poll() is None


@pytest.mark.timeout(120)
def test_requests_while_redis_does_not_answer_wait_out_one_timeout_not_one_each(
    private_redis, django_user_model, tmp_path
):
    """Found by the drill (Redis cut off from the web host: packets dropped, not refused):
    each Redis call on the request path (the token cache's generation, the throttle, the
    enqueue) waited out its own timeout, 2 s to connect or 10 s for a reply, times redis-py's
    retries: an enqueue POST took 6-14 s and a GET of a task 2 s for as long as the cut
    lasted. Here Redis hangs (SIGSTOP: connections are accepted, nothing answers). After
    one call times out, the web process's Redis calls fail at once for REDIS_RETRY_AFTER
    seconds: requests answer as with Redis down (202, the task waits for the reconciler)."""
    from taskqueue.models import Task
    from tests.e2e.test_fault_drills import _post

    private_redis.start()
    user = django_user_model.objects.create_superuser("ops", "", "x")
    token = Token.objects.create(user=user).key
    port = free_port()
    env = subprocess_env(REDIS_URL=private_redis.url, ENQUEUE_THROTTLE_RATE="1000/min")
    with (tmp_path / "web.log").open("w") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "project.asgi:application", "--port", str(port),
             *UVICORN_OPTIONS],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/api/system/maintenance"
        wait_for(lambda: http_status(f"{base}/tasks") == 401, timeout=30)
        assert _post(f"{base}/log-statistics", token) == 202  # Redis answers: connected
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            timings = []
            for _ in range(4):
                began = time.monotonic()
                try:
                    status = _post(f"{base}/log-statistics", token, timeout=25)
                except TimeoutError:
                    status = "no answer within 25 s"
                timings.append((status, round(time.monotonic() - began, 1)))
            began = time.monotonic()
            read = http_status(f"{base}/tasks", Authorization=f"Token {token}")
            timings.append((read, round(time.monotonic() - began, 1)))
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        assert [status for status, _ in timings] == [202] * 4 + [200], timings
        first, *others = [seconds for _, seconds in timings]
        assert first < 15, timings  # one reply timeout (10 s), then no more waiting
        assert max(others) < 1.0, timings
        # The four waiting without a job are the reconciler's to dispatch.
        with override_settings(REDIS_URL=private_redis.url), NO_GRACE:
            assert reconcile_tasks() == {"dispatched": 4}
        assert Task.objects.filter(status="queued").count() == 5
    finally:
        stop_process_group(web)
