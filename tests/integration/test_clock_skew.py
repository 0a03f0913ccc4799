"""Hosts whose clocks disagree: the engine's times come from the database's clock.

Found by the scale-out drill: with one worker host's clock 5 s off (libfaketime), the
reconciler ended live attempts `worker_lost` (it compared a heartbeat written with one
host's clock against another host's clock), and every wait in the stats was off by the
skew (negative for the host behind). Here one "host" (the worker's calls, or the
reconciler's) runs with `timezone.now` off by SKEW, more than the heartbeat's margin.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from unittest import mock

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from taskqueue.models import Task
from taskqueue.services import enqueue_task, reconcile_tasks
from taskqueue.services.stats import task_stats

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite serves one host: the engine keeps the process's clock there",
    ),
]

SKEW = timedelta(seconds=30 + 60 + 210)  # past the heartbeat's bound, and the lease expiry's
NO_GRACE = override_settings(TASKQUEUE={"RECONCILE_GRACE": 0})
_real_now = timezone.now


@contextmanager
def clock_off_by(offset: timedelta) -> Iterator[None]:
    """This process's wall clock, as Django reads it, `offset` off."""

    def now() -> datetime:
        return _real_now() + offset

    with mock.patch("django.utils.timezone.now", now):
        yield


def lease_and_beat(task: Task) -> Task:
    leased = Task.objects.lease(task.pk, dispatch=0, worker_name="skewed", heartbeats=True)
    assert leased is not None
    assert leased.heartbeat(attempt=leased.attempts) is False
    return leased


@NO_GRACE
@pytest.mark.parametrize(
    ("worker", "reconciler"),
    [(-SKEW, timedelta(0)), (timedelta(0), SKEW)],
    ids=["worker-behind", "reconciler-ahead"],
)
def test_a_heartbeating_attempt_is_alive_whatever_the_hosts_clocks_say(
    redis_db, worker, reconciler
) -> None:
    task, _ = enqueue_task("ping")
    with clock_off_by(worker):
        lease_and_beat(task)
    with clock_off_by(reconciler):
        assert reconcile_tasks() == {}
    task.refresh_from_db()
    assert (task.status, task.attempts) == ("leased", 1)


def test_waits_and_run_times_never_mix_two_hosts_clocks(redis_db) -> None:
    tasks = [enqueue_task("ping")[0] for _ in range(3)]
    for task, offset in zip(tasks, (-SKEW, timedelta(0), SKEW), strict=True):
        with clock_off_by(offset):
            leased = lease_and_beat(task)
            assert leased.complete(attempt=1, result={"pong": True})
    for task in tasks:
        task.refresh_from_db()
        attempt = task.attempt_set.get()
        assert task.created_at <= task.started_at == attempt.started_at
        assert attempt.started_at <= attempt.finished_at == task.finished_at
        assert task.started_at - task.created_at < timedelta(seconds=5)
    stats = task_stats()
    for figure in ("wait_seconds", "run_seconds"):
        assert 0 <= stats[figure]["ping"]["p50"] <= stats[figure]["ping"]["p95"] < 5, stats
