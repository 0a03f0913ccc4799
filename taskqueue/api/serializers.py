"""The task body of DESIGN §5, the enqueue answer, the list filters, the error body."""

import copy
from datetime import UTC
from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from taskqueue.models import Schedule, Task

_datetime = serializers.DateTimeField()


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.ChoiceField(choices=["running", "completed", "failed", "stopped"])
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    worker_name = serializers.CharField()
    error_code = serializers.CharField(allow_blank=True)
    error_message = serializers.CharField(allow_blank=True)


class BuiltOnceMixin:
    """ModelSerializer builds its fields from the model on every instantiation (about a
    sixth of a status GET, measured); they depend on Meta alone, so build them once per
    class and hand each serializer a copy, as DRF does with declared fields."""

    def get_fields(self) -> dict[str, serializers.Field]:
        cls = type(self)
        built = cls.__dict__.get("_built_fields")
        if built is None:
            built = super().get_fields()
            cls._built_fields = built
        return copy.deepcopy(built)


class TaskSerializer(BuiltOnceMixin, serializers.ModelSerializer):
    task_id = serializers.IntegerField(source="pk", read_only=True)
    requested_by = serializers.CharField(
        source="requested_by.get_username", read_only=True, allow_null=True, default=None
    )
    cancelled_by = serializers.CharField(
        source="cancelled_by.get_username", read_only=True, allow_null=True, default=None
    )
    retry_of = serializers.IntegerField(source="retry_of_id", read_only=True, allow_null=True)
    payload = serializers.DictField(read_only=True)
    result = serializers.DictField(read_only=True, allow_null=True)

    class Meta:
        model = Task
        fields = [
            "task_id",
            "task_type",
            "status",
            "payload",
            "result",
            "error_code",
            "error_message",
            "attempts",
            "max_attempts",
            "priority",
            "queue",
            "progress",
            "progress_message",
            "created_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "updated_at",
            "requested_by",
            "cancelled_by",
            "source",
            "retry_of",
        ]
        read_only_fields = fields


SUMMARY_LENGTH = 200


def summarize(result: dict[str, Any] | None) -> str | None:
    """One line for a list: top-level scalars as they are, containers by their size.

    `{"runs_deleted": 3, "dry_run": false, "runs": [...]}` → `dry_run: false, runs: [12 items],
    runs_deleted: 3`; keys in order (PostgreSQL's jsonb keeps none), at most SUMMARY_LENGTH
    characters."""
    if result is None:
        return None
    parts = []
    for key, value in sorted(result.items()):
        if isinstance(value, dict):
            shown = f"{{{len(value)} keys}}" if len(value) != 1 else "{1 key}"
        elif isinstance(value, list):
            shown = f"[{len(value)} items]" if len(value) != 1 else "[1 item]"
        elif isinstance(value, bool) or value is None:
            shown = {True: "true", False: "false", None: "null"}[value]
        else:
            shown = str(value)
        parts.append(f"{key}: {shown}")
    line = ", ".join(parts)
    return line if len(line) <= SUMMARY_LENGTH else line[: SUMMARY_LENGTH - 1] + "…"


class TaskListSerializer(TaskSerializer):
    """A task in a list: its result summarised in one line (the detail has the result)."""

    result_summary = serializers.SerializerMethodField()

    class Meta(TaskSerializer.Meta):
        fields = [
            "result_summary" if name == "result" else name for name in TaskSerializer.Meta.fields
        ]
        read_only_fields = fields

    def get_result_summary(self, task: Task) -> str | None:
        return summarize(task.result)


class TaskDetailSerializer(TaskSerializer):
    attempt_history = serializers.SerializerMethodField()

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "attempt_history"]
        read_only_fields = fields

    @extend_schema_field(AttemptSerializer(many=True))
    def get_attempt_history(self, task: Task) -> list[dict[str, Any]]:
        history = getattr(task, "attempt_history", None)
        if history is None:
            history = list(task.attempt_set.values(*AttemptSerializer().fields))
        return [_normalise(attempt) for attempt in history]


def _normalise(attempt: dict[str, Any]) -> dict[str, Any]:
    """Timestamps from the JSON aggregate (strings) rendered like every other timestamp."""
    attempt = dict(attempt)
    for name in ("started_at", "finished_at"):
        value = attempt.get(name)
        if isinstance(value, str):
            value = parse_datetime(value.replace(" ", "T"))
            if value is not None and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
        attempt[name] = _datetime.to_representation(value) if value else None
    return attempt


class EnqueuedSerializer(serializers.Serializer):
    task_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Task.Status.choices)
    message = serializers.CharField()


class TaskFilterSerializer(serializers.Serializer):
    status = serializers.MultipleChoiceField(choices=Task.Status.choices, required=False)
    task_type = serializers.CharField(required=False, max_length=100)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # DRF skips a blank optional query parameter; `?task_type=` is a mistake, not "any".
        blank = [name for name in self.fields if self.initial_data.get(name, None) == ""]
        if blank:
            raise serializers.ValidationError({name: ["May not be blank."] for name in blank})
        return attrs


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


class ScheduleSerializer(serializers.ModelSerializer):
    schedule_id = serializers.IntegerField(source="pk", read_only=True)
    last_task = serializers.IntegerField(source="last_task_id", read_only=True, allow_null=True)

    class Meta:
        model = Schedule
        fields = [
            "schedule_id",
            "name",
            "task_type",
            "payload",
            "cron",
            "interval_seconds",
            "enabled",
            "next_run_at",
            "last_run_at",
            "last_task",
            "last_skipped_at",
            "last_skip_reason",
            "skips",
        ]
        read_only_fields = fields
