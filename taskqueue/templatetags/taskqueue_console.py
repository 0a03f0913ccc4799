"""Template filters of the console: one vocabulary (titles, status labels), one clock."""

from datetime import UTC, datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from taskqueue.admin import display
from taskqueue.models import TaskAttempt
from taskqueue.registry import task_title

register = template.Library()


@register.filter(name="task_title")
def task_title_filter(name: str) -> str:
    """`cleanup_runs` → "Clean up old runs"."""
    return task_title(name)


@register.filter
def status_label(status: str) -> str:
    """A task status as the console says it (`leased` → "Running")."""
    return display.status_label(status)


@register.filter
def outcome_label(outcome: str) -> str:
    """An attempt's outcome in words (`running` → "Running")."""
    labels = dict(TaskAttempt.Outcome.choices)
    return labels.get(outcome, outcome)


@register.filter
def utc(moment: datetime | str | None) -> str:
    """A time (or an ISO 8601 string) as the console shows times: "2026-11-28 22:44:17 UTC"."""
    if isinstance(moment, str):
        moment = parse_datetime(moment) if moment else None
    if moment is None:
        return "—"
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@register.filter
def ago(moment: datetime | None) -> str:
    """ "just now" under a minute, else "3 minutes ago" (Django's timesince)."""
    if moment is None:
        return "—"
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment)} ago"


@register.filter
def pretty_json(value: Any) -> SafeString:
    """A JSON value, indented, in a <pre> (escaped)."""
    return display.pretty_json(value)
