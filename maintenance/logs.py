"""The project's log format, a multi-process rotating file handler, and its parser.

A record is one line: `2026-11-28T19:59:20.123Z ERROR    app.module [4242] message`.
Every further line of the same record (a traceback, a message with newlines) starts with
two spaces, so a line inside a message can never pass for a record of its own.
"""

import fcntl
import gzip
import heapq
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

CONTINUATION = "  "
QUIET_SECONDS = 60  # a rotated file untouched this long is compressed at the next rotation
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RECORD = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"  # timestamp, UTC
    r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) +(\S+) \[\d+\] (.*)"  # level, logger, pid, message
)
MASKS = [
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
]  # fmt: skip


class LineFormatter(logging.Formatter):
    """Formats records in the documented one-line-per-record format, in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        text = text.replace("\r", "\\r").replace("\n", "\n" + CONTINUATION)
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        return f"{stamp} {record.levelname:<8} {record.name} [{record.process}] {text}"


class SharedRotatingFileHandler(RotatingFileHandler):
    """Size-based rotation safe with several processes appending to one file.

    Rotation happens under an flock and is a rename to `<name>.<UTC timestamp>`; a process
    whose file another one rotated reopens it before its next record. A rotated file is
    gzipped at a later rotation once nobody has written to it for a minute, and only the
    newest `backupCount` rotated files are kept.
    """

    def __init__(self, filename: str, **kwargs: Any) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("delay", True)
        super().__init__(filename, **kwargs)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is not None and self._rotated_elsewhere():
            self.stream.close()
            self.stream = self._open()
        return bool(super().shouldRollover(record))

    def _rotated_elsewhere(self) -> bool:
        try:
            return os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
        except FileNotFoundError:
            return True

    def doRollover(self) -> None:
        with open(f"{self.baseFilename}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                size = os.stat(self.baseFilename).st_size
            except FileNotFoundError:
                size = 0
            if self.stream is not None:
                self.stream.close()
                self.stream = None
            if size >= self.maxBytes:
                self._compress_previous()
                stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%f")
                os.rename(self.baseFilename, f"{self.baseFilename}.{stamp}")
                self._prune()
            self.stream = self._open()

    def _rotated(self) -> list[Path]:
        base = Path(self.baseFilename)
        names = [p for p in base.parent.glob(base.name + ".2*") if p.suffix != ".tmp"]
        return sorted(names, key=lambda p: p.name)

    def _compress_previous(self) -> None:
        """Gzip rotated files nobody has written to for a while (a process descheduled
        between its rotation check and its write may still append to a recent one)."""
        quiet_since = time.time() - QUIET_SECONDS
        for path in self._rotated():
            if path.suffix != ".gz" and path.stat().st_mtime < quiet_since:
                temporary = path.with_name(path.name + ".gz.tmp")
                with open(path, "rb") as raw, gzip.open(temporary, "wb", compresslevel=6) as packed:
                    shutil.copyfileobj(raw, packed)
                os.utime(temporary, (path.stat().st_atime, path.stat().st_mtime))
                os.rename(temporary, path.with_name(path.name + ".gz"))
                os.remove(path)

    def _prune(self) -> None:
        rotated = self._rotated()
        for path in rotated[: max(0, len(rotated) - self.backupCount)]:
            path.unlink(missing_ok=True)


def log_files(log_dir: Path, base_name: str, *, since: datetime) -> list[Path]:
    """The log files (rotated and .gz included) that may hold records since `since`."""
    if not log_dir.is_dir():
        return []
    files = [
        path
        for path in log_dir.iterdir()
        if path.name.startswith(base_name)
        and not path.name.endswith((".lock", ".tmp"))
        and path.is_file()
        and not path.is_symlink()
        and path.stat().st_mtime >= since.timestamp()
    ]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def read_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as handle:
        yield from handle


def mask(message: str) -> str:
    """A message with its numbers and ids masked, so repeats of one error group together."""
    for pattern, replacement in MASKS:
        message = pattern.sub(replacement, message)
    return message


class LogSummary:
    """Streaming counts over log lines; memory bounded by `max_distinct`."""

    def __init__(self, since: datetime, *, max_distinct: int) -> None:
        self.since = since.strftime("%Y-%m-%dT%H:%M:%S.") + f"{since.microsecond // 1000:03d}Z"
        self.max_distinct = max_distinct
        self.levels: Counter = Counter()
        self.loggers: Counter = Counter()
        self.errors: Counter = Counter()
        self.lines = self.records = self.continuation = self.unparseable = self.before = 0
        self.first: str | None = None
        self.last: str | None = None

    def feed(self, lines: Iterable[str]) -> None:
        match = RECORD.fullmatch
        for raw in lines:
            self.lines += 1
            line = raw.rstrip("\n")
            if line.startswith(CONTINUATION):
                self.continuation += 1
                continue
            found = match(line)
            if found is None:
                self.unparseable += 1
                continue
            stamp, level, logger, message = found.groups()
            if stamp < self.since:
                self.before += 1
                continue
            self.records += 1
            self.levels[level] += 1
            self._count(self.loggers, logger)
            if level in ("ERROR", "CRITICAL"):
                self._count(self.errors, mask(message)[:300])
            if self.first is None or stamp < self.first:
                self.first = stamp
            if self.last is None or stamp > self.last:
                self.last = stamp

    def _count(self, counter: Counter, key: str) -> None:
        if key in counter or len(counter) < self.max_distinct:
            counter[key] += 1
        else:
            counter["(other)"] += 1

    def result(self, *, top: int) -> dict[str, Any]:
        return {
            "records": self.records,
            "by_level": {level: self.levels.get(level, 0) for level in LEVELS},
            "by_logger": dict(heapq.nlargest(50, self.loggers.items(), key=lambda kv: kv[1])),
            "top_errors": [
                {"message": message, "count": count}
                for message, count in heapq.nlargest(top, self.errors.items(), key=lambda kv: kv[1])
            ],
            "first_record_at": self.first,
            "last_record_at": self.last,
            "lines_read": self.lines,
            "continuation_lines": self.continuation,
            "unparseable_lines": self.unparseable,
            "lines_before_window": self.before,
        }
