"""The MAINTENANCE settings dict, read at access time (override_settings works)."""

from pathlib import Path
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Roots of the file operations (absolute; defaults under VAR_DIR).
    "ARTIFACTS_DIR": None,
    "TEMP_DIR": None,
    "LOG_DIR": None,
    # The model cleanup_runs cleans: needs `status`, `finished_at`, `created_at` and
    # `artifacts_dir` (a path relative to ARTIFACTS_DIR, or blank).
    "RUN_MODEL": "maintenance.Run",
    "RUN_FINISHED_STATUSES": ["succeeded", "failed", "cancelled"],
    "CLEANUP_BATCH_SIZE": 500,
    "MAX_ERRORS_REPORTED": 20,
    "MAX_TREE_DEPTH": 100,
    # health_check thresholds.
    "DISK_MIN_FREE_PERCENT": 5.0,
    "DISK_MIN_FREE_BYTES": 512 * 1024 * 1024,
    "QUEUE_MAX_AGE_SECONDS": 600,
    # log_statistics.
    "LOG_FILE_NAME": "app.log",
    "LOG_TOP_MESSAGES": 20,
    "LOG_MAX_DISTINCT_MESSAGES": 10000,
    "LOG_READ_PROCESSES": None,  # processes reading the logs; None: one per core, at most 4
}


class MaintenanceSettings:
    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown MAINTENANCE setting {name!r}")
        value = getattr(settings, "MAINTENANCE", {}).get(name, DEFAULTS[name])
        if value is None and name.endswith("_DIR"):
            subdir = {"ARTIFACTS_DIR": "artifacts", "TEMP_DIR": "tmp", "LOG_DIR": "log"}[name]
            return Path(settings.VAR_DIR) / subdir
        return Path(value) if name.endswith("_DIR") else value


conf = MaintenanceSettings()
