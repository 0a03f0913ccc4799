"""Schedules: periodic tasks that operators edit in the admin."""

from datetime import datetime, timedelta
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from taskqueue.exceptions import InvalidPayload, UnknownTaskType
from taskqueue.registry import get_task_type

MIN_INTERVAL = 10
CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12"),
    ("day of week", "0-6"),
)


def cron_problem(expression: str) -> str | None:
    """What is wrong with a 5-field cron expression (UTC), or None when it is valid."""
    fields = expression.split()
    if len(fields) != 5:
        return (
            f"A cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"this one has {len(fields)}."
        )
    try:
        croniter(expression)
    except (CroniterBadCronError, CroniterBadDateError, ValueError) as exc:
        for index, (name, limit) in enumerate(CRON_FIELDS):
            alone = ["*"] * 5
            alone[index] = fields[index]
            if not croniter.is_valid(" ".join(alone)):
                return (
                    f"The {name} field {fields[index]!r} is not valid "
                    f"(allowed: {limit}, *, ranges, lists and steps)."
                )
        return f"Not a valid cron expression: {exc}"
    return None


class Schedule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    task_type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    cron = models.CharField(
        max_length=100,
        blank=True,
        help_text="A 5-field cron expression in UTC, e.g. '30 2 * * *' for 02:30 every night.",
    )
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Or a fixed interval, in seconds (10 or more)."
    )
    enabled = models.BooleanField(default=False)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_task = models.ForeignKey(
        "taskqueue.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_skipped_at = models.DateTimeField(null=True, blank=True)
    last_skip_reason = models.CharField(max_length=300, blank=True)
    skips = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="taskqueue_schedule_due")]

    def __str__(self) -> str:
        return self.name

    def describe(self) -> str:
        if self.cron:
            return f"cron {self.cron} (UTC)"
        if self.interval_seconds:
            return f"every {self.interval_seconds} s"
        return "—"

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        try:
            spec = get_task_type(self.task_type)
        except UnknownTaskType as exc:
            errors["task_type"] = exc.message
        else:
            try:
                self.payload = spec.validate_payload(self.payload)
            except InvalidPayload as exc:
                errors["payload"] = "; ".join(
                    f"{field}: {' '.join(str(m) for m in messages)}"
                    for field, messages in exc.errors.items()
                )
        if bool(self.cron) == bool(self.interval_seconds):
            errors["cron"] = "Give either a cron expression or an interval, not both, not neither."
        elif self.cron and (problem := cron_problem(self.cron)):
            errors["cron"] = problem
        elif self.interval_seconds is not None and self.interval_seconds < MIN_INTERVAL:
            errors["interval_seconds"] = f"The interval must be at least {MIN_INTERVAL} seconds."
        if errors:
            raise ValidationError(errors)

    def following(self, moment: datetime, count: int = 1) -> list[datetime]:
        """The next `count` run times strictly after `moment`."""
        if self.cron:
            it = croniter(self.cron, moment)
            return [it.get_next(datetime) for _ in range(count)]
        step = timedelta(seconds=self.interval_seconds or MIN_INTERVAL)
        return [moment + step * (n + 1) for n in range(count)]

    def arm(self) -> None:
        """Set the next run from now (None while disabled); call after editing."""
        self.next_run_at = self.following(timezone.now())[0] if self.enabled else None
