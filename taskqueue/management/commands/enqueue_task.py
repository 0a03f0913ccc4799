"""Enqueue any registered task type from the shell, optionally waiting for its end."""

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskqueue.exceptions import InvalidPayload, UnknownTaskType
from taskqueue.models import Task
from taskqueue.registry import task_types
from taskqueue.services import enqueue_task


class Command(BaseCommand):
    help = (
        "Enqueue a task: enqueue_task ping --wait; enqueue_task cleanup_runs --set max_age_hours=48"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_type", help="A registered task type (--list shows them).")
        parser.add_argument("--payload", default="{}", help="The payload as a JSON object.")
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="One payload field; VALUE is parsed as JSON when it can be. Repeatable.",
        )
        parser.add_argument("--wait", action="store_true", help="Follow the task to its end.")
        parser.add_argument(
            "--wait-timeout", type=float, default=600, help="Seconds to wait with --wait."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        payload = self._payload(options["payload"], options["set"])
        try:
            task, created = enqueue_task(options["task_type"], payload, source="shell")
        except UnknownTaskType as exc:
            names = ", ".join(t.name for t in task_types())
            raise CommandError(f"{exc.message} Registered types: {names}.") from None
        except InvalidPayload as exc:
            raise CommandError(f"Invalid payload: {json.dumps(exc.errors)}") from None
        verb = "Enqueued" if created else "Already active:"
        self.stdout.write(f"{verb} task {task.pk} ({task.task_type}) on queue {task.queue}")
        if options["wait"]:
            self._wait(task, options["wait_timeout"])

    def _payload(self, raw: str, assignments: list[str]) -> dict[str, Any]:
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object.")
        for item in assignments:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise CommandError(f"--set expects NAME=VALUE, not {item!r}.")
            try:
                payload[name] = json.loads(value)
            except json.JSONDecodeError:
                payload[name] = value
        return payload

    def _wait(self, task: Task, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            task.refresh_from_db()
            if task.status != status:
                status = task.status
                self.stdout.write(f"  {status} (attempt {task.attempts}/{task.max_attempts})")
            if task.is_terminal:
                break
            time.sleep(0.2)
        else:
            raise CommandError(f"Task {task.pk} is still {task.status} after {timeout:.0f}s.")
        body = {"task_id": task.pk, "status": task.status, "result": task.result}
        if task.error_code:
            body |= {"error_code": task.error_code, "error_message": task.error_message}
        self.stdout.write(json.dumps(body, indent=2))
        if task.status != Task.Status.COMPLETED:
            raise CommandError(f"Task {task.pk} ended {task.status}.", returncode=1)
