"""Create demo runs with artifacts, old and new temp files and a week of logs."""

import gzip
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from maintenance.conf import conf
from maintenance.logs import CONTINUATION
from maintenance.models import Run
from maintenance.operations import checked_root
from taskqueue.exceptions import TaskError

JOBS = ["nightly-import", "report-build", "thumbnail-render", "index-rebuild", "export-csv"]
LOGGERS = ["app.api", "app.import", "taskqueue.execution", "django.request", "app.reports"]
MESSAGES = [
    ("INFO", "Imported {n} rows from batch {n}"),
    ("INFO", "GET /api/items/{n} 200"),
    ("WARNING", "Slow query took {n} ms"),
    ("ERROR", "Upstream timeout after {n} ms for order {n}"),
    ("ERROR", "Could not render thumbnail {hex}"),
    ("CRITICAL", "Disk quota exceeded on volume {n}"),
]


class Command(BaseCommand):
    help = "Create demo data for every maintenance operation (runs, temp files, logs)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=200)
        parser.add_argument("--temp-files", type=int, default=100)
        parser.add_argument("--log-days", type=int, default=7)
        parser.add_argument("--log-lines-per-day", type=int, default=2000)
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        rng = random.Random(options["seed"])
        try:
            artifacts, temp = checked_root("ARTIFACTS_DIR"), checked_root("TEMP_DIR")
        except TaskError as exc:
            self.stderr.write(exc.message)
            return
        runs = self._runs(rng, artifacts, options["runs"])
        files = self._temp_files(rng, temp, options["temp_files"])
        lines = self._logs(rng, options["log_days"], options["log_lines_per_day"])
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {runs} runs (artifacts under {artifacts}), {files} temp files "
                f"under {temp}, {lines} log lines under {conf.LOG_DIR}."
            )
        )

    def _runs(self, rng: random.Random, root: Path, count: int) -> int:
        now = timezone.now()
        runs = []
        for _ in range(count):
            created = now - timedelta(hours=rng.uniform(0, 240))
            status = rng.choices(list(Run.Status), weights=[1, 1, 6, 2, 1])[0]
            finished = status not in (Run.Status.PENDING, Run.Status.RUNNING)
            started = created + timedelta(seconds=rng.uniform(1, 60))
            ended = started + timedelta(seconds=rng.uniform(5, 900))
            runs.append(
                Run(
                    name=rng.choice(JOBS),
                    status=status,
                    created_at=created,
                    started_at=None if status == Run.Status.PENDING else started,
                    finished_at=ended if finished else None,
                )
            )
        Run.objects.bulk_create(runs)
        for run in Run.objects.filter(artifacts_dir="").order_by("-pk")[:count]:
            relative = f"runs/{run.created_at:%Y%m%d}/{run.pk}"
            directory = root / relative
            directory.mkdir(parents=True, exist_ok=True)
            size = 0
            for n in range(rng.randint(1, 4)):
                data = os.urandom(rng.randint(512, 64 * 1024))
                (directory / f"output-{n}.bin").write_bytes(data)
                size += len(data)
            Run.objects.filter(pk=run.pk).update(artifacts_dir=relative, artifacts_bytes=size)
        return count

    def _temp_files(self, rng: random.Random, root: Path, count: int) -> int:
        for n in range(count):
            directory = root / f"upload-{rng.randint(1, 10)}"
            directory.mkdir(exist_ok=True)
            path = directory / f"chunk-{n}.part"
            path.write_bytes(os.urandom(rng.randint(100, 20000)))
            age = rng.uniform(0, 96) * 3600  # half of them older than a day
            os.utime(path, (time.time() - age, time.time() - age))
        return count

    def _logs(self, rng: random.Random, days: int, per_day: int) -> int:
        conf.LOG_DIR.mkdir(parents=True, exist_ok=True)
        now = datetime.now(tz=UTC)
        for day in range(days, 0, -1):
            start = now - timedelta(days=day)
            path = conf.LOG_DIR / f"{conf.LOG_FILE_NAME}.demo-{start:%Y%m%d}.gz"
            with gzip.open(path, "wt", encoding="utf-8") as handle:
                for i in range(per_day):
                    handle.write(self._line(rng, start + timedelta(seconds=i * 86400 / per_day)))
            mtime = (start + timedelta(days=1)).timestamp()
            os.utime(path, (mtime, mtime))
        return days * per_day

    def _line(self, rng: random.Random, moment: datetime) -> str:
        level, template = rng.choices(MESSAGES, weights=[50, 30, 10, 5, 4, 1])[0]
        message = template.replace("{hex}", f"{rng.getrandbits(64):016x}")
        while "{n}" in message:
            message = message.replace("{n}", str(rng.randint(1, 99999)), 1)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        line = f"{stamp} {level:<8} {rng.choice(LOGGERS)} [{rng.randint(100, 9999)}] {message}\n"
        if level == "ERROR" and rng.random() < 0.3:
            line += f"{CONTINUATION}Traceback (most recent call last):\n{CONTINUATION}  ...\n"
        return line
