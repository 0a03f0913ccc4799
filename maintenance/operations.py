"""The four maintenance operations: plain typed functions returning JSON-able results.

Registered as task types in maintenance/tasks.py; callable directly too.
"""

import errno
import math
import os
import re
import shutil
import stat
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from maintenance import fs, roots
from maintenance.conf import conf
from maintenance.logs import log_files, timestamp
from maintenance.logstats.files import read_logs
from maintenance.logstats.summary import LogSummary
from maintenance.models import PendingArtifactRemoval
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


class Report:
    """Counts, skip reasons and a bounded list of errors, shared by the file operations."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.skipped: Counter = Counter()
        self.errors: list[str] = []
        self.last = ""  # the latest error or skip, described

    def error(self, where: str, exc: OSError) -> None:
        self.skipped[_reason(exc)] += 1
        self.last = f"{fs.describe(where)}: {exc.strerror or exc}"
        if len(self.errors) < conf.MAX_ERRORS_REPORTED:
            self.errors.append(self.last)

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.last = f"{fs.describe(where)}: {SKIP_REASONS[reason]}"


SKIP_REASONS = {
    "outside_root": "not below the root",
    "mount_point": "a mount point, not entered",
    "too_deep": "deeper than MAX_TREE_DEPTH",
    "special_file": "a FIFO, socket or device",
    "symlink_or_changed": "a symlink or changed while walked",
}


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if fs.is_missing(exc):
        return "vanished"
    if exc.errno == errno.EXDEV:
        return "mount_point"
    return "symlink_or_changed" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else "error"


# cleanup_runs ------------------------------------------------------------------------


def cleanup_runs(max_age_hours: int = 24, dry_run: bool = False) -> dict[str, Any]:
    """Delete finished runs older than the cutoff, with their artifact directories."""
    cutoff = timezone.now() - timedelta(hours=max_age_hours)
    root = checked_root("ARTIFACTS_DIR")
    model = run_model()
    old = model.objects.filter(status__in=conf.RUN_FINISHED_STATUSES).filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    )
    total = old.count()
    report = Report()
    with fs.open_dir(root) as root_fd:
        sweep = _Sweep(root_fd, report, cutoff=math.inf, dry_run=dry_run, whole_trees=True)
        journal = _Journal(sweep, root)
        retried = journal.drain()  # left by an interrupted or failed run
        last_pk = None
        while True:
            batch = old.order_by("pk")
            if last_pk is not None:
                batch = batch.filter(pk__gt=last_pk)
            rows = list(batch.values_list("pk", "artifacts_dir")[: conf.CLEANUP_BATCH_SIZE])
            if not rows:
                break
            last_pk = rows[-1][0]
            if dry_run:
                report.counts["runs"] += len(rows)
                for _, path in rows:
                    _remove_artifacts(sweep, root, path)
            else:
                _delete_batch(old, [pk for pk, _ in rows], report)
                journal.drain()
            report_progress(
                100 * report.counts["runs"] / max(total, 1), f"{report.counts['runs']} runs"
            )
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


def _delete_batch(old: models.QuerySet, ids: list[int], report: Report) -> None:
    """Delete a batch of runs and journal their directories, in one transaction."""
    with transaction.atomic():
        rows = list(old.filter(pk__in=ids).select_for_update().values_list("pk", "artifacts_dir"))
        PendingArtifactRemoval.objects.bulk_create(
            [PendingArtifactRemoval(path=path) for _, path in rows if path]
        )
        old.model.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
    report.counts["runs"] += len(rows)


class _Journal:
    """The PendingArtifactRemoval rows, each tried once a run: deleted once its directory is
    gone, kept with its attempts and last error when the removal failed (retried next run).
    A dry run only reports them."""

    def __init__(self, sweep: "_Sweep", root: Path) -> None:
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


def _remove_artifacts(sweep: "_Sweep", root: Path, path: str) -> str | None:
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
    with fs.open_dir(root) as root_fd:
        report = Report()
        _Sweep(root_fd, report, cutoff=cutoff, dry_run=dry_run).directory(root_fd, "", 0)
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


class _Sweep:
    """The one removal routine of both cleanups: a depth-first walk by directory file
    descriptors that removes what is older than `cutoff`, never opens a non-directory,
    never follows a symlink and never enters another mount (bind mounts included).

    `whole_trees` (a run's artifacts) also unlinks FIFOs, sockets and devices, and reports
    no progress of its own.
    """

    def __init__(
        self,
        root_fd: int,
        report: Report,
        *,
        cutoff: float,
        dry_run: bool,
        whole_trees: bool = False,
    ) -> None:
        self.root_fd = root_fd
        self.mount = fs.mount_of(root_fd)
        self.report = report
        self.cutoff = cutoff
        self.dry_run = dry_run
        self.whole_trees = whole_trees
        self.seen = 0

    def directory(self, fd: int, path: str, depth: int) -> tuple[bool, bool]:
        """Sweep one directory; (it is now empty, something in it was removed)."""
        try:
            names = [entry.name for entry in os.scandir(fd)]
        except OSError as exc:
            self.report.error(path or ".", exc)
            return False, False
        kept = removed = 0
        for name in names:
            where = f"{path}/{name}" if path else name
            if self.entry(fd, name, where, depth):
                removed += 1
            else:
                kept += 1
        return kept == 0, removed > 0

    def entry(self, fd: int, name: str, where: str, depth: int) -> bool:
        """Sweep one entry; True when it is (or would be) gone."""
        self.seen += 1
        if self.seen % 5000 == 0 and not self.whole_trees:
            report_progress(None, f"{self.seen} entries examined")
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return self._subdirectory(fd, name, where, st, depth)
            special = not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))
            if special and not self.whole_trees:
                self.report.skip(where, "special_file")
                return False
            if st.st_mtime >= self.cutoff:
                self.report.counts["recent"] += 1
                return False
            if not self.dry_run:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            self.report.skipped["vanished"] += 1
            return True
        except OSError as exc:
            self.report.error(where, exc)
            return False
        if stat.S_ISLNK(st.st_mode):
            self.report.counts["links"] += 1
        else:
            self.report.counts["files"] += 1
            self.report.counts["bytes"] += st.st_size if st.st_nlink <= 1 else 0
        return True

    def _subdirectory(self, fd: int, name: str, where: str, st: os.stat_result, depth: int) -> bool:
        if st.st_dev != self.mount[0]:
            self.report.skip(where, "mount_point")
            return False
        if depth >= conf.MAX_TREE_DEPTH:
            self.report.skip(where, "too_deep")
            return False
        with fs.open_dir(name, dir_fd=fd) as sub:
            opened = os.fstat(sub)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                self.report.skip(where, "symlink_or_changed")
                return False
            if fs.mount_id(sub) != self.mount[1]:
                self.report.skip(where, "mount_point")
                return False
            empty, removed_any = self.directory(sub, where, depth + 1)
        if not empty or not (removed_any or st.st_mtime < self.cutoff):
            return False
        if not self.dry_run:
            os.rmdir(name, dir_fd=fd)
        self.report.counts["dirs"] += 1
        return True


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
