"""The state machine: every event from every state, duplicates and out-of-order events."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from taskqueue.models import Task, statements

pytestmark = pytest.mark.django_db

S = Task.Status
ALL = list(S)


def make(status: str, *, attempts: int = 1, dispatch: int = 0) -> Task:
    if status == S.QUEUED:
        attempts = 0
    return Task.objects.create(
        task_type="ping", status=status, attempts=attempts, max_attempts=3, dispatch=dispatch
    )


def later() -> object:
    return timezone.now() + timedelta(seconds=30)


# event name → (how to apply it to a task, the states it applies from, the state it leads to)
EVENTS = {
    "lease": (
        lambda t: t.lease(dispatch=0, worker_name="w") is not None,
        {S.QUEUED, S.RETRYING},
        S.LEASED,
    ),
    "complete": (
        lambda t: t.complete(attempt=t.attempts, result={"ok": 1}),
        {S.LEASED},
        S.COMPLETED,
    ),
    "fail_retry": (
        lambda t: t.fail(
            attempt=t.attempts, error_code="exception", error_message="x", retry_at=later()
        ),
        {S.LEASED},
        S.RETRYING,
    ),
    "fail_final": (
        lambda t: t.fail(attempt=t.attempts, error_code="exception", error_message="x"),
        {S.LEASED},
        S.FAILED,
    ),
    "stopped": (lambda t: t.stopped(attempt=t.attempts), {S.LEASED}, S.CANCELLED),
    "cancel": (lambda t: t.cancel(), {S.QUEUED, S.RETRYING}, S.CANCELLED),
}


@pytest.mark.parametrize("start", ALL)
@pytest.mark.parametrize("event", list(EVENTS))
def test_transition_matrix(start: str, event: str) -> None:
    apply, allowed_from, target = EVENTS[event]
    task = make(start)
    if start == S.LEASED:
        task.attempt_set.create(number=1)
    applied = apply(task)
    stored = Task.objects.get(pk=task.pk)
    if start in allowed_from:
        assert applied is True
        assert stored.status == target
    else:
        assert applied is False
        assert stored.status == start


@pytest.mark.parametrize("terminal", Task.TERMINAL_STATUSES)
def test_terminal_states_never_move(terminal: str) -> None:
    task = make(terminal)
    for apply, _, _ in EVENTS.values():
        assert apply(task) is False
    assert task.request_stop() is False
    assert task.redispatch() is False
    assert Task.objects.get(pk=task.pk).status == terminal


def test_a_duplicate_completion_is_ignored_and_the_first_result_stays() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w")
    assert task.complete(attempt=1, result={"first": True}) is True
    assert task.complete(attempt=1, result={"second": True}) is False
    assert Task.objects.get(pk=task.pk).result == {"first": True}


def test_a_late_event_from_an_earlier_attempt_does_not_touch_the_current_one() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w1")
    task.fail(attempt=1, error_code="exception", error_message="boom", retry_at=later())
    task.lease(dispatch=0, worker_name="w2")
    assert task.attempts == 2
    # attempt 1's worker reports (again, late): it must not end attempt 2
    assert task.fail(attempt=1, error_code="worker_lost", error_message="late") is False
    assert task.complete(attempt=1, result={}) is False
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.attempts) == (S.LEASED, 2)


def test_a_stale_dispatch_cannot_lease() -> None:
    task = make(S.QUEUED)
    assert task.redispatch() is True
    stale = Task.objects.get(pk=task.pk)
    assert stale.lease(dispatch=0, worker_name="old job") is None
    assert stale.lease(dispatch=1, worker_name="new job") is not None


def test_two_leases_of_the_same_attempt_only_one_wins() -> None:
    task = make(S.QUEUED)
    copy = Task.objects.get(pk=task.pk)
    assert task.lease(dispatch=0, worker_name="a") is not None
    assert copy.lease(dispatch=0, worker_name="b") is None
    assert task.attempt_set.count() == 1


def test_lease_records_an_attempt_and_the_first_start() -> None:
    task = make(S.QUEUED)
    assert task.lease(dispatch=0, worker_name="worker-1") == 1
    stored = Task.objects.get(pk=task.pk)
    attempt = stored.attempt_set.get()
    assert (attempt.number, attempt.worker_name, attempt.outcome) == (1, "worker-1", "running")
    assert stored.started_at is not None
    first_start = stored.started_at
    stored.fail(attempt=1, error_code="exception", error_message="x", retry_at=later())
    stored.lease(dispatch=0, worker_name="worker-2")
    assert Task.objects.get(pk=task.pk).started_at == first_start


def test_ending_an_attempt_records_its_outcome() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w")
    task.fail(attempt=1, error_code="timeout", error_message="too slow", traceback="tb")
    attempt = task.attempt_set.get()
    assert (attempt.outcome, attempt.error_code, attempt.error_message) == (
        "failed",
        "timeout",
        "too slow",
    )
    stored = Task.objects.get(pk=task.pk)
    assert stored.finished_at is not None
    assert stored.error_traceback == "tb"


def test_request_stop_is_recorded_once_and_keeps_the_task_leased() -> None:
    task = make(S.LEASED)
    assert task.request_stop() is True
    assert task.request_stop() is False
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == S.LEASED
    assert stored.stop_requested_at is not None


@pytest.mark.django_db(transaction=True)  # the statements run in autocommit, as in workers
@pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"],
    reason="prepared statements are PostgreSQL's",
)
def test_the_hot_statements_are_prepared_once_and_survive_being_deallocated() -> None:
    from django.db import connection

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'taskq%%'")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what earlier tests on this session prepared
    statements._prepared.pop(connection.connection, None)  # and what this process knew of it
    first, second, third = make(S.QUEUED), make(S.QUEUED), make(S.QUEUED)
    assert first.lease(dispatch=0, worker_name="w") == 1
    assert first.complete(attempt=1, result={"n": 1}) is True
    assert prepared() == 2  # the lease and the completion
    second.lease(dispatch=0, worker_name="w")
    assert (
        second.complete_and_lease(
            attempt=1, result={"n": 2}, next_task=third.pk, dispatch=0, worker_name="w"
        )[1]
        is not None
    )
    assert prepared() == 3  # and the two in one
    assert third.complete(attempt=1, result={"n": 3}) is True
    second = make(S.QUEUED)
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler resetting sessions does
    assert second.lease(dispatch=0, worker_name="w") == 1
    assert second.complete(attempt=1, result={"n": 2}) is True
    assert Task.objects.get(pk=second.pk).result == {"n": 2}


def _stored(task: Task) -> tuple:
    stored = Task.objects.get(pk=task.pk)
    outcomes = list(stored.attempt_set.order_by("number").values_list("outcome", flat=True))
    return stored.status, stored.attempts, outcomes


def test_complete_and_lease_ends_one_attempt_and_leases_the_next_task() -> None:
    running, waiting = make(S.QUEUED), make(S.QUEUED)
    running.lease(dispatch=0, worker_name="w")
    ended, leased = running.complete_and_lease(
        attempt=1, result={"pong": True}, next_task=waiting.pk, dispatch=0, worker_name="w"
    )
    assert ended is True
    assert (leased.pk, leased.status, leased.attempts) == (waiting.pk, S.LEASED, 1)
    assert leased.heartbeat_at is not None  # the worker heartbeats it
    assert _stored(running) == (S.COMPLETED, 1, ["completed"])
    assert Task.objects.get(pk=running.pk).result == {"pong": True}
    assert running.finished_at == Task.objects.get(pk=running.pk).finished_at
    assert _stored(waiting) == (S.LEASED, 1, ["running"])
    assert waiting.attempt_set.get().worker_name == "w"


@pytest.mark.parametrize("next_status", [S.LEASED, S.CANCELLED, S.COMPLETED])
def test_complete_and_lease_leases_nothing_that_is_not_waiting(next_status: str) -> None:
    running, other = make(S.QUEUED), make(next_status)
    running.lease(dispatch=0, worker_name="w")
    ended, leased = running.complete_and_lease(
        attempt=1, result={}, next_task=other.pk, dispatch=0, worker_name="w"
    )
    assert (ended, leased) == (True, None)
    assert _stored(running)[0] == S.COMPLETED
    assert Task.objects.get(pk=other.pk).status == next_status


def test_complete_and_lease_with_a_stale_dispatch_or_a_missing_task_leases_nothing() -> None:
    running, waiting = make(S.QUEUED), make(S.QUEUED, dispatch=2)
    running.lease(dispatch=0, worker_name="w")
    assert running.complete_and_lease(
        attempt=1, result={}, next_task=waiting.pk, dispatch=1, worker_name="w"
    ) == (True, None)
    assert Task.objects.get(pk=waiting.pk).status == S.QUEUED
    again = make(S.QUEUED)
    again.lease(dispatch=0, worker_name="w")
    assert again.complete_and_lease(
        attempt=1, result={}, next_task=10**12, dispatch=0, worker_name="w"
    ) == (True, None)


def test_complete_and_lease_of_an_attempt_ended_elsewhere_still_leases_the_next() -> None:
    """The end is refused (the reconciler ended the attempt); the next task is the worker's
    all the same."""
    running, waiting = make(S.QUEUED), make(S.QUEUED)
    running.lease(dispatch=0, worker_name="w")
    Task.objects.get(pk=running.pk).fail(attempt=1, error_code="worker_lost", error_message="x")
    ended, leased = running.complete_and_lease(
        attempt=1, result={"late": True}, next_task=waiting.pk, dispatch=0, worker_name="w"
    )
    assert ended is False
    assert leased is not None and leased.pk == waiting.pk
    stored = Task.objects.get(pk=running.pk)
    assert (stored.status, stored.result, stored.error_code) == (S.FAILED, None, "worker_lost")


@pytest.mark.django_db(transaction=True)  # the IntegrityError must not spoil a test transaction
def test_complete_and_lease_of_an_exclusive_task_whose_type_runs_records_neither() -> None:
    from django.db import IntegrityError

    running = make(S.QUEUED)
    running.lease(dispatch=0, worker_name="w")
    busy = Task.objects.create(task_type="cleanup_runs", exclusive=True)
    busy.lease(dispatch=0, worker_name="elsewhere")
    waiting = Task.objects.create(task_type="cleanup_runs", exclusive=True)
    with pytest.raises(IntegrityError):
        running.complete_and_lease(
            attempt=1, result={}, next_task=waiting.pk, dispatch=0, worker_name="w"
        )
    assert _stored(running) == (S.LEASED, 1, ["running"])
    assert _stored(waiting) == (S.QUEUED, 0, [])
    assert running.complete(attempt=1, result={}) is True  # the end alone, as the worker does


def test_the_insert_stores_every_field_given_set_or_left_empty(django_user_model) -> None:
    """The enqueue's INSERT writes a field left None as NULL in the statement itself (one
    statement per set of empty fields): each kind of new task reads back as it was made."""
    user = django_user_model.objects.create_user("asker")
    earlier = Task.objects.create(task_type="ping")
    moment = timezone.now().replace(microsecond=0) + timedelta(minutes=5)
    made = [
        Task.objects.add(task_type="ping", payload={}),
        Task.objects.add(
            task_type="cleanup_runs",
            payload={"max_age_hours": 1},
            max_attempts=3,
            timeout=9,
            priority=1,
            queue="high",
            next_attempt_at=moment,
            dedup_key="k" * 64,
            exclusive=True,
            requested_by=user,
            source="api",
            retry_of=earlier,
        ),
        Task.objects.add(task_type="ping", payload={"n": 1}, requested_by=user),
    ]
    fields = [f.attname for f in Task._meta.concrete_fields if f.attname not in ("id",)]
    for task in made:
        stored = Task.objects.get(pk=task.pk)
        assert {f: getattr(stored, f) for f in fields} == {f: getattr(task, f) for f in fields}
    assert Task.objects.get(pk=made[1].pk).next_attempt_at == moment
    assert Task.objects.get(pk=made[0].pk).result is None


def test_release_takes_back_a_lease_as_if_it_had_not_been_taken() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w")
    assert task.release(attempt=1) is True
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.attempts, stored.started_at, stored.leased_at) == (
        S.QUEUED, 0, None, None,
    )  # fmt: skip
    assert not stored.attempt_set.exists()
    assert task.release(attempt=1) is False  # not leased any more
    assert task.lease(dispatch=0, worker_name="w") == 1  # and leased again as before


def test_release_after_a_failed_attempt_leaves_it_retrying_due_now() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w")
    task.fail(attempt=1, error_code="exception", error_message="x", retry_at=later())
    first_start = Task.objects.get(pk=task.pk).started_at
    task.lease(dispatch=0, worker_name="w")
    assert task.release(attempt=2) is True
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.attempts, stored.started_at) == (S.RETRYING, 1, first_start)
    assert stored.next_attempt_at is not None and stored.next_attempt_at <= timezone.now()
    assert list(stored.attempt_set.values_list("number", "outcome")) == [(1, "failed")]


def test_release_refuses_once_a_stop_was_asked_for_or_for_another_attempt() -> None:
    task = make(S.QUEUED)
    task.lease(dispatch=0, worker_name="w")
    assert task.release(attempt=2) is False
    task.request_stop()
    assert task.release(attempt=1) is False
    assert Task.objects.get(pk=task.pk).status == S.LEASED
