"""enqueue_task, cancel_task and retry_task against a real Redis."""

import pytest
from django.db import transaction
from django.test import override_settings
from rq.job import Job

from taskqueue import backend
from taskqueue.exceptions import InvalidPayload, InvalidTransition, TaskNotFound, UnknownTaskType
from taskqueue.models import Task
from taskqueue.services import CANCELLED, cancel_task, enqueue_task, retry_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def job_ids(queue: str) -> list[str]:
    return backend.get_queue(queue).get_job_ids()


def test_enqueue_records_the_task_and_its_job_on_the_priority_queue() -> None:
    task, created = enqueue_task("ping", requested_by=None, source="test")
    assert created
    assert (task.status, task.queue, task.max_attempts, task.timeout) == (
        "queued",
        "default",
        1,
        30,
    )
    assert job_ids("default") == [f"task-{task.pk}"]
    job = Job.fetch(task.job_id, connection=backend.get_connection())
    assert (job.args, job.meta["task_type"]) == ((task.pk, 0), "ping")
    assert job.timeout == 30


def test_the_job_is_enqueued_only_when_the_transaction_commits() -> None:
    with transaction.atomic():
        task, _ = enqueue_task("ping")
        assert job_ids("default") == []
    assert job_ids("default") == [task.job_id]


def test_a_rolled_back_task_leaves_no_job() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue_task("ping")
        raise RuntimeError("rollback")
    assert Task.objects.count() == 0
    assert job_ids("default") == []


def test_priority_override_picks_the_queue_and_retries_are_configured() -> None:
    task, _ = enqueue_task("diagnostic", {"action": "succeed"}, priority=7)
    assert task.queue == "high"
    job = Job.fetch(task.job_id, connection=backend.get_connection())
    assert job.retries_left == 2


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_with_redis_down_the_task_is_kept_queued_without_a_job() -> None:
    task, created = enqueue_task("ping")
    assert created
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_bad_requests_raise_domain_errors() -> None:
    with pytest.raises(UnknownTaskType):
        enqueue_task("no_such_type")
    with pytest.raises(InvalidPayload) as caught:
        enqueue_task("diagnostic", {"action": "dance", "bogus": 1})
    assert set(caught.value.errors) == {"action", "bogus"}
    assert Task.objects.count() == 0


def test_an_identical_request_to_an_active_exclusive_task_returns_that_task() -> None:
    first, created = enqueue_task("diagnostic_exclusive", {"seconds": 1})
    again, created_again = enqueue_task("diagnostic_exclusive", {"seconds": 1})
    other, created_other = enqueue_task("diagnostic_exclusive", {"seconds": 2})
    assert (created, created_again, created_other) == (True, False, True)
    assert again.pk == first.pk
    assert other.pk != first.pk
    cancel_task(first)
    fresh, created_fresh = enqueue_task("diagnostic_exclusive", {"seconds": 1})
    assert created_fresh and fresh.pk != first.pk


def test_non_exclusive_identical_requests_are_separate_tasks() -> None:
    a, _ = enqueue_task("diagnostic", {"seconds": 1})
    b, _ = enqueue_task("diagnostic", {"seconds": 1})
    assert a.pk != b.pk


def test_cancelling_a_queued_task_removes_its_job() -> None:
    task, _ = enqueue_task("ping")
    assert cancel_task(task.pk) == CANCELLED
    assert Task.objects.get(pk=task.pk).status == "cancelled"
    assert job_ids("default") == []
    assert not Job.exists(task.job_id, connection=backend.get_connection())


def test_cancelling_a_finished_task_is_an_invalid_transition() -> None:
    task = Task.objects.create(task_type="ping", status="completed")
    with pytest.raises(InvalidTransition):
        cancel_task(task.pk)
    with pytest.raises(TaskNotFound):
        cancel_task(999999)


def test_retry_needs_a_terminal_task_and_links_the_new_one() -> None:
    task, _ = enqueue_task("ping")
    with pytest.raises(InvalidTransition):
        retry_task(task)
    cancel_task(task)
    new = retry_task(task.pk)
    assert new.pk != task.pk
    assert new.retry_of_id == task.pk
    assert new.status == "queued"
    assert Task.objects.get(pk=task.pk).status == "cancelled"
    assert job_ids("default") == [new.job_id]


@override_settings(TASKQUEUE={"USE_TASK_QUEUE": False})
def test_without_the_queue_the_task_runs_inline_and_is_recorded_the_same_way() -> None:
    task, _ = enqueue_task("ping")
    task.refresh_from_db()
    assert task.status == "completed"
    assert task.result["pong"] is True
    assert task.attempt_set.get().outcome == "completed"
    assert job_ids("default") == []


@override_settings(TASKQUEUE={"USE_TASK_QUEUE": False})
def test_inline_failures_use_every_attempt() -> None:
    task, _ = enqueue_task("diagnostic", {"action": "fail"})
    task.refresh_from_db()
    assert (task.status, task.attempts, task.error_code) == ("failed", 3, "exception")
    assert [a.outcome for a in task.attempt_set.all()] == ["failed"] * 3


def test_the_cap_is_counted_once_in_a_while_far_below_it_and_on_every_enqueue_near_it() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from taskqueue.exceptions import TooManyActiveTasks
    from taskqueue.services import lifecycle

    lifecycle._cap_seen.clear()
    counts = []
    with override_settings(TASKQUEUE={"MAX_ACTIVE_PER_TYPE": 10}):
        for _ in range(10):
            with CaptureQueriesContext(connection) as queries:
                enqueue_task("ping")
            counts.append(sum("count(*)" in q["sql"].lower() for q in queries))
        with pytest.raises(TooManyActiveTasks):
            enqueue_task("ping")
    # Counted on the first enqueue; trusted while under half the cap; then every time.
    assert counts == [1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert Task.objects.filter(task_type="ping").count() == 10
    # Tasks that end bring the tally down at the next count: far below again, trusted again.
    Task.objects.filter(task_type="ping").update(status="completed")
    with override_settings(TASKQUEUE={"MAX_ACTIVE_PER_TYPE": 10}):
        enqueue_task("ping")  # counts: 0 active
        with CaptureQueriesContext(connection) as queries:
            enqueue_task("ping")
    assert not [q for q in queries if "count(*)" in q["sql"].lower()]


def test_a_stop_goes_to_the_worker_that_leased_the_task_even_before_rq_marks_it_started() -> None:
    import json

    task, _ = enqueue_task("ping")
    Task.objects.lease(task.pk, dispatch=0, worker_name="worker-that-leased")
    pubsub = backend.get_connection().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("rq:pubsub:worker-that-leased")
    try:
        pubsub.get_message(timeout=1)
        assert cancel_task(task.pk) == "stopping"
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
    assert json.loads(message["data"]) == {"command": "stop-job", "job_id": task.job_id}
