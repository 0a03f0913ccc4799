"""Conformance: what a `django.tasks` backend must honour, on this engine with real workers.

The behaviours are those of Django's Tasks documentation and of the backport's own tests
(enqueue, results, errors, context, validation, signals, async), plus what this backend
promises on top (the mirror, retries, dedup, run_after, on-commit dispatch). Workers are
our worker class in burst mode (`run_worker`: a real fork per horse, real Redis).
"""

from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from taskqueue import backend as rq_backend
from taskqueue.backends import TaskQueueBackend
from taskqueue.models import Task as TaskRow
from taskqueue.services import cancel_task
from tests.example_app import tasks as example

try:
    from django.tasks import TaskResultStatus, default_task_backend, task, task_backends
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
except ImportError:
    from django_tasks import TaskResultStatus, default_task_backend, task, task_backends
    from django_tasks.exceptions import (
        InvalidTaskError,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_default_backend_is_this_engine():
    assert isinstance(task_backends["default"], TaskQueueBackend)
    assert default_task_backend.alias == "default"
    assert task_backends["default"].queues == {"high", "default", "low"}
    for feature in ("defer", "async_task", "get_result", "priority"):
        assert getattr(TaskQueueBackend, f"supports_{feature}") is True


def test_enqueue_records_a_task_and_answers_a_ready_result(redis_db):
    result = example.add.enqueue(2, b=3)
    row = TaskRow.objects.get(pk=int(result.id))
    assert (row.task_type, row.status) == ("tests.example_app.tasks.add", "queued")
    assert row.payload == {"args": [2], "kwargs": {"b": 3}}
    assert row.source == "django.tasks:default"
    assert result.status == TaskResultStatus.READY
    assert result.task == example.add
    assert (result.args, result.kwargs, result.backend) == ([2], {"b": 3}, "default")
    assert result.enqueued_at == row.created_at
    assert (result.started_at, result.finished_at, result.last_attempted_at) == (None,) * 3
    assert (result.is_finished, result.attempts, result.errors) == (False, 0, [])
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    job = rq_backend.get_queue("default").fetch_job(row.job_id)
    assert job is not None and job.args == (row.pk, row.dispatch)


def test_a_worker_runs_it_and_refresh_reads_the_outcome(run_worker):
    result = example.add.enqueue(2, 3)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.is_finished and result.attempts == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    row = TaskRow.objects.get(pk=int(result.id))
    assert result.worker_ids == [row.attempt_set.get().worker_name]
    assert row.result == {"return_value": 5}


def test_get_result_by_id_from_the_backend_and_from_the_task(run_worker):
    enqueued = example.add.enqueue(1, 1)
    run_worker()
    for found in (
        default_task_backend.get_result(enqueued.id),
        example.add.get_result(enqueued.id),
    ):
        assert (found.id, found.status, found.return_value) == (enqueued.id, "SUCCESSFUL", 2)
        assert found.task.func is example.add.func
    with pytest.raises(TaskResultMismatch):
        example.fail.get_result(enqueued.id)
    for missing in ("999999999", "abc", "", "1.5"):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(missing)


def test_a_result_of_one_of_our_own_types_that_is_no_django_task_does_not_exist(redis_db):
    from taskqueue.services import enqueue_task

    ping, _ = enqueue_task("ping")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(ping.pk))


def test_a_bare_decorator_with_star_args_keeps_args_and_kwargs(run_worker):
    result = example.echo.enqueue(1, "two", [3], four={"five": None})
    run_worker()
    result.refresh()
    assert result.return_value == {"args": [1, "two", [3]], "kwargs": {"four": {"five": None}}}
    assert result.args == [1, "two", [3]]


@pytest.mark.parametrize(
    ("task_", "args", "exception", "message"),
    [
        (example.fail, ("on purpose",), ValueError, "on purpose"),
        (example.exit_now, (), SystemExit, "exiting from a task"),
    ],
)
def test_an_exception_fails_the_result_with_its_class_and_traceback(
    run_worker, task_, args, exception, message
):
    result = task_.enqueue(*args)
    after = example.add.enqueue(1, 2)  # the same worker goes on after a SystemExit
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.is_finished
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert len(result.errors) == 1
    assert result.errors[0].exception_class is exception
    assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert result.started_at <= result.finished_at
    after.refresh()
    assert after.return_value == 3


def test_a_return_value_json_cannot_hold_fails_the_task_at_once(run_worker):
    result = example.returns_a_set.enqueue()
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert issubclass(result.errors[0].exception_class, TypeError)
    row = TaskRow.objects.get(pk=int(result.id))
    assert (row.error_code, row.attempts) == ("invalid_result", 1)


def test_the_context_has_the_result_id_and_the_attempt(run_worker):
    result = example.whoami.enqueue()
    run_worker()
    result.refresh()
    assert result.return_value == {"id": result.id, "attempt": 1}


