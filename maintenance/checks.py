"""System checks: file-operation roots and the runs model must be safe and usable."""

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist

from maintenance import roots
from maintenance.conf import conf

RUN_FIELDS = ("status", "finished_at", "created_at", "artifacts_dir")


# One id per rule, stable (docs/operations.md).
ROOT_CHECK_IDS = {
    "root_relative": "maintenance.E001",
    "root_is_slash": "maintenance.E002",
    "root_symlink": "maintenance.E003",
    "root_missing": "maintenance.E004",
    "root_in_project": "maintenance.E005",
    "root_system": "maintenance.E006",
    "root_holds_state": "maintenance.E007",
    "root_overlap": "maintenance.E008",
}


@checks.register()
def check_roots(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages = []
    for setting in roots.ROOTS:
        path = getattr(conf, setting)
        default = path.is_absolute() and path.parent == Path(settings.VAR_DIR)
        try:  # a default under VAR_DIR is created on first use
            roots.check_root(setting, must_exist=not default)
        except roots.UnsafeRoot as exc:
            messages.append(
                checks.Error(
                    f"MAINTENANCE['{setting}'] is unsafe: {exc.message}",
                    hint="Point it at an existing absolute directory of its own, such as "
                    "VAR_DIR/tmp: not a symlink, not /, a system or home directory, not "
                    "VAR_DIR itself, and holding none of the project's code, state or logs "
                    "nor another root.",
                    id=ROOT_CHECK_IDS[exc.code],
                )
            )
    return messages


@checks.register()
def check_run_model(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        model = apps.get_model(conf.RUN_MODEL)
    except (LookupError, ValueError):
        return [
            checks.Error(
                f"MAINTENANCE['RUN_MODEL'] = {conf.RUN_MODEL!r} is not an installed model.",
                hint="Use 'app_label.ModelName'; the default is 'maintenance.Run'.",
                id="maintenance.E010",
            )
        ]
    missing = []
    for name in RUN_FIELDS:
        try:
            model._meta.get_field(name)
        except FieldDoesNotExist:
            missing.append(name)
    if missing:
        return [
            checks.Error(
                f"{conf.RUN_MODEL} lacks the fields cleanup_runs needs: {', '.join(missing)}.",
                hint=f"The runs model needs {', '.join(RUN_FIELDS)}.",
                id="maintenance.E011",
            )
        ]
    return []
