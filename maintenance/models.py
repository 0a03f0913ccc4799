"""Runs of the host system's jobs, which cleanup_runs cleans up."""

from django.db import models
from django.utils import timezone


class Run(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    name = models.CharField(max_length=200, help_text="The job this is a run of.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    artifacts_dir = models.CharField(
        max_length=500, blank=True, help_text="Relative to MAINTENANCE['ARTIFACTS_DIR']."
    )
    artifacts_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Size of the artifacts when the run finished."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "finished_at"], name="maintenance_run_finished"),
            models.Index(fields=["-created_at"], name="maintenance_run_created"),
        ]
        permissions = [
            ("run_cleanup_runs", "Can trigger cleanup_runs"),
            ("run_health_check", "Can trigger health_check"),
            ("run_cleanup_temp_files", "Can trigger cleanup_temp_files"),
            ("run_log_statistics", "Can trigger log_statistics"),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"


class PendingArtifactRemoval(models.Model):
    """An artifacts directory whose run row is deleted and whose files are not yet.

    Written in the transaction that deletes the run, removed once the directory is gone:
    after a crash, or a removal that failed (a permission, a busy mount), the next
    cleanup_runs tries what is listed here again, first.
    """

    path = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0, help_text="Removals tried and failed.")
    last_error = models.TextField(blank=True, help_text="Why the last removal failed.")
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.path
