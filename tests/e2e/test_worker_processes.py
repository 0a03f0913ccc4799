"""Real `manage.py rqworker` processes: stop, exclusivity, and the shell command."""

import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from taskqueue.models import Task
from taskqueue.services import CANCELLED, STOPPING, cancel_task, enqueue_task, reconcile_tasks
from tests.e2e.test_fault_drills import witness
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def status_of(task: Task) -> str:
    return Task.objects.get(pk=task.pk).status


def test_stopping_a_running_task_ends_it_cancelled_stopped(worker_process) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 60}, max_attempts=3)
    worker_process()
    wait_for(lambda: status_of(task) == "leased")
    started = time.monotonic()
    assert cancel_task(task, by=None, wait=0) == STOPPING  # asked, not waited for
    assert cancel_task(task) == CANCELLED  # asking again is harmless; this one waits
    assert time.monotonic() - started < 1.5  # the worker kills the horse at once
    task.refresh_from_db()
    assert task.error_code == "stopped"
    assert task.attempts == 1  # a stopped task is not retried
    assert task.attempt_set.get().outcome == "stopped"


def test_two_exclusive_tasks_never_overlap(worker_process, tmp_path: Path) -> None:
    markers = [f"excl-{tmp_path.name}-{n}" for n in (1, 2)]
    tasks = [
        enqueue_task("diagnostic_exclusive", {"action": "sleep", "seconds": 1.5, "marker": m})[0]
        for m in markers
    ]
    worker_process("--with-scheduler")
    worker_process("--with-scheduler")
    wait_for(lambda: all(status_of(t) == "completed" for t in tasks), timeout=60)
    spans = []
    for marker in markers:
        path = Path(settings.VAR_DIR) / "diagnostics" / marker
        lines = path.read_text().split()
        path.unlink()
        spans.append((float(lines[1]), float(lines[4])))
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"exclusive runs overlapped: {spans}"


def test_the_shell_command_waits_for_the_result(worker_process, capsys) -> None:
    worker_process()
    call_command("enqueue_task", "ping", "--wait", "--wait-timeout", "30")
    out = capsys.readouterr().out
    assert '"status": "completed"' in out
    assert '"pong": true' in out


def test_the_shell_command_exits_non_zero_when_the_task_fails(worker_process, capsys) -> None:
    worker_process()
    with pytest.raises(CommandError) as caught:
        call_command(
            "enqueue_task", "diagnostic", "--set", "action=fail", "--wait", "--wait-timeout", "30"
        )
    assert caught.value.returncode == 1
    assert '"error_code": "exception"' in capsys.readouterr().out


def test_the_shell_command_explains_bad_input() -> None:
    with pytest.raises(CommandError, match=r"Registered types: .*ping"):
        call_command("enqueue_task", "nope")
    with pytest.raises(CommandError, match="Invalid payload"):
        call_command("enqueue_task", "diagnostic", "--set", "seconds=-1")
    with pytest.raises(CommandError, match="NAME=VALUE"):
        call_command("enqueue_task", "ping", "--set", "oops")


def test_tasks_wait_queued_while_no_worker_runs_then_complete(worker_process) -> None:
    task, _ = enqueue_task("ping")
    time.sleep(1)
    assert status_of(task) == "queued"
    worker_process()
    wait_for(lambda: status_of(task) == "completed")


def test_a_failure_retried_at_once_is_run_again_by_another_worker(worker_process) -> None:
    """RQ re-queues a retried job as its horse fails: the next attempt must find the task
    `retrying` already (a second worker may take the job before the first records)."""
    task, _ = enqueue_task("diagnostic", {"action": "fail"}, max_attempts=3)
    worker_process()
    worker_process()
    wait_for(lambda: status_of(task) == "failed", timeout=30)
    task.refresh_from_db()
    assert task.attempts == 3
    assert [a.outcome for a in task.attempt_set.all()] == ["failed"] * 3


def test_a_horse_dies_with_its_sigkilled_worker_and_the_reconciler_ends_the_attempt(
    worker_process, tmp_path: Path
) -> None:
    import psutil

    marker = f"orphan-{os.getpid()}-{time.monotonic_ns()}"
    payload = {"action": "sleep", "seconds": 30, "marker": marker}
    task, _ = enqueue_task("diagnostic", payload, max_attempts=1)
    worker = worker_process(TASKQUEUE_JOB_MONITORING_INTERVAL="1", TASKQUEUE_HEARTBEAT_MARGIN="2")
    line = wait_for(lambda: witness(marker)[:3], timeout=20)
    horse = int(line[2])
    assert psutil.pid_exists(horse)
    os.kill(worker.pid, signal.SIGKILL)  # the worker only: PR_SET_PDEATHSIG takes its horse
    wait_for(lambda: not psutil.pid_exists(horse), timeout=5)
    fast = {**settings.TASKQUEUE, "JOB_MONITORING_INTERVAL": 1, "HEARTBEAT_MARGIN": 2}
    with override_settings(TASKQUEUE={**fast, "RECONCILE_GRACE": 0}):
        assert reconcile_tasks() == {}  # its heartbeat is fresh: the worker may still record
        time.sleep(3.5)
        reconcile_tasks()
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "worker_lost")
