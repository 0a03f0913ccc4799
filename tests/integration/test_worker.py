"""The execution wrapper and worker class, run by a real forking RQ worker (burst mode)."""

import os
import time
from pathlib import Path

import pytest
from django.conf import settings
from rq.job import Job

from taskqueue import backend
from taskqueue.models import Task
from taskqueue.services import cancel_task, enqueue_task, retry_task

pytestmark = pytest.mark.django_db(transaction=True)


def witness(marker: str) -> list[str]:
    path = Path(settings.VAR_DIR) / "diagnostics" / marker
    return path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> str:
    name = f"{request.node.name}-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    (Path(settings.VAR_DIR) / "diagnostics" / name).unlink(missing_ok=True)


def test_ping_runs_to_completed_with_its_result(run_worker) -> None:
    task, _ = enqueue_task("ping")
    run_worker()
    task.refresh_from_db()
    assert task.status == "completed"
    assert task.result["pong"] is True
    attempt = task.attempt_set.get()
    assert attempt.outcome == "completed"
    assert attempt.worker_name == task.result["worker"]
    assert task.started_at <= attempt.finished_at == task.finished_at


def test_a_failing_handler_is_retried_with_every_attempt_recorded(run_worker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "fail"})
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.attempts, task.error_code) == ("failed", 3, "exception")
    assert "diagnostic failure on request" in task.error_message
    assert "RuntimeError" in task.error_traceback
    assert [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()] == [
        (1, "failed", "exception"),
        (2, "failed", "exception"),
        (3, "failed", "exception"),
    ]
    failed = backend.get_queue("default").failed_job_registry.get_job_ids()
    assert failed == [task.job_id]


def test_an_overrunning_task_ends_failed_timeout_and_its_horse_is_gone(run_worker, marker) -> None:
    task, _ = enqueue_task(
        "diagnostic",
        {"action": "sleep", "seconds": 30, "marker": marker},
        timeout=1,
        max_attempts=1,
    )
    started = time.monotonic()
    run_worker()
    assert time.monotonic() - started < 15
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "timeout")
    assert task.attempt_set.get().error_code == "timeout"
    (start_line,) = witness(marker)
    horse_pid = int(start_line.split()[2])
    with pytest.raises(ProcessLookupError):
        os.kill(horse_pid, 0)


def test_a_cancelled_queued_task_never_runs(run_worker, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"marker": marker})
    cancel_task(task)
    run_worker()
    assert witness(marker) == []
    assert Task.objects.get(pk=task.pk).status == "cancelled"


def test_a_task_cancelled_after_rq_has_its_job_still_never_runs(run_worker, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"marker": marker})
    task.cancel()  # the database says cancelled, the job is still in Redis
    assert backend.get_queue("default").get_job_ids() == [task.job_id]
    run_worker()
    assert witness(marker) == []
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.attempts) == ("cancelled", 0)


def test_a_superseded_dispatch_does_not_run(run_worker, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"marker": marker})
    assert task.redispatch()  # e.g. the reconciler re-sent it: the first job is stale
    backend.dispatch(task)
    run_worker()
    assert len([line for line in witness(marker) if line.startswith("start")]) == 1
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("completed", 1)


def test_a_killed_work_horse_is_recorded_worker_lost_and_retried(run_worker, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "kill_once", "marker": marker}, max_attempts=2)
    run_worker()
    task.refresh_from_db()
    assert task.status == "completed"
    assert [(a.number, a.outcome, a.error_code) for a in task.attempt_set.all()] == [
        (1, "failed", "worker_lost"),
        (2, "completed", ""),
    ]
    assert "signal 9" in task.attempt_set.first().error_message


def test_a_horse_that_exits_with_no_attempts_left_fails_worker_lost(run_worker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "exit", "exit_code": 3}, max_attempts=1)
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.error_code, task.attempts) == ("failed", "worker_lost", 1)
    assert "exit code 3" in task.error_message


def test_a_manual_retry_runs_as_a_new_linked_task(run_worker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "fail"}, max_attempts=1)
    run_worker()
    new = retry_task(task.pk)
    run_worker()
    task.refresh_from_db()
    new.refresh_from_db()
    assert (task.status, task.attempts) == ("failed", 1)
    assert (new.status, new.attempts, new.retry_of_id) == ("failed", 1, task.pk)
    assert list(task.retries.all()) == [new]


