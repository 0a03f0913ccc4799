"""Task and TaskAttempt: the durable record of every job, and its state machine.

Every state change is one conditional UPDATE (`filter(pk=…, status__in=allowed_from)`)
that says whether it applied, so late, duplicate or out-of-order events are harmless and
terminal states never move. Nothing outside these methods assigns `status`.
"""
# ruff: noqa: S608  (the one raw SQL here interpolates our own table and column names only)

import math
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, transaction
from django.db.models import F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from taskqueue import events
from taskqueue.models import statements

MESSAGE_LIMIT = 2000
MAX_ID = 2**63 - 1  # the largest BigAutoField value: a bigger id in a URL matches no task
TRACEBACK_LIMIT = 20000


class TaskQuerySet(models.QuerySet):
    def active(self) -> "TaskQuerySet":
        return self.filter(status__in=Task.ACTIVE_STATUSES)

    def waiting(self) -> "TaskQuerySet":
        return self.filter(status__in=Task.WAITING_STATUSES)

    def terminal(self) -> "TaskQuerySet":
        return self.filter(status__in=Task.TERMINAL_STATUSES)

    def leased(self) -> "TaskQuerySet":
        return self.filter(status=Task.Status.LEASED)

    def finished_before(self, moment: datetime) -> "TaskQuerySet":
        return self.terminal().filter(finished_at__lt=moment)

    def lease(
        self, task_id: int, *, dispatch: int, worker_name: str, heartbeats: bool = False
    ) -> "Task | None":
        """queued/retrying → leased with a new attempt, in one statement; the task or None.

        `heartbeats`: the caller will write `heartbeat_at` while the attempt runs (our worker
        does), so the reconciler may judge the attempt by it. Raises IntegrityError when the
        task is exclusive and another task of its type is leased.
        """
        task = statements.lease(task_id, dispatch, worker_name, heartbeats=heartbeats)
        if task is not None:
            events.task_changed(task)
        return task

    def leased_to(self, task_id: int, *, dispatch: int, worker_name: str) -> "Task | None":
        """The task, if its running attempt is leased to `worker_name` for `dispatch`: the
        check of a lease whose commit went unconfirmed (the connection dropped after the
        statement was sent), which is the worker's own if the database committed it. Its
        change is then sent, as by the lease."""
        task = self.filter(
            pk=task_id,
            status=Task.Status.LEASED,
            dispatch=dispatch,
            attempt_set__number=models.F("attempts"),
            attempt_set__worker_name=worker_name[:200],
            attempt_set__outcome=TaskAttempt.Outcome.RUNNING,
        ).first()
        if task is not None:
            events.task_changed(task)
        return task

    def add(self, **fields: Any) -> "Task":
        """`create()` in one prepared INSERT: the enqueue path's (no save() or signals)."""
        task = Task(**fields)
        statements.insert(task)
        return task

    def database_now(self) -> datetime:
        """Now by the clock the lease, heartbeats and ends are written with: the database
        server's on PostgreSQL, so that hosts whose clocks disagree judge ages alike."""
        return statements.database_now()

    def count_active(self, task_type: str, *, up_to: int) -> int:
        """How many tasks of `task_type` are active, counting no further than `up_to`."""
        return statements.count_active(task_type, up_to)

    def with_attempt_history(self) -> "TaskQuerySet":
        """Annotate `attempt_history`, every attempt as a JSON list, in the same query."""
        return self.annotate(attempt_history=_attempt_history_sql(self.db))


