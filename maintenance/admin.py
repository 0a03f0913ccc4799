"""Admin for runs."""

from django.contrib import admin
from django.template.defaultfilters import filesizeformat

from maintenance.models import Run


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "created_at", "finished_at", "artifacts", "size")
    list_filter = ("status", ("finished_at", admin.DateFieldListFilter), "name")
    search_fields = ("name", "artifacts_dir")
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False

    @admin.display(description="artifacts", ordering="artifacts_dir")
    def artifacts(self, run: Run) -> str:
        return run.artifacts_dir or "—"

    @admin.display(description="size", ordering="artifacts_bytes")
    def size(self, run: Run) -> str:
        return filesizeformat(run.artifacts_bytes) if run.artifacts_bytes is not None else "—"
