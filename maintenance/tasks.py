"""Registers the four operations as task types, with their payloads and policies."""

from rest_framework import serializers

from maintenance import operations
from taskqueue.registry import Backoff, PayloadSerializer, StrictIntegerField, register

HOURS = {"min_value": 1, "max_value": 8760}


class CleanupPayload(PayloadSerializer):
    max_age_hours = StrictIntegerField(
        default=24, help_text="Remove what is older than this many hours (1 to 8760).", **HOURS
    )
    dry_run = serializers.BooleanField(
        default=False, help_text="Only report what would be removed."
    )


class HealthCheckPayload(PayloadSerializer):
    pass


class LogStatisticsPayload(PayloadSerializer):
    hours = StrictIntegerField(
        default=24, help_text="Summarise the logs of this many past hours (1 to 8760).", **HOURS
    )


register(
    "cleanup_runs",
    serializer=CleanupPayload,
    max_attempts=3,
    timeout=300,
    priority=5,
    exclusive=True,
    backoff=Backoff(base=30, maximum=600),
    permission="maintenance.run_cleanup_runs",
)(operations.cleanup_runs)

register(
    "health_check",
    serializer=HealthCheckPayload,
    max_attempts=2,
    timeout=30,
    priority=3,
    backoff=Backoff(base=5, maximum=60),
    permission="maintenance.run_health_check",
)(operations.health_check)

register(
    "cleanup_temp_files",
    serializer=CleanupPayload,
    max_attempts=3,
    timeout=300,
    priority=5,
    exclusive=True,
    backoff=Backoff(base=30, maximum=600),
    permission="maintenance.run_cleanup_temp_files",
)(operations.cleanup_temp_files)

register(
    "log_statistics",
    serializer=LogStatisticsPayload,
    max_attempts=2,
    timeout=10,
    priority=1,
    backoff=Backoff(base=5, maximum=60),
    permission="maintenance.run_log_statistics",
)(operations.log_statistics)
