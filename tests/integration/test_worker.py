"""The execution wrapper and worker class, run by a real forking RQ worker (burst mode)."""

import itertools
import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from rq.job import Job

from taskqueue import backend
from taskqueue.conf import conf
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


def test_the_work_horse_keeps_one_database_connection_of_its_own(run_worker) -> None:
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
    assert len(pids) == 1  # the horse's own connection, opened once, not one per task
    assert pids != {backend_pid()["pid"]}  # and never the worker's (none crosses fork)


def test_the_worker_warm_up_leaves_nothing_behind(redis_db) -> None:
    from taskqueue.models import TaskAttempt
    from taskqueue.worker import warm_up

    warm_up()
    assert Task.objects.count() == 0
    assert TaskAttempt.objects.count() == 0


def _results(tasks: list[Task]) -> list[dict]:
    return [Task.objects.get(pk=t.pk).result for t in tasks]


def test_one_work_horse_runs_task_after_task(run_worker) -> None:
    tasks = [enqueue_task("diagnostic", {"action": "succeed"})[0] for _ in range(3)]
    run_worker()
    pids = {result["pid"] for result in _results(tasks)}
    assert len(pids) == 1 and pids != {os.getpid()}


def test_the_horse_is_replaced_after_its_quota_of_tasks(run_worker) -> None:
    tasks = [enqueue_task("diagnostic", {"action": "succeed"})[0] for _ in range(3)]
    with override_settings(TASKQUEUE={**settings.TASKQUEUE, "HORSE_MAX_TASKS": 2}):
        run_worker()
    first, second, third = (result["pid"] for result in _results(tasks))
    assert first == second != third


def test_the_horse_is_replaced_above_its_memory_limit(run_worker) -> None:
    """Each horse's RSS (a copy of the worker's, over 1 MiB) is over the limit once it has
    run a task: every task runs in a new one. Under the default limit, all in the first."""
    for limit, expected in ((1, 3), (conf.HORSE_MAX_RSS_MB, 1)):
        tasks = [enqueue_task("diagnostic", {"action": "succeed"})[0] for _ in range(3)]
        with override_settings(TASKQUEUE={**settings.TASKQUEUE, "HORSE_MAX_RSS_MB": limit}):
            run_worker()
        assert len({result["pid"] for result in _results(tasks)}) == expected, limit


def test_a_result_larger_than_a_pipe_holds_is_recorded(run_worker) -> None:
    from taskqueue.registry import register, unregister

    register("large_result")(lambda: {"text": "x" * 1_000_000})
    try:
        task, _ = enqueue_task("large_result")
        run_worker()
    finally:
        unregister("large_result")
    task.refresh_from_db()
    assert (task.status, len(task.result["text"])) == ("completed", 1_000_000)


def test_a_failure_is_recorded_with_its_traceback_and_rq_retries_it(run_worker, marker) -> None:
    task, _ = enqueue_task("diagnostic", {"action": "fail", "marker": marker}, max_attempts=2)
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.error_code, task.attempts) == ("failed", "exception", 2)
    assert "failure on request" in task.error_message and "Traceback" in task.error_traceback
    assert [(a.outcome, a.error_code) for a in task.attempt_set.all()] == [
        ("failed", "exception"),
        ("failed", "exception"),
    ]
    assert [line.split()[0] for line in witness(marker)] == ["start", "start"]


def test_a_second_exclusive_task_is_deferred_while_one_is_leased(run_worker) -> None:
    running, _ = enqueue_task("diagnostic_exclusive", {"action": "succeed"})
    Task.objects.lease(running.pk, dispatch=0, worker_name="elsewhere")
    other, _ = enqueue_task("diagnostic_exclusive", {"action": "sleep", "seconds": 0})
    run_worker()
    other.refresh_from_db()
    assert (other.status, other.attempts, other.dispatch) == ("queued", 0, 1)  # re-dispatched


def test_a_stop_for_the_running_attempt_marks_it_and_others_are_ignored(redis_db) -> None:
    """Stops arrive in RQ's pub/sub thread: they only mark the attempt and wake the worker."""
    import json

    from taskqueue.worker import Attempt, Worker

    task, _ = enqueue_task("ping")
    job = Job.fetch(task.job_id, connection=redis_db)
    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker._running = attempt = Attempt(job=job, queue=backend.get_queue("default"))

    def stop(job_id: str) -> None:
        worker.handle_payload(
            {"data": json.dumps({"command": "stop-job", "job_id": job_id}).encode()}
        )

    stop("task-999")
    assert not attempt.stop
    stop(task.job_id)
    assert attempt.stop
    assert os.read(worker._wake_r, 10) == b"!"
    # the attempt in hand (leased with the end of the running one) is seen too
    following, _ = enqueue_task("ping")
    worker._next = in_hand = Attempt(
        job=Job.fetch(following.job_id, connection=redis_db), queue=backend.get_queue("default")
    )
    stop(following.job_id)
    assert in_hand.stop


