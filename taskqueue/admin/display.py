"""Small HTML renderings shared by the admin pages (always escaped)."""

import json
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskqueue.models import Task

STATUS_COLOURS = {
    "queued": "#5c6670",
    "leased": "#0b63ce",
    "retrying": "#c25e00",
    "completed": "#1a7f37",
    "failed": "#c62828",
    "cancelled": "#6a3fb5",
}


def status_label(status: str) -> str:
    """The console's word for a status: its Task.Status label (`leased` is "Running")."""
    return Task.Status(status).label if status in Task.Status.values else status


def status_badge(status: str) -> SafeString:
    return format_html(
        '<span class="tq-badge tq-status-{}" style="background:{}">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#444"),
        status_label(status),
    )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from start to end (to now while end is unknown)."""
    if start is None:
        return None
    return ((end or timezone.now()) - start) / timedelta(seconds=1)


def wait_seconds(task: Task) -> float | None:
    if task.started_at:
        return between(task.created_at, task.started_at)
    return between(task.created_at, None) if task.status in Task.WAITING_STATUSES else None


def run_seconds(task: Task) -> float | None:
    if task.started_at is None:
        return None
    end = task.finished_at if task.is_terminal else None
    return between(task.started_at, end)


def pretty_json(value: Any) -> SafeString:
    """JSON as the handler returned it (its keys in its order), indented, escaped."""
    text = json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False, default=str)
    return format_html('<pre class="tq-json">{}</pre>', text)
