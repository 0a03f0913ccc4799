"""Registers the four operations as task types, with their payloads and policies."""

from maintenance import operations
from taskqueue.backends import expose
from taskqueue.registry import (
    Backoff,
    PayloadSerializer,
    StrictBooleanField,
    StrictIntegerField,
    register,
)

HOURS = {"min_value": 1, "max_value": 8760}


class CleanupPayload(PayloadSerializer):
    max_age_hours = StrictIntegerField(
        default=24, help_text="Remove what is older than this many hours (1 to 8760).", **HOURS
    )
    dry_run = StrictBooleanField(default=False, help_text="Only report what would be removed.")


class HealthCheckPayload(PayloadSerializer):
    pass


class LogStatisticsPayload(PayloadSerializer):
    hours = StrictIntegerField(
        default=24, help_text="Summarise the logs of this many past hours (1 to 8760).", **HOURS
    )


# DESIGN §4: the two cleanups are destructive, long and exclusive; each has its permission.
CLEANUP_POLICY = {"max_attempts": 3, "timeout": 300, "priority": 5, "exclusive": True,
                  "backoff": Backoff(base=30, maximum=600)}  # fmt: skip
QUICK_RETRY = Backoff(base=5, maximum=60)

for name, title, serializer, policy in (
    ("cleanup_runs", "Clean up old runs", CleanupPayload, CLEANUP_POLICY),
    ("health_check", "Health check", HealthCheckPayload,
     {"max_attempts": 2, "timeout": 30, "priority": 3, "backoff": QUICK_RETRY}),
    ("cleanup_temp_files", "Clean up old temp files", CleanupPayload, CLEANUP_POLICY),
    ("log_statistics", "Log statistics", LogStatisticsPayload,
     {"max_attempts": 2, "timeout": 10, "priority": 1, "backoff": QUICK_RETRY}),
):  # fmt: skip
    register(
        name, title=title, serializer=serializer, permission=f"maintenance.run_{name}", **policy
    )(getattr(operations, name))


# The same four as django.tasks Tasks, for code that uses Django's Tasks API:
# `health_check.enqueue()`, `cleanup_runs.enqueue(max_age_hours=48)`. They enqueue the
# types above, with their payload validation, policies and permissions.
cleanup_runs = expose("cleanup_runs")
health_check = expose("health_check")
cleanup_temp_files = expose("cleanup_temp_files")
log_statistics = expose("log_statistics")
