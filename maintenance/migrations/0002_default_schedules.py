"""Sensible default schedules for the four operations, disabled until an operator enables them."""

from django.db import migrations

DEFAULTS = [
    ("Nightly run cleanup", "cleanup_runs", {"max_age_hours": 24, "dry_run": False}, "30 2 * * *", None),
    ("Hourly temp file cleanup", "cleanup_temp_files", {"max_age_hours": 24, "dry_run": False}, "15 * * * *", None),
    ("Health check every five minutes", "health_check", {}, "", 300),
    ("Daily log statistics", "log_statistics", {"hours": 24}, "0 6 * * *", None),
]


def create(apps, schema_editor):
    Schedule = apps.get_model("taskqueue", "Schedule")
    for name, task_type, payload, cron, interval in DEFAULTS:
        Schedule.objects.get_or_create(
            name=name,
            defaults={
                "task_type": task_type,
                "payload": payload,
                "cron": cron,
                "interval_seconds": interval,
                "enabled": False,
            },
        )


def remove(apps, schema_editor):
    Schedule = apps.get_model("taskqueue", "Schedule")
    Schedule.objects.filter(name__in=[d[0] for d in DEFAULTS], enabled=False).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("maintenance", "0001_initial"),
        ("taskqueue", "0002_schedule"),
    ]
    operations = [migrations.RunPython(create, remove)]