def test_retries_follow_the_decorators_policy_and_count_attempts(run_worker):
    result = example.flaky.enqueue(fail_times=2)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3 == result.attempts
    assert [e.exception_class for e in result.errors] == [RuntimeError, RuntimeError]
    assert len(result.worker_ids) == 3
    exhausted = example.flaky.enqueue(fail_times=5)
    run_worker()
    exhausted.refresh()
    assert (exhausted.status, exhausted.attempts) == (TaskResultStatus.FAILED, 3)
    assert "attempt 3 fails on purpose" in exhausted.errors[-1].traceback


def test_an_async_function_runs(run_worker):
    result = example.add_async.enqueue(20, 22)
    run_worker()
    result.refresh()
    assert result.return_value == 42


def test_aenqueue_and_aget_result(run_worker):
    result = async_to_sync(example.add.aenqueue)(4, 5)
    run_worker()
    found = async_to_sync(default_task_backend.aget_result)(result.id)
    assert found.return_value == 9
    async_to_sync(result.arefresh)()
    assert result.status == TaskResultStatus.SUCCESSFUL


def test_queue_name_and_priority_are_the_tasks(redis_db):
    result = example.low_priority.enqueue()
    row = TaskRow.objects.get(pk=int(result.id))
    assert (row.queue, row.priority) == ("low", 10)
    assert rq_backend.get_queue("low").get_job_ids() == [row.job_id]
    urgent = example.add.using(priority=-5, queue_name="high").enqueue(1, 1)
    row = TaskRow.objects.get(pk=int(urgent.id))
    assert (row.queue, row.priority) == ("high", -5)


def test_run_after_schedules_the_first_attempt(run_worker):
    later = timezone.now() + timedelta(seconds=60)
    result = example.add.using(run_after=later).enqueue(1, 2)
    row = TaskRow.objects.get(pk=int(result.id))
    assert row.next_attempt_at == later
    queue = rq_backend.get_queue("default")
    assert queue.get_job_ids() == []
    assert queue.scheduled_job_registry.get_job_ids() == [row.job_id]
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.READY  # not before its time


def test_a_lost_scheduled_job_is_redispatched_for_its_time_not_at_once(redis_db):
    from taskqueue.services import reconcile_tasks

    later = timezone.now() + timedelta(seconds=300)
    result = example.add.using(run_after=later).enqueue(1, 2)
    TaskRow.objects.filter(pk=int(result.id)).update(created_at=timezone.now() - timedelta(hours=1))
    redis_db.flushdb()  # Redis lost the scheduled job
    reconcile_tasks()
    row = TaskRow.objects.get(pk=int(result.id))
    queue = rq_backend.get_queue("default")
    assert row.dispatch == 1 and queue.get_job_ids() == []
    assert queue.scheduled_job_registry.get_job_ids() == [row.job_id]


def test_it_is_dispatched_when_the_transaction_commits_and_not_if_it_rolls_back(redis_db):
    queue = rq_backend.get_queue("default")
    with transaction.atomic():
        kept = example.add.enqueue(1, 2)
        assert queue.get_job_ids() == []
    assert len(queue.get_job_ids()) == 1
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = example.add.enqueue(3, 4)
        raise RuntimeError("roll back")
    assert len(queue.get_job_ids()) == 1
    assert TaskRow.objects.filter(pk=int(dropped.id)).count() == 0
    assert TaskRow.objects.filter(pk=int(kept.id)).count() == 1


def test_exclusive_tasks_are_deduplicated(redis_db):
    first = example.one_at_a_time.enqueue("k")
    assert example.one_at_a_time.enqueue("k").id == first.id
    assert example.one_at_a_time.enqueue("other").id != first.id
    assert TaskRow.objects.get(pk=int(first.id)).exclusive is True


def test_a_running_task_is_running_and_a_cancelled_one_failed(run_worker):
    cancelled = example.add.enqueue(1, 1)
    assert cancel_task(int(cancelled.id)) == "cancelled"
    cancelled.refresh()
    assert cancelled.status == TaskResultStatus.FAILED
    leased = example.add.enqueue(2, 2)
    TaskRow.objects.lease(int(leased.id), dispatch=0, worker_name="somewhere")
    leased.refresh()
    assert leased.status == TaskResultStatus.RUNNING


def test_a_timeout_from_the_decorator_kills_the_attempt(run_worker):
    result = example.overruns.enqueue()
    row = TaskRow.objects.get(pk=int(result.id))
    assert row.timeout == 1
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert TaskRow.objects.get(pk=int(result.id)).error_code == "timeout"
    assert result.errors[0].exception_class_path == "taskqueue.exceptions.TaskError"


def test_signals_are_sent_by_the_enqueuing_and_the_running_process(
    run_worker, tmp_path, monkeypatch
):
    log = tmp_path / "signals.log"
    monkeypatch.setenv("EXAMPLE_SIGNAL_LOG", str(log))
    ok = example.add.enqueue(1, 2)
    bad = example.fail.enqueue("no")
    run_worker()  # the horse is a fork of this process: it writes to the same file
    lines = log.read_text().splitlines()
    assert lines[:2] == [f"enqueued {ok.id} READY", f"enqueued {bad.id} READY"]
    assert f"started {ok.id} RUNNING" in lines
    assert f"finished {ok.id} SUCCESSFUL" in lines
    assert f"finished {bad.id} FAILED" in lines