def test_a_non_json_result_fails_the_task_clearly(run_worker) -> None:
    from taskqueue.registry import register, unregister

    register("returns_a_set", max_attempts=3)(lambda: {"value": {1, 2}})
    try:
        task, _ = enqueue_task("returns_a_set")
        run_worker()
    finally:
        unregister("returns_a_set")
    task.refresh_from_db()
    assert (task.status, task.error_code, task.attempts) == ("failed", "invalid_result", 1)


def test_a_task_whose_type_is_no_longer_registered_fails_without_retrying(run_worker) -> None:
    task = Task.objects.create(task_type="vanished", max_attempts=3)
    backend.get_queue("default").enqueue(
        backend.JOB_FUNCTION, job_id=task.job_id, args=(task.pk, 0)
    )
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "unknown_task_type")


def test_rq_keeps_results_only_for_the_configured_ttl(run_worker) -> None:
    task, _ = enqueue_task("ping")
    run_worker()
    job = Job.fetch(task.job_id, connection=backend.get_connection())
    ttl = backend.get_connection().ttl(job.key)
    assert 0 < ttl <= settings.TASKQUEUE["RESULT_TTL"]


def test_a_failed_attempt_waits_for_its_backoff_and_can_be_cancelled_meanwhile(run_worker) -> None:
    from django.test import override_settings

    backoff = {"diagnostic": {"backoff": {"base": 60, "jitter": 0}}}
    with override_settings(TASKQUEUE={**settings.TASKQUEUE, "TASK_TYPES": backoff}):
        task, _ = enqueue_task("diagnostic", {"action": "fail"})
        run_worker()
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("retrying", 1)
    scheduled = backend.get_queue("default").scheduled_job_registry
    assert scheduled.get_job_ids() == [task.job_id]
    retry_at = scheduled.get_scheduled_time(task.job_id)
    assert abs((retry_at - task.next_attempt_at).total_seconds()) < 2
    failed_at = task.attempt_set.get().finished_at
    assert 59 <= (task.next_attempt_at - failed_at).total_seconds() <= 61
    cancel_task(task)
    assert scheduled.get_job_ids() == []
    assert Task.objects.get(pk=task.pk).status == "cancelled"


def test_work_horses_reuse_the_worker_database_connection(run_worker) -> None:
    """No new database connection per task: each horse inherits the worker's."""
    from django.db import connection

    from taskqueue.registry import register, unregister

    if connection.vendor != "postgresql":
        pytest.skip("connection reuse applies to server databases; SQLite reopens its file")

    def backend_pid() -> dict:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return {"pid": cursor.fetchone()[0]}

    register("backend_pid")(backend_pid)
    try:
        tasks = [enqueue_task("backend_pid")[0] for _ in range(3)]
        run_worker()
    finally:
        unregister("backend_pid")
    pids = {Task.objects.get(pk=t.pk).result["pid"] for t in tasks}
    assert pids == {backend_pid()["pid"]}


def test_the_worker_warm_up_leaves_nothing_behind(redis_db) -> None:
    from taskqueue.models import TaskAttempt
    from taskqueue.worker import warm_up

    warm_up()
    assert Task.objects.count() == 0
    assert TaskAttempt.objects.count() == 0


@pytest.fixture
def horse_view():
    """The worker's side and the horse's side of one job, in this process (no fork)."""
    from taskqueue import execution, worker

    def lease_then_run(task: Task) -> dict:
        job = Job.fetch(task.job_id, connection=backend.get_connection())
        lease = worker.lease_before_fork(job, "the-worker")
        reader = None
        if lease is not None and lease.task is not None:
            reader = worker.open_report_pipe(lease)
            lease.report_reader = None  # one process here: the "horse" must not close it
        if lease is not None:
            execution.handoff[job.id] = lease
        leased = Task.objects.get(pk=task.pk)
        result = failure = None
        try:
            context = backend.JobContext(job)
            result = execution.run_attempt(task.pk, task.dispatch, context, context.task_type)
        except Exception as exc:  # re-raised once the worker's side has run, as RQ would
            failure = exc
        finally:
            execution.handoff.clear()
            if reader is not None:
                os.close(lease.report_fd)
        after_run = Task.objects.get(pk=task.pk)
        worker.record_after_horse(job, None, lease, reader, os.EX_OK)
        if failure is not None:
            raise failure
        return {"leased": leased, "after_run": after_run, "result": result, "lease": lease}

    return lease_then_run


