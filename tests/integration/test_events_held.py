"""Events the worker keeps for its own pipelines (`events.held`): sent once, never lost;
a new task's announcement."""

import json
import time

import pytest

from taskqueue import backend, events
from taskqueue.models import Task
from taskqueue.services import enqueue_task

pytestmark = pytest.mark.django_db(transaction=True)


def subscribed(task: Task):
    pubsub = backend.get_connection().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.channel(task.pk))
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    return pubsub


def received(pubsub, wait: float = 0.5) -> list[str]:
    statuses, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message:
            statuses.append(json.loads(message["data"])["status"])
    return statuses


def test_held_events_go_out_in_the_callers_pipeline_and_only_then(redis_db) -> None:
    task = Task.objects.create(task_type="ping")
    pubsub = subscribed(task)
    with events.held():
        assert task.lease(dispatch=0, worker_name="w") is not None
        assert received(pubsub, wait=0.2) == []  # kept, not published
        with backend.get_connection().pipeline() as pipeline:
            events.send_held(pipeline)
            pipeline.execute()
        assert received(pubsub) == ["leased"]
    assert received(pubsub, wait=0.2) == []  # sent once


def test_held_events_left_unsent_are_published_on_the_way_out(redis_db) -> None:
    task = Task.objects.create(task_type="ping")
    pubsub = subscribed(task)
    with events.held():
        task.lease(dispatch=0, worker_name="w")
        task.complete(attempt=1, result={"pong": True})
    assert received(pubsub) == ["leased", "completed"]


def test_a_forked_horse_publishes_its_own_events_at_once(redis_db) -> None:
    task = Task.objects.create(task_type="ping")
    pubsub = subscribed(task)
    with events.held():
        events.forget_held()  # what the horse does after the fork
        task.lease(dispatch=0, worker_name="w")
        assert received(pubsub) == ["leased"]


def psubscribed():
    pubsub = backend.get_connection().pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"{events.CHANNEL_PREFIX}*")
    pubsub.get_message(timeout=1)
    return pubsub


@pytest.mark.parametrize("queued", [True, False])
def test_a_new_task_is_announced_once_queued_or_run_inline(redis_db, settings, queued) -> None:
    settings.TASKQUEUE = {**settings.TASKQUEUE, "USE_TASK_QUEUE": queued}
    pubsub = psubscribed()
    enqueue_task("ping")
    expected = ["queued"] if queued else ["queued", "leased", "completed"]
    assert received(pubsub) == expected


def test_a_stream_s_events_ride_on_the_worker_s_scripts_each_once_in_order(run_worker) -> None:
    """Through a worker that ends one attempt and leases the next in one statement, each
    task's `leased` and `completed` go out (with the next start's script, or the pop of
    the dequeue that finds the queues empty): all of them, once each, in order."""
    pubsub = backend.get_connection().pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"{events.CHANNEL_PREFIX}*")
    pubsub.get_message(timeout=1)
    tasks = [enqueue_task("ping")[0] for _ in range(5)]
    run_worker()
    seen: dict[int, list[str]] = {task.pk: [] for task in tasks}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message:
            event = json.loads(message["data"])
            seen[event["task_id"]].append(event["status"])
    assert seen == {task.pk: ["queued", "leased", "completed"] for task in tasks}
    assert all(a.finished_at for t in tasks for a in Task.objects.get(pk=t.pk).attempt_set.all())
