"""The state machine: every event from every state, duplicates and out-of-order events."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from taskqueue.models import Task

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
    first, second = make(S.QUEUED), make(S.QUEUED)
    assert first.lease(dispatch=0, worker_name="w") == 1
    assert first.complete(attempt=1, result={"n": 1}) is True
    assert prepared() == 2  # the lease and the completion
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler resetting sessions does
    assert second.lease(dispatch=0, worker_name="w") == 1
    assert second.complete(attempt=1, result={"n": 2}) is True
    assert Task.objects.get(pk=second.pk).result == {"n": 2}
