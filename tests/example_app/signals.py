"""Records Django's task signals, in whichever process sends them, to a file (for tests).

The file is EXAMPLE_SIGNAL_LOG when set; each line is `<signal> <task id> <status>`.
"""

import os

try:
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:
    from django_tasks.signals import task_enqueued, task_finished, task_started


def _record(name: str):
    def receiver(sender, task_result, **kwargs) -> None:
        path = os.environ.get("EXAMPLE_SIGNAL_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{name} {task_result.id} {task_result.status}\n")

    return receiver


_receivers = {name: _record(name) for name in ("enqueued", "started", "finished")}
task_enqueued.connect(_receivers["enqueued"], dispatch_uid="example-enqueued")
task_started.connect(_receivers["started"], dispatch_uid="example-started")
task_finished.connect(_receivers["finished"], dispatch_uid="example-finished")