def test_the_maintenance_operations_are_django_tasks_too(run_worker):
    from maintenance import tasks as maintenance_tasks

    result = maintenance_tasks.health_check.enqueue()
    row = TaskRow.objects.get(pk=int(result.id))
    assert (row.task_type, row.queue, row.max_attempts) == ("health_check", "default", 2)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value["checks"]["database"]["status"] == "ok"
    dry = maintenance_tasks.cleanup_runs.enqueue(max_age_hours=48, dry_run=True)
    assert TaskRow.objects.get(pk=int(dry.id)).payload == {"max_age_hours": 48, "dry_run": True}
    assert dry.kwargs == {"max_age_hours": 48, "dry_run": True}
    with pytest.raises(InvalidTaskError, match="max_age_hours"):
        maintenance_tasks.cleanup_runs.enqueue(max_age_hours=0)
    with pytest.raises(InvalidTaskError, match="keyword arguments only"):
        maintenance_tasks.log_statistics.enqueue(24)


# --- validation: Django's errors, at definition or enqueue, never at run time ---------


def _local_function():
    def inner() -> None:
        return None

    return inner


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: task(_local_function()), "module level"),
        (lambda: task(takes_context=True)(example.add.func), "context"),
        (lambda: example.add.using(priority=101), "priority"),
        (lambda: example.add.using(priority=-101), "priority"),
        (lambda: example.add.using(queue_name="nowhere"), "nowhere"),
        (lambda: example.add.using(run_after=timezone.now().replace(tzinfo=None)), "aware"),
        (lambda: task(max_attempts=0)(example.add.func), "max_attempts"),
        (lambda: task(timeout=-1)(example.add.func), "timeout"),
        (lambda: task(backoff={"nope": 1})(example.add.func), "backoff"),
    ],
)
def test_an_invalid_task_is_refused_with_djangos_error(make, message):
    with pytest.raises(InvalidTaskError, match=message):
        make()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((timezone.now(),), {}, r"args\[0\] is a datetime.datetime"),
        ((), {"b": {1, 2}}, r"kwargs\['b'\] is a builtins.set"),
        ((), {"b": {1: "one"}}, "key 1, which JSON would make a string"),
        ((float("nan"),), {}, "nan"),
        ((object(),), {}, "builtins.object"),
    ],
)
def test_arguments_that_do_not_round_trip_through_json_are_refused_at_enqueue(
    redis_db, args, kwargs, message
):
    with pytest.raises(TypeError, match=message):
        example.add.enqueue(*args, **kwargs)
    assert TaskRow.objects.count() == 0


def test_tuples_become_lists_as_json_makes_them(run_worker):
    result = example.echo.enqueue((1, 2))
    assert result.args == [[1, 2]]
    run_worker()
    result.refresh()
    assert result.return_value["args"] == [[1, 2]]


def test_a_policy_in_settings_overrides_the_decorator(redis_db):
    path = "tests.example_app.tasks.add"
    with override_settings(TASKQUEUE={"TASK_TYPES": {path: {"max_attempts": 4, "timeout": 9}}}):
        result = example.add.enqueue(1, 1)
    row = TaskRow.objects.get(pk=int(result.id))
    assert (row.max_attempts, row.timeout) == (4, 9)


def test_inline_without_the_queue_the_result_is_final_at_once(redis_db):
    with override_settings(TASKQUEUE={"USE_TASK_QUEUE": False}):
        result = example.add.enqueue(6, 7)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 13 and result.attempts == 1


def test_the_marker_task_runs_in_a_work_horse_not_in_this_process(run_worker, tmp_path):
    import os

    marker = tmp_path / "pid"
    example.write_marker.enqueue(str(marker))
    run_worker()
    assert Path(marker).read_text() != str(os.getpid())


def test_asyncio_callers_can_enqueue_from_a_running_loop(run_worker):
    async def caller() -> str:
        result = await example.add.aenqueue(1, 1)
        return result.id

    result_id = async_to_sync(caller)()
    run_worker()
    assert default_task_backend.get_result(result_id).return_value == 2


def test_a_queue_the_workers_do_not_listen_to_is_a_check_error():
    from django.core import checks

    tasks = {"default": {"BACKEND": "taskqueue.backends.TaskQueueBackend",
                         "QUEUES": ["default", "emails"]}}  # fmt: skip
    with override_settings(TASKS=tasks):
        errors = [e for e in checks.run_checks() if e.id == "taskqueue.E004"]
    assert len(errors) == 1
    assert "['emails']" in errors[0].msg


def test_a_malformed_payload_fails_its_attempt_and_the_worker_goes_on(run_worker):
    bad = example.add.enqueue(1, 2)
    TaskRow.objects.filter(pk=int(bad.id)).update(payload={"args": 5, "kwargs": [], "x": 1})
    good = example.add.enqueue(2, 2)
    run_worker()
    row = TaskRow.objects.get(pk=int(bad.id))
    assert (row.status, row.error_code, row.attempts) == ("failed", "invalid_payload", 1)
    good.refresh()
    assert good.return_value == 4
