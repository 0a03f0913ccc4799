"""Which queues the dashboard flags "jobs waiting while workers idle" (no Redis)."""

import pytest

from taskqueue.services.monitoring import waiting_while_idle


def worker(state: str, heartbeat_age: float | None, queues=("high", "default", "low")) -> dict:
    return {"state": state, "heartbeat_age_seconds": heartbeat_age, "queues": list(queues)}


@pytest.mark.parametrize(
    ("waited", "workers", "flagged"),
    [
        # a frozen idle worker: silent since before the job came
        (40, [worker("idle", 45)], ["default"]),
        (40, [worker("busy", 45), worker("idle", 60)], ["default"]),
        # a job younger than IDLE_WAIT_SECONDS: the worker may be about to take it
        (10, [worker("idle", 45)], []),
        # a backlog behind busy workers; one idle for a moment between jobs, just heartbeaten
        (40, [worker("busy", 3), worker("idle", 0.2)], []),
        # the idle worker does not listen on the queue
        (40, [worker("idle", 45, queues=("high",))], []),
        (40, [], []),
        (None, [worker("idle", 45)], []),
    ],
)
def test_a_queue_is_flagged_when_an_idle_worker_on_it_is_silent_since_its_oldest_job(
    waited, workers, flagged
):
    queues = [{"name": "default", "oldest_age_seconds": waited}, {"name": "low",
              "oldest_age_seconds": None}]  # fmt: skip
    assert waiting_while_idle(queues, workers) == flagged
