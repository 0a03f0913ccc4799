"""Delete finished tasks past TASK_RETENTION_DAYS (failed: FAILED_TASK_RETENTION_DAYS)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskqueue.services.retention import prune_tasks


class Command(BaseCommand):
    help = "Delete finished tasks past their retention (the cron process does it daily)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Only count them.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(json.dumps(prune_tasks(dry_run=options["dry_run"]), sort_keys=True))
