"""Admin for runs, and the "Run maintenance" page."""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse

from maintenance.models import Run
from taskqueue.admin.forms import form_class_for, payload_from
from taskqueue.exceptions import InvalidPayload, TaskQueueError
from taskqueue.registry import get_task_type, task_title
from taskqueue.services import enqueue_task

OPERATIONS = ["cleanup_runs", "health_check", "cleanup_temp_files", "log_statistics"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "created_at", "finished_at", "artifacts", "size")
    list_filter = ("status", "finished_at", "name")
    search_fields = ("name", "artifacts_dir")
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
    change_list_template = "admin/maintenance/run/change_list.html"

    @admin.display(description="artifacts", ordering="artifacts_dir")
    def artifacts(self, run: Run) -> str:
        return run.artifacts_dir or "—"

    @admin.display(description="size", ordering="artifacts_bytes")
    def size(self, run: Run) -> str:
        return filesizeformat(run.artifacts_bytes) if run.artifacts_bytes is not None else "—"

    def console_links(self, request: HttpRequest) -> list[tuple[str, str]]:
        """Run maintenance, beside Runs on the admin index and in its sidebar."""
        if not self._allowed(request):
            return []
        url = reverse("admin:maintenance_run_operations", current_app=self.admin_site.name)
        return [("Run maintenance", url)]

    def _allowed(self, request: HttpRequest) -> list[str]:
        """The operations this user may trigger."""
        return [
            name
            for name in OPERATIONS
            if request.user.has_perm(get_task_type(name).policy.permission or "")
        ]

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.operations_view)
        return [path("operations/", view, name="maintenance_run_operations"), *super().get_urls()]

    def operations_view(self, request: HttpRequest) -> HttpResponse:
        """One form per operation the user may trigger; submitting enqueues it."""
        allowed = self._allowed(request)
        if not allowed:
            raise PermissionDenied
        forms = {name: form_class_for(name)(prefix=name) for name in allowed}
        if request.method == "POST":
            name = request.POST.get("operation")
            if name not in forms:
                raise PermissionDenied
            form = forms[name] = form_class_for(name)(request.POST, prefix=name)
            if form.is_valid():
                response = self._enqueue(request, name, payload_from(form), form)
                if response is not None:
                    return response
        context = {
            **self.admin_site.each_context(request),
            "title": "Run maintenance",
            "opts": Run._meta,
            "operations": [
                {
                    "name": name,
                    "title": task_title(name),
                    "form": form,
                    "description": get_task_type(name).description,
                }
                for name, form in forms.items()
            ],
        }
        return TemplateResponse(request, "admin/maintenance/run/operations.html", context)

    def _enqueue(
        self, request: HttpRequest, name: str, payload: dict[str, Any], form: Any
    ) -> HttpResponse | None:
        try:
            task, created = enqueue_task(name, payload, requested_by=request.user, source="admin")
        except InvalidPayload as exc:
            for field, problems in exc.errors.items():
                form.add_error(field if field in form.fields else None, problems)
            return None
        except TaskQueueError as exc:
            messages.error(request, f"{task_title(name)} was not enqueued: {exc.message}")
            return None
        if created:
            messages.success(request, f"Task {task.pk} ({task_title(name)}) enqueued.")
        else:
            messages.info(
                request, f"An identical {task_title(name)} is already active: task {task.pk}."
            )
        return HttpResponseRedirect(reverse("admin:taskqueue_task_change", args=[task.pk]))
