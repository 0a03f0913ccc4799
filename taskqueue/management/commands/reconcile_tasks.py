"""Run one reconciliation pass now (the cron process runs one every 60 s)."""

import json
from typing import Any

from django.core.management.base import BaseCommand

from taskqueue.services import reconcile_tasks


class Command(BaseCommand):
    help = "Make every non-terminal task converge with what RQ and Redis know."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = reconcile_tasks()
        self.stdout.write(json.dumps(counts or {"nothing_to_do": 0}, sort_keys=True))