class Task(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LEASED = "leased", "Running"
        RETRYING = "retrying", "Retrying"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    WAITING_STATUSES = (Status.QUEUED, Status.RETRYING)
    ACTIVE_STATUSES = (Status.QUEUED, Status.LEASED, Status.RETRYING)
    TERMINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    task_type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    result = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True, help_text="Shown in the admin only.")

    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    priority = models.SmallIntegerField(default=3)
    queue = models.CharField(max_length=32, default="default")
    timeout = models.PositiveIntegerField(default=60, help_text="Seconds per attempt.")
    # Generation of the RQ job: a re-dispatch bumps it, so a stale job never runs.
    dispatch = models.PositiveIntegerField(default=0)
    # Exclusive types: at most one task of the type leased at a time (a unique index below),
    # so exclusivity lives in the database and survives the loss of Redis.
    exclusive = models.BooleanField(default=False, editable=False)
    # Set for exclusive types: one active task per (type, payload).
    dedup_key = models.CharField(max_length=64, null=True, blank=True, editable=False)  # noqa: DJ001

    created_at = models.DateTimeField(default=timezone.now)
    # Bumped by every transition: the API's ETag and Last-Modified.
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    leased_at = models.DateTimeField(
        null=True, blank=True, help_text="Start of the current attempt."
    )
    # Written by the worker that owns the running attempt, every JOB_MONITORING_INTERVAL:
    # the reconciler judges an attempt only once this is older than that plus the margin.
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(
        null=True, blank=True, help_text="Percent, reported by the handler."
    )
    progress_message = models.CharField(max_length=200, blank=True)

    # These three are mostly empty: indexed only where set (Meta.indexes), so that an
    # enqueue and each change of status write no index entry for them.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", db_index=False,
    )  # fmt: skip
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", db_index=False,
    )  # fmt: skip
    source = models.CharField(max_length=100, blank=True, help_text="api, admin, shell, schedule:N")
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries",
        db_index=False,
    )  # fmt: skip

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # Every change of status writes a new row version into each index whose condition
        # it meets (status is indexed, so none of these updates is HOT): the indexes of
        # columns that are mostly empty are partial, leaving the empty rows out.
        indexes = [
            models.Index(fields=["-created_at"], name="taskqueue_task_created"),
            models.Index(fields=["status", "-id"], name="taskqueue_task_status"),
            models.Index(fields=["task_type", "-id"], name="taskqueue_task_type"),
            models.Index(
                fields=["finished_at"],
                condition=Q(finished_at__isnull=False),
                name="taskqueue_task_finished",
            ),
            models.Index(fields=["status", "finished_at"], name="taskqueue_task_status_finished"),
            models.Index(fields=["task_type", "status"], name="taskqueue_task_type_status"),
            *(
                models.Index(
                    fields=[name],
                    condition=Q(**{f"{name}__isnull": False}),
                    name=f"taskqueue_task_{name}",
                )
                for name in ("requested_by", "cancelled_by", "retry_of")
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=Q(dedup_key__isnull=False, status__in=["queued", "leased", "retrying"]),
                name="taskqueue_task_one_active_per_dedup_key",
            ),
            models.UniqueConstraint(
                fields=["task_type"],
                condition=Q(status="leased", exclusive=True),
                name="taskqueue_task_one_leased_per_exclusive_type",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_type} #{self.pk}"

    @property
    def job_id(self) -> str:
        """The RQ job id of the current dispatch, derived from the task id."""
        return job_id_for(self.pk, self.dispatch)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    def _transition(
        self, allowed_from: tuple[str, ...], values: dict[str, Any], **match: Any
    ) -> bool:
        """One conditional UPDATE; on success mirror plain values onto this instance."""
        values = {**values, "updated_at": timezone.now()}
        applied = (
            Task.objects.filter(pk=self.pk, status__in=allowed_from, **match).update(**values) == 1
        )
        if applied:
            for name, value in values.items():
                if not hasattr(value, "resolve_expression"):
                    setattr(self, name, value)
            events.task_changed(self)
        return applied

    def lease(self, *, dispatch: int, worker_name: str) -> int | None:
        """queued/retrying → leased for a new attempt, if `dispatch` is still current.

        Returns the new attempt's number (this instance now holds the leased row), or None.
        """
        leased = Task.objects.lease(self.pk, dispatch=dispatch, worker_name=worker_name)
        if leased is None:
            return None
        for field in self._meta.concrete_fields:
            setattr(self, field.attname, getattr(leased, field.attname))
        return self.attempts

    def complete(self, *, attempt: int, result: dict[str, Any]) -> bool:
        """leased → completed with the handler's JSON result (a stop asked for lost the race).

        An earlier attempt's error is cleared: it stays on that attempt's row.
        """
        values = {"result": result, **self.NO_ERROR, **self.STOP_LOST}
        return self._end_attempt(attempt, self.Status.COMPLETED, values)

    def fail(
        self,
        *,
        attempt: int,
        error_code: str,
        error_message: str,
        traceback: str = "",
        retry_at: datetime | None = None,
    ) -> bool:
        """leased → retrying (when `retry_at` is given) or failed.

        A retry of a task whose stop was asked for does not happen: the task ends cancelled
        (the cancel takes effect at the attempt's end; the attempt keeps its real error).
        """
        status = self.Status.RETRYING if retry_at else self.Status.FAILED
        values = {
            "error_code": error_code,
            "error_message": error_message[:MESSAGE_LIMIT],
            "error_traceback": traceback[-TRACEBACK_LIMIT:],
            "next_attempt_at": retry_at,
        }
        if status == self.Status.FAILED:
            values |= self.STOP_LOST
        if not self._end_attempt(attempt, status, values):
            return False
        if status == self.Status.RETRYING:
            self._cancel_if_stop_requested()
        return True

    def ended_as(
        self, *, attempt: int, status: str, error_code: str = "", error_message: str = ""
    ) -> bool:
        """Whether attempt `attempt` ended as an end with `status` and this error writes it:
        the check of an end whose commit went unconfirmed (the connection dropped after the
        statement was sent, so the database may have committed it, and the end tried again
        is refused). If so, this instance is refreshed and its change sent, as by the end
        itself (a retry whose stop was asked for is then cancelled, as `fail` does)."""
        _, outcome, _ = self._end_values(status, {})
        ended = TaskAttempt.objects.filter(
            task_id=self.pk,
            number=attempt,
            outcome=outcome,
            error_code=error_code,
            error_message=error_message[:MESSAGE_LIMIT],
        ).exists()
        if ended:
            try:
                self.refresh_from_db()
            except Task.DoesNotExist:  # deleted since: nothing is left to tell
                return False
            events.task_changed(self)
            if self.status == self.Status.RETRYING:
                self._cancel_if_stop_requested()
        return ended

    # What an attempt that ended by itself clears: a stop asked for lost the race to it.
    STOP_LOST = {"stop_requested_at": None, "cancelled_by": None}
    NO_ERROR = {"error_code": "", "error_message": "", "error_traceback": ""}

    def _cancel_if_stop_requested(self) -> bool:
        """retrying → cancelled if a stop was asked for while the failed attempt ran."""
        values = {
            "status": self.Status.CANCELLED,
            "finished_at": timezone.now(),
            "next_attempt_at": None,
        }
        return self._transition((self.Status.RETRYING,), values, stop_requested_at__isnull=False)

    STOPPED = {"error_code": "stopped", "error_message": "Stopped while running."}

    def stopped(self, *, attempt: int) -> bool:
        """leased → cancelled: the worker confirmed it stopped the attempt."""
        return self._end_attempt(attempt, self.Status.CANCELLED, self.STOPPED)

    def complete_and_lease(
        self, *, attempt: int, result: dict[str, Any], next_task: int, dispatch: int,
        worker_name: str,
    ) -> tuple[bool, "Task | None"]:  # fmt: skip
        """`complete()`, and `Task.objects.lease(next_task, dispatch=…, heartbeats=True)` in
        the same transaction (one statement on PostgreSQL, one commit): a worker's end of
        one attempt and lease of its next task. (completed, the leased task or None).

        Raises IntegrityError, having recorded neither, when the next task is exclusive and
        another task of its type is leased.
        """
        values, outcome, now = self._end_values(
            self.Status.COMPLETED, {"result": result, **self.NO_ERROR, **self.STOP_LOST}
        )
        stamps, leased = statements.end_attempt_and_lease(
            self.pk, attempt, values, outcome, now,
            lease_id=next_task, lease_dispatch=dispatch, worker_name=worker_name,
        )  # fmt: skip
        ended = self._ended(values, stamps)
        if leased is not None:
            events.task_changed(leased)
        return ended, leased

    def _end_attempt(self, number: int, status: str, values: dict[str, Any]) -> bool:
        values, outcome, now = self._end_values(status, values)
        return self._ended(values, statements.end_attempt(self.pk, number, values, outcome, now))

    def _end_values(self, status: str, values: dict[str, Any]) -> tuple[dict, str, datetime]:
        """What an attempt's end with `status` writes, its attempt's outcome, and now."""
        now = timezone.now()
        values = {**values, "status": status, "updated_at": now}
        if status in self.TERMINAL_STATUSES:
            values["finished_at"] = now
        outcome = {
            self.Status.COMPLETED: TaskAttempt.Outcome.COMPLETED,
            self.Status.CANCELLED: TaskAttempt.Outcome.STOPPED,
        }.get(status, TaskAttempt.Outcome.FAILED)
        return values, outcome, now

    def _ended(self, values: dict[str, Any], stamps: dict[str, Any] | None) -> bool:
        """Mirror an attempt's end onto this instance, if it applied (`stamps`: the times
        as stored)."""
        if stamps is None:
            return False
        for name, value in {**values, **stamps}.items():
            setattr(self, name, value)
        events.task_changed(self)
        return True

    def release(self, *, attempt: int) -> bool:
        """leased → queued (retrying, due now, after a failed attempt), taking back the
        lease of attempt `attempt` whose handler never started: its row is deleted and the
        count goes back, as if it had not been leased (a worker stopping with an attempt
        leased for it with the end of its last). Not once a stop was asked for: the caller
        ends it stopped instead."""
        later = models.Case(
            models.When(attempts__gt=1, then=models.Value(timezone.now())), default=None
        )
        values = {
            "status": models.Case(
                models.When(attempts__gt=1, then=models.Value(self.Status.RETRYING)),
                default=models.Value(self.Status.QUEUED),
            ),
            "attempts": F("attempts") - 1,
            "started_at": models.Case(models.When(attempts__gt=1, then=F("started_at"))),
            "next_attempt_at": later,
            "leased_at": None,
            "heartbeat_at": None,
        }
        with transaction.atomic():  # (its event goes out on commit, with the row as stored)
            match = {"attempts": attempt, "stop_requested_at__isnull": True}
            if not self._transition((self.Status.LEASED,), values, **match):
                return False
            TaskAttempt.objects.filter(task_id=self.pk, number=attempt).delete()
            self.refresh_from_db()  # the values the database worked out
        return True

    def cancel(self, *, by: Any = None) -> bool:
        """queued/retrying → cancelled, before any worker took it."""
        values = {
            "status": self.Status.CANCELLED,
            "finished_at": timezone.now(),
            "next_attempt_at": None,
            "cancelled_by": by,
        }
        return self._transition(self.WAITING_STATUSES, values)

    def heartbeat(self, *, attempt: int) -> bool | None:
        """The owner of running attempt `attempt` says it is alive.

        Returns None if that attempt has ended (it is no longer the caller's), else whether a
        stop of it was asked for.
        """
        return statements.heartbeat(self.pk, attempt, timezone.now())

    def current_worker_name(self) -> str | None:
        """The worker that leased the current attempt (the one to send its stop to)."""
        return (
            TaskAttempt.objects.filter(task=self, number=self.attempts)
            .values_list("worker_name", flat=True)
            .first()
        )

    def request_stop(self, *, by: Any = None) -> bool:
        """Record that a stop of the running attempt was asked for (it stays leased)."""
        values = {"stop_requested_at": timezone.now(), "cancelled_by": by}
        return self._transition((self.Status.LEASED,), values, stop_requested_at__isnull=True)

    def report_progress(self, *, attempt: int, percent: float | None, message: str) -> bool:
        """Record the running attempt's progress (ignored once the attempt has ended)."""
        values = {"progress_message": message[:200]}
        if percent is not None:
            values["progress"] = max(0.0, min(100.0, float(percent)))
        return self._transition((self.Status.LEASED,), values, attempts=attempt)

    def dispatch_delay(self) -> int:
        """Seconds until this waiting task may run (its retry or run_after), 0 if it may now."""
        if self.next_attempt_at is None:
            return 0
        return max(0, math.ceil((self.next_attempt_at - timezone.now()).total_seconds()))

    def redispatch(self) -> bool:
        """Move a waiting task to a new RQ job generation (the old job will not run it)."""
        applied = self._transition(
            self.WAITING_STATUSES, {"dispatch": F("dispatch") + 1}, dispatch=self.dispatch
        )
        if applied:
            self.dispatch += 1
        return applied


ATTEMPT_COLUMNS = (
    "number",
    "outcome",
    "started_at",
    "finished_at",
    "worker_name",
    "error_code",
    "error_message",
)


def _attempt_history_sql(alias: str) -> RawSQL:
    """A correlated subquery aggregating a task's attempts to JSON (PostgreSQL or SQLite).

    Only this module's table and column names are interpolated, never input.
    """
    attempt, task = TaskAttempt._meta.db_table, Task._meta.db_table
    pairs = ", ".join(f"'{name}', a.{name}" for name in ATTEMPT_COLUMNS)
    if connections[alias].vendor == "postgresql":
        sql = (
            f"SELECT COALESCE(json_agg(json_build_object({pairs}) ORDER BY a.number), '[]')::text"
            f" FROM {attempt} a WHERE a.task_id = {task}.id"
        )
    else:
        sql = (
            f"SELECT json_group_array(json_object({pairs})) FROM"
            f" (SELECT * FROM {attempt} WHERE task_id = {task}.id ORDER BY number) a"
        )
    return RawSQL(sql, (), output_field=models.JSONField())  # noqa: S611


def job_id_for(task_id: int, dispatch: int) -> str:
    return f"task-{task_id}" if dispatch == 0 else f"task-{task_id}-{dispatch}"


class TaskAttempt(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Stopped"

    # Looked up by the unique index (task, number): no index of its own.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="attempt_set", db_index=False
    )
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        ordering = ["task", "number"]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="taskqueue_attempt_unique"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of task #{self.task_id} ({self.outcome})"

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
