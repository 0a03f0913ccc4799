"""Event ids of the streams, and resuming the global stream from `Last-Event-ID`.

An id is increasing along a stream and never below the time (microseconds since the epoch)
of the change its event carries. Pub/sub keeps nothing, so a client that comes back is
resumed from the database, the truth.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from taskqueue import events
from taskqueue.models import Task

# Resuming the global stream replays the tasks changed since the client's last event, less
# this (commits land out of order, hosts' clocks differ); at most RESUME_MAX_TASKS of them,
# and from no longer ago than RESUME_MAX_AGE: past either the client is told to resync.
RESUME_SLACK_SECONDS = 10
RESUME_MAX_TASKS = 1000
RESUME_MAX_AGE = timedelta(hours=1)
SNAPSHOT_FIELDS = ("task_type", "status", "attempts", "max_attempts", "progress",
                   "progress_message", "error_code", "updated_at")  # fmt: skip


def changed_since(version: int) -> list[dict[str, Any]] | None:
    """The snapshots of the tasks changed since `version` (less the slack), the oldest
    change first; None when that is longer ago than RESUME_MAX_AGE or too many tasks.

    A task changed since then is active, or finished since (terminal tasks never change):
    the query stays on the status and finished_at indexes.
    """
    since = _moment(min(version, now_version())) - timedelta(seconds=RESUME_SLACK_SECONDS)
    if since < timezone.now() - RESUME_MAX_AGE:
        return None
    try:
        changed = (
            Task.objects.filter(Q(status__in=Task.ACTIVE_STATUSES) | Q(finished_at__gte=since))
            .filter(updated_at__gte=since)
            .only(*SNAPSHOT_FIELDS)
            .order_by("updated_at", "pk")
        )
        tasks = list(changed[: RESUME_MAX_TASKS + 1])
    finally:
        connections.close_all()
    return None if len(tasks) > RESUME_MAX_TASKS else [events.snapshot(t) for t in tasks]


class EventIds:
    """The ids of one stream's events: each above the last, and at least the version (the
    change's time) of the event it is given to, so that `Last-Event-ID` says from when."""

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self, version: int) -> int:
        self.last = max(self.last + 1, version)
        return self.last


def last_event_id(request: HttpRequest) -> int | None:
    value = request.headers.get("Last-Event-ID", "").strip()
    return int(value) if value.isdigit() and len(value) <= 18 else None


def version_of(data: dict[str, Any]) -> int:
    """A snapshot's time (its `updated_at`) in microseconds since the epoch."""
    moment = data.get("updated_at")
    if isinstance(moment, str):
        moment = parse_datetime(moment)
    return int(moment.timestamp() * 1_000_000) if moment else 0


def _moment(version: int) -> datetime:
    return datetime.fromtimestamp(version / 1_000_000, tz=UTC)


def now_version() -> int:
    return int(timezone.now().timestamp() * 1_000_000)
