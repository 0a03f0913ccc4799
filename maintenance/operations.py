"""The four maintenance operations: plain typed functions returning JSON-able results.

Registered as task types in maintenance/tasks.py; callable directly too.
"""

import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Max, Min, Q
from django.utils import timezone

from maintenance import fs, roots
from maintenance.conf import conf
from maintenance.logs import log_files, timestamp
from maintenance.logstats.files import read_logs
from maintenance.logstats.summary import LogSummary
from maintenance.models import PendingArtifactRemoval
from maintenance.sweep import Report, Sweep, Unfinished
from taskqueue.exceptions import TaskError
from taskqueue.progress import report_progress
from taskqueue.services import alerts, monitoring


def checked_root(setting: str) -> Path:
    """A configured root, created when it is the default under VAR_DIR; TaskError if unsafe."""
    try:
        path = roots.check_root(setting, must_exist=False)
        if not path.exists() and path.parent == Path(settings.VAR_DIR):
            path.mkdir(parents=True, exist_ok=True)
        return roots.check_root(setting)
    except roots.UnsafeRoot as exc:
        raise TaskError(exc.code, exc.message, retryable=False) from None


def run_model() -> type[models.Model]:
    return apps.get_model(conf.RUN_MODEL)


# cleanup_runs ------------------------------------------------------------------------


def cleanup_runs(max_age_hours: int = 24, dry_run: bool = False) -> dict[str, Any]:
    """Delete finished runs older than the cutoff, with their artifact directories."""
    cutoff = timezone.now() - timedelta(hours=max_age_hours)
    root = checked_root("ARTIFACTS_DIR")
    model = run_model()
    report = Report()
    with fs.open_dir(root) as root_fd:
        sweep = Sweep(root_fd, report, cutoff=math.inf, dry_run=dry_run, whole_trees=True)
        journal = _Journal(sweep, root)
        retried = journal.drain()  # left by an interrupted or failed run
        for rows, done in _old_runs(model, cutoff):
            if dry_run:
                report.counts["runs"] += len(rows)
                for _, path in rows:
                    _remove_artifacts(sweep, root, path)
            elif rows:
                _delete_batch(model, [pk for pk, _ in rows], cutoff, report)
                journal.drain()
            report_progress(100 * done, f"{report.counts['runs']} runs")
    return {
        "cutoff": cutoff.isoformat(),
        "max_age_hours": max_age_hours,
        "dry_run": dry_run,
        "runs_deleted": report.counts["runs"],
        "artifact_dirs_removed": report.counts["artifacts"],
        "bytes_removed": report.counts["bytes"],
        "removals_retried": retried,
        "removals_failed": report.counts["failed"],
        "skipped": dict(report.skipped),
        "errors": report.errors,
    }


def _old_runs(
    model: type[models.Model], cutoff: datetime
) -> Iterator[tuple[list[tuple[Any, str]], float]]:
    """(pk, artifacts_dir) of the runs to delete, a batch at a time, each with the share of
    the table walked so far.

    The table is walked in primary key order, by ranges of keys that hold a batch at most,
    and whether a run is old is a column of the result, not a condition: each query reads a
    batch of rows whatever the planner thinks of the table. (A filter on status and finish
    time ordered by pk had PostgreSQL, with the statistics of a table just filled, sort all
    the old runs again for every batch: 100,000 runs in 7 s, a million in hours.)
    """
    bounds = model.objects.aggregate(low=Min("pk"), high=Max("pk"))
    low, high = bounds["low"], bounds["high"]
    if high is None:
        return
    batch, numeric = conf.CLEANUP_BATCH_SIZE, isinstance(high, int)
    last, step = (low - 1, batch) if numeric else (None, None)
    while last is None or last < high:
        page = model.objects.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        if step is not None:  # keys sparse, the range widens; never more than a batch read
            page = page.filter(pk__lte=min(high, last + step))
        rows = list(_judged(page, cutoff)[:batch])
        if len(rows) == batch or step is None:
            if not rows:
                return
            last, step = rows[-1][0], step and batch
        else:
            last, step = last + step, step * 2 if len(rows) <= batch // 4 else step
        done = 1.0 if last >= high else (last - low) / (high - low) if numeric else 0.0
        yield [(pk, path) for pk, path, old in rows if old], done


def _judged(runs: models.QuerySet, cutoff: datetime) -> models.QuerySet:
    """(pk, artifacts_dir, whether finished before the cutoff) of the runs."""
    old = Q(status__in=conf.RUN_FINISHED_STATUSES) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    )
    judged = runs.annotate(old=ExpressionWrapper(old, output_field=BooleanField()))
    return judged.values_list("pk", "artifacts_dir", "old")


