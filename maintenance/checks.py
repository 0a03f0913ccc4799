"""System checks: file-operation roots and the runs model must be safe and usable."""

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist

from maintenance import fs
from maintenance.conf import conf

RUN_FIELDS = ("status", "finished_at", "created_at", "artifacts_dir")


@checks.register()
def check_roots(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages = []
    var_dir = Path(settings.VAR_DIR)
    for setting in ("TEMP_DIR", "ARTIFACTS_DIR", "LOG_DIR"):
        path = getattr(conf, setting)
        if not path.exists() and path.is_absolute() and path.parent == var_dir:
            continue  # the default, created on first use
        try:
            fs.check_root(path, project_dir=settings.BASE_DIR, var_dir=var_dir, name=setting)
        except fs.UnsafeRoot as exc:
            messages.append(
                checks.Error(
                    f"MAINTENANCE['{setting}'] is unsafe: {exc.message}",
                    hint="Point it at an existing absolute directory of its own, outside "
                    "the project's code, that is not / and not a symlink.",
                    id=f"maintenance.E00{1 + len(messages)}",
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
