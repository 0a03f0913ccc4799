"""ScheduleAdmin: periodic tasks, validated, previewed, runnable now."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from taskqueue.admin.filters import TaskTypeFilter
from taskqueue.models import Schedule
from taskqueue.registry import task_title, task_types
from taskqueue.services.schedules import run_schedule_now


class ScheduleForm(forms.ModelForm):
    task_type = forms.ChoiceField(choices=())

    class Meta:
        model = Schedule
        fields = ["name", "task_type", "payload", "cron", "interval_seconds", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["task_type"].choices = [(t.name, t.title) for t in task_types()]
        self.fields["payload"].help_text = "A JSON object, checked against the type's parameters."


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "type_display", "describe", "enabled", "next_run_at", "last_run_at",
                    "last_task_link", "skips")  # fmt: skip
    list_filter = ("enabled", TaskTypeFilter)
    search_fields = ("name", "task_type")
    actions = ["run_now", "enable", "disable"]
    readonly_fields = ("upcoming", "next_run_at", "last_run_at", "last_task_link",
                       "last_skipped_at", "last_skip_reason", "skips")  # fmt: skip
    fieldsets = [
        (None, {"fields": ["name", "task_type", "payload", "enabled"]}),
        ("When (UTC)", {"fields": ["cron", "interval_seconds", "upcoming"]}),
        (
            "History",
            {
                "fields": [
                    "next_run_at",
                    "last_run_at",
                    "last_task_link",
                    "last_skipped_at",
                    "last_skip_reason",
                    "skips",
                ]
            },
        ),
    ]

    @admin.display(description="task type", ordering="task_type")
    def type_display(self, schedule: Schedule) -> str:
        return task_title(schedule.task_type)

    @admin.display(description="schedule")
    def describe(self, schedule: Schedule) -> str:
        return schedule.describe()

    @admin.display(description="last task")
    def last_task_link(self, schedule: Schedule) -> SafeString | str:
        if schedule.last_task_id is None:
            return "—"
        url = reverse("admin:taskqueue_task_change", args=[schedule.last_task_id])
        return format_html('<a href="{}">task {}</a>', url, schedule.last_task_id)

    @admin.display(description="next five runs (UTC)")
    def upcoming(self, schedule: Schedule) -> SafeString | str:
        if not schedule.pk or not (schedule.cron or schedule.interval_seconds):
            return "Saved schedules show their next five runs here."
        runs = schedule.following(timezone.now(), 5)
        return format_html_join(", ", "{}", ((f"{run:%Y-%m-%d %H:%M}",) for run in runs))

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        obj.arm()  # an edited schedule runs at its next slot from now
        super().save_model(request, obj, form, change)

    @admin.action(description="Run selected schedules now", permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for schedule in queryset.select_related("last_task"):
            task = run_schedule_now(schedule, by=request.user)
            if task is None:
                schedule.refresh_from_db()
                messages.warning(request, f"{schedule}: skipped — {schedule.last_skip_reason}")
            else:
                url = reverse("admin:taskqueue_task_change", args=[task.pk])
                messages.success(
                    request,
                    format_html('{}: enqueued <a href="{}">task {}</a>.', schedule, url, task.pk),
                )

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        for schedule in queryset:
            schedule.enabled = True
            schedule.arm()
            schedule.save(update_fields=["enabled", "next_run_at"])
        messages.success(request, f"{queryset.count()} schedules enabled.")

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        updated = queryset.update(enabled=False, next_run_at=None)
        messages.success(request, f"{updated} schedules disabled.")