def _delete_batch(model: type[models.Model], ids: list, cutoff: datetime, report: Report) -> None:
    """Delete a batch of runs, still old once locked, and journal their directories, in one
    transaction."""
    with transaction.atomic():
        runs = model.objects.filter(pk__in=ids).order_by("pk").select_for_update()
        locked = _judged(runs, cutoff)
        rows = [(pk, path) for pk, path, old in locked if old]
        if not rows:
            return
        PendingArtifactRemoval.objects.bulk_create(
            [PendingArtifactRemoval(path=path) for _, path in rows if path]
        )
        model.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
    report.counts["runs"] += len(rows)


class _Journal:
    """The PendingArtifactRemoval rows, each tried once a run: deleted once its directory is
    gone, kept with its attempts and last error when the removal failed (retried next run).
    A dry run only reports them."""

    def __init__(self, sweep: "Sweep", root: Path) -> None:
        self.sweep, self.root, self.dry_run = sweep, root, sweep.dry_run
        self.tried_up_to = 0  # rows with a greater pk are the ones not yet tried in this run

    def drain(self) -> int:
        """Try the rows not yet tried in this run; how many there were."""
        tried = 0
        rows = PendingArtifactRemoval.objects.order_by("pk").values_list("pk", "path")
        while pending := list(rows.filter(pk__gt=self.tried_up_to)[:500]):
            self.tried_up_to = pending[-1][0]
            tried += len(pending)
            done = []
            for pk, path in pending:
                problem = _remove_artifacts(self.sweep, self.root, path)
                if problem is None:
                    done.append(pk)
                elif not self.dry_run:
                    PendingArtifactRemoval.objects.filter(pk=pk).update(
                        attempts=F("attempts") + 1,
                        last_error=problem,
                        last_attempt_at=timezone.now(),
                    )
            if not self.dry_run:
                PendingArtifactRemoval.objects.filter(pk__in=done).delete()
        return tried


def _remove_artifacts(sweep: "Sweep", root: Path, path: str) -> str | None:
    """Remove a run's artifacts; None once they are gone (or can never be ours to remove),
    else why they are still there."""
    report = sweep.report
    parts = fs.relative_parts(path, root) if path else []
    if parts is None:
        report.skip(path, "outside_root")
    if not parts:
        return None
    try:
        with fs.open_parent(sweep.root_fd, parts, mount=sweep.mount) as parent:
            os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            report.last = "not removed"
            gone = sweep.entry(parent, parts[-1], path, 0)
    except FileNotFoundError:
        return None  # already gone
    except OSError as exc:
        report.error(path, exc)
        gone = False
    if gone:
        report.counts["artifacts"] += 1
        return None
    report.counts["failed"] += 1
    return report.last


# cleanup_temp_files ------------------------------------------------------------------


def cleanup_temp_files(max_age_hours: int = 24, dry_run: bool = False) -> dict[str, Any]:
    """Delete old regular files under TEMP_DIR and the directories that leaves empty."""
    root = checked_root("TEMP_DIR")
    cutoff = time.time() - max_age_hours * 3600
    unfinished = Unfinished(root, Path(settings.VAR_DIR), write=not dry_run)
    with fs.open_dir(root) as root_fd:
        report = Report()
        sweep = Sweep(root_fd, report, cutoff=cutoff, dry_run=dry_run, unfinished=unfinished)
        sweep.directory(root_fd, "", 0)
    unfinished.finish()
    return {
        "cutoff": datetime.fromtimestamp(cutoff, tz=UTC).isoformat(),
        "max_age_hours": max_age_hours,
        "dry_run": dry_run,
        "files_removed": report.counts["files"],
        "links_removed": report.counts["links"],
        "dirs_removed": report.counts["dirs"],
        "bytes_freed": report.counts["bytes"],
        "kept_recent": report.counts["recent"],
        "skipped": dict(report.skipped),
        "errors": report.errors,
    }


# health_check ------------------------------------------------------------------------


def health_check() -> dict[str, Any]:
    """Check and time the database, Redis, queues, workers, cron, disks and failure rate."""
    checks: dict[str, dict[str, Any]] = {}
    for name, probe in _PROBES:
        started = time.perf_counter()
        try:
            check = probe()
        except Exception as exc:  # a probe that raises is a failed check, not a failed task
            check = {"status": "down" if name in ("database", "redis") else "degraded"}
            check["reason"] = f"{type(exc).__name__}: {_redact(str(exc))}"
        check["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        checks[name] = check
    statuses = {check["status"] for check in checks.values()}
    overall = "down" if "down" in statuses else "degraded" if "degraded" in statuses else "ok"
    reasons = [f"{name}: {c['reason']}" for name, c in checks.items() if c["status"] != "ok"]
    return {"status": overall, "reasons": reasons, "checks": checks}


def _redact(text: str) -> str:
    """Drop anything that looks like a URL or a password from an error message."""
    text = re.sub(r"\b[a-z][a-z0-9+.-]*://\S+", "<url>", text, flags=re.IGNORECASE)
    return re.sub(r"password\S*", "<redacted>", text, flags=re.IGNORECASE)[:300]


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"status": "ok", "vendor": connection.vendor}


