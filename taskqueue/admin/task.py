"""TaskAdmin: a read-only record with Cancel / Stop / Retry, bulk actions and live pages."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskqueue.admin import views
from taskqueue.admin.display import duration, run_seconds, status_badge, wait_seconds
from taskqueue.admin.filters import TaskTypeFilter
from taskqueue.exceptions import TaskQueueError
from taskqueue.models import Task
from taskqueue.registry import task_title
from taskqueue.services import CANCELLED, cancel_task, retry_task


class RequesterFilter(admin.SimpleListFilter):
    title = "requested by"
    parameter_name = "requester"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        staff = get_user_model().objects.filter(is_staff=True).order_by("username")
        return [("none", "nobody (schedule, shell)")] + [
            (str(u.pk), u.get_username()) for u in staff
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "none":
            return queryset.filter(requested_by__isnull=True)
        if self.value() and self.value().isdigit():
            return queryset.filter(requested_by_id=int(self.value()))
        return queryset


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "type_display",
        "status_display",
        "attempts_display",
        "queue",
        "requested_by",
        "created_display",
        "wait_display",
        "run_display",
    )
    list_display_links = ("id", "type_display")
    list_filter = ("status", TaskTypeFilter, "created_at", RequesterFilter)
    search_fields = ("task_type", "error_message")
    search_help_text = "A task id, a type, or words from the error message."
    date_hierarchy = "created_at"
    list_select_related = ("requested_by",)
    list_per_page = 50
    show_full_result_count = False
    ordering = ("-id",)
    actions = ["cancel_selected", "retry_selected"]
    change_form_template = "admin/taskqueue/task/change_form.html"
    change_list_template = "admin/taskqueue/task/change_list.html"

    # A task is a record: nobody adds, edits or deletes one here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Cancel, stop and retry need taskqueue.change_task."""
        return request.user.has_perm("taskqueue.change_task")

    @admin.display(description="type", ordering="task_type")
    def type_display(self, task: Task) -> str:
        return task_title(task.task_type)

    @admin.display(description="status", ordering="status")
    def status_display(self, task: Task) -> SafeString:
        return status_badge(task.status)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_display(self, task: Task) -> str:
        return f"{task.created_at:%Y-%m-%d %H:%M:%S}"

    @admin.display(description="attempts")
    def attempts_display(self, task: Task) -> str:
        return f"{task.attempts}/{task.max_attempts}"

    @admin.display(description="wait")
    def wait_display(self, task: Task) -> str:
        return duration(wait_seconds(task))

    @admin.display(description="run")
    def run_display(self, task: Task) -> str:
        return duration(run_seconds(task))

    def console_links(self, request: HttpRequest) -> list[tuple[str, str]]:
        """The dashboard, beside Tasks on the admin index and in its sidebar."""
        if not request.user.has_perm("taskqueue.view_task"):
            return []
        url = reverse("admin:taskqueue_dashboard", current_app=self.admin_site.name)
        return [("Dashboard", url)]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip().lstrip("#")
        if term.isdigit() and len(term) < 19:
            return queryset.filter(Q(pk=int(term)) | Q(task_type=term)), False
        return super().get_search_results(request, queryset, search_term)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(views.dashboard), name="taskqueue_dashboard"),
            path("<int:task_id>/live/", wrap(views.live), name="taskqueue_task_live"),
            path("<int:task_id>/cancel/", wrap(views.cancel), name="taskqueue_task_cancel"),
            path("<int:task_id>/retry/", wrap(views.retry), name="taskqueue_task_retry"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        task = Task.objects.with_attempt_history().select_related(
            "requested_by", "cancelled_by", "retry_of"
        )
        found = task.filter(pk=object_id).first() if object_id.isdigit() else None
        extra = views.task_context(request, found) if found else {}
        if found:
            extra["subtitle"] = f"{task_title(found.task_type)} #{found.pk}"
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    @admin.action(description="Cancel or stop selected tasks", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        if "confirm" not in request.POST:
            return self._confirm(
                request, queryset, "cancel_selected", "Cancel or stop", "cancelled or stopped"
            )
        for task in queryset:
            try:
                outcome = cancel_task(task, by=request.user, wait=0)
            except TaskQueueError as exc:
                messages.warning(request, f"Task {task.pk}: not cancelled — {exc.message}")
                continue
            done = "cancelled" if outcome == CANCELLED else "asked to stop (it is running)"
            messages.success(request, f"Task {task.pk}: {done}.")
        return None

    @admin.action(description="Retry selected tasks", permissions=["operate"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        if "confirm" not in request.POST:
            return self._confirm(request, queryset, "retry_selected", "Retry", "retried")
        for task in queryset:
            try:
                new = retry_task(task, by=request.user, source="admin")
            except TaskQueueError as exc:
                messages.warning(request, f"Task {task.pk}: not retried — {exc.message}")
                continue
            messages.success(request, format_html("Task {}: retried as task {}.", task.pk, new.pk))
        return None

    def _confirm(
        self, request: HttpRequest, queryset: QuerySet, action: str, verb: str, done: str
    ) -> TemplateResponse:
        """The confirmation page of a bulk action: `verb` it, or say what cannot be `done`."""
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} {queryset.count()} tasks?",
            "opts": self.model._meta,
            "tasks": queryset.order_by("-id")[:200],
            "action": action,
            "verb": verb,
            "done": done,
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
        }
        return TemplateResponse(request, "admin/taskqueue/task/confirm_action.html", context)
