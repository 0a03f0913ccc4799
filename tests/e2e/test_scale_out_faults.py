"""Defects found by the scale-out drill (tests/drills/scale_out.py), reproduced on one host.

A partitioned worker looks, to the others, like a worker whose parent is SIGSTOPped: it
neither heartbeats nor records, while its work horse goes on and reports into the pipe.
"""

import os
import signal
import time

import pytest
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from taskqueue import backend
from taskqueue.services import enqueue_task
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
from tests.helpers import wait_for

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