def _check_redis() -> dict[str, Any]:
    return {"status": "ok", **monitoring.redis_stats()}


def _check_queues() -> dict[str, Any]:
    queues = monitoring.queue_stats()
    limit = conf.QUEUE_MAX_AGE_SECONDS
    late = [q["name"] for q in queues if (q["oldest_age_seconds"] or 0) > limit]
    check: dict[str, Any] = {"status": "degraded" if late else "ok", "queues": queues}
    if late:
        check["reason"] = f"oldest job waits more than {limit}s on {', '.join(late)}"
    return check


def _processes_check(key: str, processes: list[dict[str, Any]], missing: str) -> dict[str, Any]:
    alive = sum(1 for process in processes if process["alive"])
    check: dict[str, Any] = {
        "status": "ok" if alive else "degraded",
        "alive": alive,
        key: processes,
    }
    if not alive:
        check["reason"] = missing
    return check


def _check_workers() -> dict[str, Any]:
    return _processes_check("workers", monitoring.worker_stats(), "no worker is alive")


def _check_cron() -> dict[str, Any]:
    check = _processes_check(
        "schedulers",
        monitoring.cron_stats(),
        "no cron process is alive (reconciler and schedules are not running)",
    )
    if check["alive"] > 1:
        check["status"] = "degraded"
        check["reason"] = f"{check['alive']} cron processes run; run exactly one"
    return check


def _check_disks() -> dict[str, Any]:
    disks, low = {}, []
    for setting in ("TEMP_DIR", "LOG_DIR", "ARTIFACTS_DIR"):
        path = getattr(conf, setting)
        target = path if path.exists() else path.parent
        usage = shutil.disk_usage(target)
        percent = 100 * usage.free / usage.total if usage.total else 0.0
        ok = percent >= conf.DISK_MIN_FREE_PERCENT and usage.free >= conf.DISK_MIN_FREE_BYTES
        disks[setting] = {"free_bytes": usage.free, "free_percent": round(percent, 2), "ok": ok}
        if not ok:
            low.append(setting)
    check: dict[str, Any] = {"status": "degraded" if low else "ok", "disks": disks}
    if low:
        check["reason"] = f"low free space for {', '.join(low)}"
    return check


def _check_failure_rate() -> dict[str, Any]:
    alert = monitoring.failure_rate_alert(timedelta(hours=1))
    check: dict[str, Any] = {"status": "degraded" if alert["firing"] else "ok", **alert}
    if alert["firing"]:
        check["reason"] = (
            f"{alert['rate']:.0%} of tasks failed in the last hour (> {alert['threshold']:.0%})"
        )
    return check


def _check_alerts() -> dict[str, Any]:
    firing = alerts.firing_alerts()
    check: dict[str, Any] = {"status": "degraded" if firing else "ok", "firing": firing}
    if firing:
        check["reason"] = "; ".join(f"{name}: {a['message']}" for name, a in sorted(firing.items()))
    return check


_PROBES = [
    ("database", _check_database),
    ("redis", _check_redis),
    ("queues", _check_queues),
    ("workers", _check_workers),
    ("cron", _check_cron),
    ("disks", _check_disks),
    ("failure_rate", _check_failure_rate),
    ("alerts", _check_alerts),
]


# log_statistics ----------------------------------------------------------------------


def log_statistics(hours: int = 24) -> dict[str, Any]:
    """Counts by level and logger, top errors, over the project's logs of the last hours."""
    since = timezone.now() - timedelta(hours=hours)
    files = log_files(conf.LOG_DIR, conf.LOG_FILE_NAME, since=since)
    summary = LogSummary(timestamp(since), max_distinct=conf.LOG_MAX_DISTINCT_MESSAGES)
    processes = conf.LOG_READ_PROCESSES or min(4, len(os.sched_getaffinity(0)))
    read = read_logs(files, summary, processes=processes, progress=report_progress)
    return {
        "hours": hours,
        "since": since.isoformat(),
        "files": [path.name for path in files],
        "bytes_read": read,
        **summary.result(top=conf.LOG_TOP_MESSAGES),
    }
