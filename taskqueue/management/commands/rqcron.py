"""django-rq's `rqcron` without its own start-up lines.

django-rq writes "Loading cron configuration from …" and "Starting cron scheduler with N
jobs…" to stdout, and RQ's cron logger then logs the same, timestamped: every start printed
them twice. The logger's lines are kept. (`taskqueue` precedes `django_rq` in INSTALLED_APPS
so that this command is the one `manage.py rqcron` runs.)
"""

import io
from typing import Any

from django.core.management.base import OutputWrapper
from django_rq.management.commands.rqcron import Command as DjangoRQCronCommand


class Command(DjangoRQCronCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout = OutputWrapper(io.StringIO())
        super().handle(*args, **options)
