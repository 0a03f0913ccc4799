"""System checks: task type overrides and policies that cannot work."""

from typing import Any

from django.core import checks

from taskqueue import registry
from taskqueue.conf import conf


@checks.register()
def check_task_types(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    overrides = conf.TASK_TYPES
    if not isinstance(overrides, dict):
        return [
            checks.Error(
                "TASKQUEUE['TASK_TYPES'] must be a dict of type name -> policy overrides.",
                hint='For example {"health_check": {"max_attempts": 3}}.',
                id="taskqueue.E001",
            )
        ]
    known = {t.name for t in registry.task_types()}
    for name in sorted(set(overrides) - known):
        messages.append(
            checks.Error(
                f"TASKQUEUE['TASK_TYPES'] overrides an unknown task type {name!r}.",
                hint=f"Registered types: {', '.join(sorted(known))}.",
                id="taskqueue.E002",
            )
        )
    for task_type in registry.task_types():
        try:
            policy = task_type.policy
        except (TypeError, ValueError) as exc:
            messages.append(
                checks.Error(
                    f"Bad policy override for task type {task_type.name!r}: {exc}.",
                    hint="Fix TASKQUEUE['TASK_TYPES'] in settings.",
                    id="taskqueue.E003",
                )
            )
            continue
        for problem in policy.errors():
            messages.append(
                checks.Error(
                    f"Task type {task_type.name!r}: {problem}.",
                    hint="Fix the registration or TASKQUEUE['TASK_TYPES'] in settings.",
                    id="taskqueue.E003",
                )
            )
    return messages