def test_a_warm_shutdown_swallowed_between_jobs_still_stops_the_loop(redis_db) -> None:
    """RQ's warm shutdown between jobs raises StopRequested from the signal handler into
    whatever the worker was doing; when that was writing a log line, logging swallows it
    (its handlers catch any Exception). The request must survive that: RQ's loop checks
    `_stop_requested` before every dequeue."""
    import logging

    from rq.exceptions import StopRequested

    from taskqueue.worker import Worker

    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker.register_birth()

    class Interrupted(logging.Handler):  # the signal lands inside a handler's emit
        def emit(self, record: logging.LogRecord) -> None:
            try:
                worker.request_stop(15, None)
            except StopRequested:
                self.handleError(record)  # what a stream handler's swallowing amounts to

    handler = Interrupted()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    logging.getLogger("tests.interrupted").addHandler(handler)
    try:
        logging.getLogger("tests.interrupted").warning("between jobs")
    finally:
        logging.getLogger("tests.interrupted").removeHandler(handler)
        for sig, action in saved.items():  # request_stop installs RQ's cold-stop handlers
            signal.signal(sig, action)
    assert worker._stop_requested


@pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"],
    reason="on PostgreSQL both take the statement's time",
)
def test_a_waiting_task_is_leased_in_the_statement_that_ends_the_last(run_worker) -> None:
    """With a job waiting, the end of one attempt and the lease of the next task are one
    statement (one commit): the one attempt finishes at the very time the next starts."""
    tasks = [enqueue_task("ping")[0] for _ in range(4)]
    run_worker()
    attempts = [Task.objects.get(pk=t.pk).attempt_set.get() for t in tasks]
    assert all(a.outcome == "completed" for a in attempts)
    for ended, started in itertools.pairwise(attempts):
        assert ended.finished_at == started.started_at, (ended.task_id, started.task_id)


def _in_hand(worker, redis_db) -> tuple[Task, object]:
    """Take the next job and lease its task as the end of an attempt does (`_next`)."""
    from taskqueue.backend import bookkeeping
    from taskqueue.worker import Attempt, _taking

    queue = backend.get_queue("default")
    found = bookkeeping.take(redis_db, _taking([queue], Job, redis_db))
    job, queue = worker.queue_class.taken(found, connection=redis_db)
    worker._taken = (job, queue)
    task = Task.objects.lease(job.args[0], dispatch=0, worker_name=worker.name, heartbeats=True)
    worker._next = Attempt(job=job, queue=queue, task=task)
    return task, job


def test_a_warm_shutdown_runs_the_attempt_in_hand_first(redis_db) -> None:
    """An attempt leased with the end of the last is in hand: its lease is committed, so a
    warm shutdown lets RQ's loop run it (and a SIGTERM does not raise StopRequested into the
    loop meanwhile); only then does the stop take effect."""
    from taskqueue.worker import Worker

    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker.register_birth()
    enqueue_task("ping")
    _, job = _in_hand(worker, redis_db)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.request_stop(15, None)  # would raise StopRequested if the worker were idle
    finally:
        for sig, action in saved.items():
            signal.signal(sig, action)
    assert worker._stopping and not worker._stop_requested
    taken = worker.dequeue_job_and_maintain_ttl(None)  # RQ's loop asks for the next job
    assert taken is not None and taken[0].id == job.id
    worker._next = None  # what running it does
    assert worker._stop_requested


def test_an_attempt_in_hand_when_the_loop_ends_otherwise_is_released(run_worker, redis_db) -> None:
    """A cold shutdown (or an error) ends the loop with an attempt leased but not started:
    its lease is taken back (the task queued as before, no attempt spent) and its job is at
    the head of its queue again; a new worker runs it."""
    from taskqueue.worker import Worker

    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker.register_birth()
    task, _ = enqueue_task("ping")
    later, _ = enqueue_task("ping")
    leased, job = _in_hand(worker, redis_db)
    assert leased.pk == task.pk
    worker._give_back()
    task.refresh_from_db()
    assert (task.status, task.attempts, task.started_at) == ("queued", 0, None)
    assert not task.attempt_set.exists()
    assert worker._next is None and worker._taken is None
    queue = backend.get_queue("default")
    assert queue.get_job_ids() == [job.id, later.job_id]
    run_worker()
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("completed", 1)


def test_an_attempt_in_hand_whose_stop_was_asked_ends_stopped_when_the_loop_ends(
    redis_db,
) -> None:
    from taskqueue.worker import Worker

    worker = Worker([backend.get_queue("default")], connection=redis_db)
    worker.register_birth()
    enqueue_task("ping")
    task, _ = _in_hand(worker, redis_db)
    task.request_stop()
    worker._next.stop = True
    worker._give_back()
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("cancelled", "stopped")
    assert task.attempt_set.get().outcome == "stopped"


def test_no_job_is_taken_with_an_end_while_workers_are_suspended(redis_db) -> None:
    """`rq suspend` stops a worker after its job: the end's script takes no next job (which
    would be leased in hand and run, and so on while work keeps coming)."""
    from rq.suspension import resume, suspend

    from taskqueue.backend import bookkeeping
    from taskqueue.worker import Worker, _taking

    queue = backend.get_queue("default")
    enqueue_task("ping")
    second, _ = enqueue_task("ping")
    worker = Worker([queue], connection=redis_db)
    worker.register_birth()
    found = bookkeeping.take(redis_db, _taking([queue], Job, redis_db))
    job, queue = worker.queue_class.taken(found, connection=redis_db)
    worker._mark_started(job, queue)
    job.ended_at = job.started_at
    job._result = {}
    suspend(redis_db)
    try:
        taking = _taking([queue], Job, redis_db)
        taken = bookkeeping.finish(
            worker, job, keys=worker._keys(queue), result_ttl=60, result={},
            execution=worker.execution, events=[], take=taking,
        )  # fmt: skip
    finally:
        resume(redis_db)
    assert taken is None
    assert queue.get_job_ids() == [second.job_id]