def test_the_worker_leases_before_forking_and_the_horse_runs_that_lease(horse_view, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "succeed", "marker": marker})
    seen = horse_view(task)
    assert seen["lease"] is not None
    assert (seen["leased"].status, seen["leased"].attempts) == ("leased", 1)
    assert seen["after_run"].status == "leased"  # the horse only reported its outcome
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("completed", 1)
    assert [(a.number, a.worker_name) for a in task.attempt_set.all()] == [(1, "the-worker")]
    assert [line.split()[0] for line in witness(marker)] == ["start", "end"]


def test_a_lease_the_worker_could_not_take_is_never_run(horse_view, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "succeed", "marker": marker})
    Task.objects.get(pk=task.pk).cancel()  # cancelled after RQ handed the job to a worker
    seen = horse_view(task)
    assert seen["lease"].task is None
    assert seen["result"] == {backend.SKIPPED: "cancelled"}
    assert witness(marker) == []
    assert Task.objects.get(pk=task.pk).attempt_set.count() == 0


def test_exclusive_types_are_leased_by_the_horse_after_their_lock(horse_view, marker) -> None:
    task, _ = enqueue_task("diagnostic_exclusive", {"action": "succeed", "marker": marker})
    seen = horse_view(task)
    assert seen["lease"] is None
    assert seen["leased"].status == "queued"  # nothing leased before the lock
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("completed", 1)


def test_a_failure_the_horse_reports_is_recorded_by_the_worker(horse_view, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "fail", "marker": marker})
    with pytest.raises(RuntimeError, match="diagnostic failure on request"):
        horse_view(task)
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("retrying", "exception")
    assert task.next_attempt_at is not None
    assert "failure on request" in task.error_message and "Traceback" in task.error_traceback
    attempt = task.attempt_set.get()
    assert (attempt.outcome, attempt.error_code) == ("failed", "exception")


def test_a_result_too_large_for_the_pipe_is_recorded_by_the_horse(horse_view) -> None:
    from taskqueue.registry import register, unregister

    register("large_result")(lambda: {"text": "x" * 100_000})
    try:
        task, _ = enqueue_task("large_result")
        seen = horse_view(task)
    finally:
        unregister("large_result")
    assert seen["after_run"].status == "completed"  # written by the horse, not the worker
    task.refresh_from_db()
    assert (task.status, len(task.result["text"])) == ("completed", 100_000)


def test_the_report_is_read_even_if_a_process_the_handler_forked_holds_the_pipe() -> None:
    from taskqueue import worker

    reader, writer = os.pipe()
    grandchild_copy = os.dup(writer)  # as a process forked by the handler would hold it
    try:
        os.write(writer, b'{"status": "completed"}')
        os.close(writer)
        assert worker._read_report(reader) == {"status": "completed"}  # no wait for EOF
        empty_reader, empty_writer = os.pipe()
        assert worker._read_report(empty_reader) is None  # a horse that died silently
        os.close(empty_writer)
    finally:
        os.close(grandchild_copy)


def test_a_stop_sent_between_the_lease_and_the_horse_start_kills_the_horse(redis_db) -> None:
    """The worker leases before it forks: a stop sent then reaches it before RQ knows the
    job is running, and must still end the horse (RQ alone would ignore it)."""
    import json
    import subprocess

    from taskqueue import execution
    from taskqueue.worker import Worker

    task, _ = enqueue_task("ping")
    leased = Task.objects.lease(task.pk, dispatch=0, worker_name="w")
    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker._lease = execution.Lease(task=leased)
    message = {"data": json.dumps({"command": "stop-job", "job_id": task.job_id}).encode()}

    worker.handle_payload(message)  # no horse yet: remembered
    assert worker._stop_pending and worker._stopped_job_id == task.job_id
    horse = subprocess.Popen(["sleep", "30"])  # stands for the horse just forked
    worker._horse_pid = horse.pid
    worker._honour_pending_stop()
    assert horse.wait(timeout=5) == -9

    horse = subprocess.Popen(["sleep", "30"])  # a horse alive when the stop arrives
    worker._horse_pid, worker._stop_pending = horse.pid, False
    worker.handle_payload(message)
    assert horse.wait(timeout=5) == -9
