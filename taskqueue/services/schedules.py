"""Running schedules: the cron process enqueues each due schedule exactly once."""

import logging
from typing import Any

from django.db.models import F
from django.utils import timezone

from taskqueue.exceptions import TaskQueueError
from taskqueue.models import Schedule, Task
from taskqueue.registry import get_task_type
from taskqueue.services.lifecycle import enqueue_task

logger = logging.getLogger(__name__)


def run_due_schedules() -> dict[str, int]:
    """Enqueue every enabled schedule whose next run has come (run every 30 s by rqcron).

    A due schedule is claimed with a conditional UPDATE on its `next_run_at`, so two cron
    ticks at once enqueue it once. The next run is computed from now, so a schedule that
    missed several slots (the cron process was down) runs once, not once per slot.
    """
    counts = {"enqueued": 0, "skipped": 0, "armed": 0}
    now = timezone.now()
    for schedule in Schedule.objects.filter(enabled=True, next_run_at__isnull=True):
        schedule.arm()
        if Schedule.objects.filter(pk=schedule.pk, next_run_at__isnull=True).update(
            next_run_at=schedule.next_run_at
        ):
            counts["armed"] += 1
    for schedule in Schedule.objects.filter(enabled=True, next_run_at__lte=now).select_related(
        "last_task"
    ):
        claimed = Schedule.objects.filter(
            pk=schedule.pk, enabled=True, next_run_at=schedule.next_run_at
        ).update(next_run_at=schedule.following(now)[0], last_run_at=now)
        if not claimed:
            continue  # another cron tick took it
        task = _run(schedule)
        counts["enqueued" if task else "skipped"] += 1
    return counts


def run_schedule_now(schedule: Schedule, *, by: Any = None) -> Task | None:
    """Enqueue a schedule's task now (the admin's "run now"); None when it is skipped."""
    return _run(schedule, by=by)


def _run(schedule: Schedule, *, by: Any = None) -> Task | None:
    previous = schedule.last_task
    if previous is not None and previous.status in Task.ACTIVE_STATUSES and _exclusive(schedule):
        _skip(schedule, f"the previous run (task {previous.pk}) is still {previous.status}")
        return None
    try:
        task, _ = enqueue_task(
            schedule.task_type,
            schedule.payload,
            requested_by=by,
            source=f"schedule:{schedule.pk}",
        )
    except TaskQueueError as exc:
        _skip(schedule, exc.message)
        return None
    Schedule.objects.filter(pk=schedule.pk).update(last_task=task)
    schedule.last_task = task
    logger.info("Schedule %s enqueued task %s", schedule.name, task.pk)
    return task


def _exclusive(schedule: Schedule) -> bool:
    try:
        return get_task_type(schedule.task_type).policy.exclusive
    except TaskQueueError:
        return False


def _skip(schedule: Schedule, reason: str) -> None:
    logger.warning("Schedule %s skipped: %s", schedule.name, reason)
    Schedule.objects.filter(pk=schedule.pk).update(
        last_skipped_at=timezone.now(), last_skip_reason=reason[:300], skips=F("skips") + 1
    )
