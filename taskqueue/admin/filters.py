"""List filters shared by the task and schedule lists."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from taskqueue.registry import task_types


class TaskTypeFilter(admin.SimpleListFilter):
    title = "type"
    parameter_name = "task_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(t.name, t.title) for t in task_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(task_type=self.value()) if self.value() else queryset
