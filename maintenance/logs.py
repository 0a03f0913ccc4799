"""The project's log format, a multi-process rotating file handler, and its parser.

A record is one line: `2026-11-28T19:59:20.123Z ERROR    app.module [4242] message`.
Every further line of the same record (a traceback, a message with newlines) starts with
two spaces, so a line inside a message can never pass for a record of its own.
"""

import fcntl
import gzip
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

CONTINUATION = "  "
LOCK_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
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
        stamp = timestamp(datetime.fromtimestamp(record.created, tz=UTC))
        return f"{stamp} {record.levelname:<8} {record.name} [{record.process}] {text}"


def timestamp(moment: datetime) -> str:
    """A moment (UTC) as the log writes it: `2026-11-28T19:59:20.123Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SharedRotatingFileHandler(RotatingFileHandler):
    """Size-based rotation safe with several processes appending to one file.

    Each record is written holding a shared flock on `<name>.lock`, after reopening the file
    if another process rotated it; rotation converts that flock to an exclusive one, so once
    the rename to `<name>.<UTC timestamp>` is done nobody can still append to the rotated
    file. Compressing it is left to a background thread (one process at a time, under an
    flock on `<name>.compress.lock`): the logging call that rotates never waits for gzip.
    Only the newest `backupCount` rotated files are kept.
    """

    def __init__(self, filename: str, **kwargs: Any) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("delay", True)
        super().__init__(filename, **kwargs)
        self._pid: int | None = None  # the process the state below belongs to

    def _own(self) -> None:
        """Per-process state, renewed in a forked child (which must not share the parent's
        flock, held per open file, nor wait for the parent's thread)."""
        if self._pid == os.getpid():
            return
        if self._pid is not None:
            os.close(self._lock_fd)  # the parent's open file: closing it here releases nothing
        self._lock_fd = os.open(f"{self.baseFilename}.lock", LOCK_FLAGS, 0o644)
        self._compressing = threading.Lock()
        self._compressor: threading.Thread | None = None
        self._compress_again = False
        self._pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        rotated = False
        try:
            self._own()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            try:
                if self.stream is not None and self._rotated_elsewhere():
                    self.stream.close()
                    self.stream = self._open()
                if self.shouldRollover(record):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # the others finish their record
                    rotated = self._rotate()
                logging.FileHandler.emit(self, record)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)
        if rotated:
            self._compress_in_background()

    def _rotated_elsewhere(self) -> bool:
        try:
            return os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
        except FileNotFoundError:
            return True

    def doRollover(self) -> None:
        self._own()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            rotated = self._rotate()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        if rotated:
            self._compress_in_background()

    def _rotate(self) -> bool:
        """Rename the file if it is (still) full, the lock held exclusively; whether it was."""
        try:
            size = os.stat(self.baseFilename).st_size
        except FileNotFoundError:
            size = 0
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        rotated = size >= self.maxBytes
        if rotated:
            stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%f")
            os.rename(self.baseFilename, f"{self.baseFilename}.{stamp}")
            self._prune()
        self.stream = self._open()
        return rotated

    def _rotated(self) -> list[Path]:
        """The rotated files (compressed or not), oldest first; regular files only."""
        base = Path(self.baseFilename)
        names = [p for p in base.parent.glob(base.name + ".2*") if p.suffix != ".tmp"]
        return sorted((p for p in names if _regular(p)), key=lambda p: p.name)

    def _prune(self) -> None:
        rotated = self._rotated()
        for path in rotated[: max(0, len(rotated) - self.backupCount)]:
            path.unlink(missing_ok=True)

    def _compress_in_background(self) -> None:
        with self._compressing:
            self._compress_again = True
            if self._compressor is None:
                self._compressor = threading.Thread(
                    target=self._compress_while_wanted, name="log-compression", daemon=True
                )
                self._compressor.start()

    def _compress_while_wanted(self) -> None:
        while True:
            with self._compressing:
                if not self._compress_again:
                    self._compressor = None
                    return
                self._compress_again = False
            try:
                self._compress_rotated()
            except Exception:  # the thread must reach the reset above, whatever happens
                logging.getLogger(__name__).exception("Compressing rotated logs failed")

    def _compress_rotated(self) -> None:
        """Gzip every rotated file not compressed yet, one process at a time."""
        fd = os.open(f"{self.baseFilename}.compress.lock", LOCK_FLAGS, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            base = Path(self.baseFilename)
            for stale in base.parent.glob(base.name + ".2*.gz.tmp"):  # a compressor killed
                stale.unlink(missing_ok=True)
            for path in self._rotated():
                if path.suffix != ".gz":
                    compress(path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the file, after this process's compression has finished."""
        super().close()
        if self._pid == os.getpid():
            with self._compressing:
                thread = self._compressor
            if thread is not None and thread is not threading.current_thread():
                thread.join()
            os.close(self._lock_fd)
            self._pid = None


def compress(path: Path) -> None:
    """Replace a rotated file by `<name>.gz` (same times), atomically: a reader finds one
    or the other, complete; both for an instant, when log_files takes the .gz. Neither
    file is reached through a symlink."""
    packed = path.with_name(path.name + ".gz")
    temporary = path.with_name(path.name + ".gz.tmp")
    temporary.unlink(missing_ok=True)
    try:
        with (
            open(path, "rb", opener=_no_follow(os.O_RDONLY)) as raw,
            open(temporary, "wb", opener=_no_follow(os.O_CREAT | os.O_EXCL)) as out,
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as zipped,
        ):
            shutil.copyfileobj(raw, zipped, 1024 * 1024)
            times = os.fstat(raw.fileno())
    except FileNotFoundError:  # pruned meanwhile
        temporary.unlink(missing_ok=True)
        return
    os.utime(temporary, ns=(times.st_atime_ns, times.st_mtime_ns))
    os.rename(temporary, packed)
    path.unlink(missing_ok=True)


def _no_follow(extra: int) -> Callable[[str, int], int]:
    def opener(name: str, flags: int) -> int:
        return os.open(name, flags | extra | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    return opener


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def log_files(log_dir: Path, base_name: str, *, since: datetime) -> list[Path]:
    """The log files (rotated and .gz included) that may hold records since `since`.

    A rotated file not compressed yet is read as it is; one seen together with its .gz
    (caught between the two steps of `compress`) is read once, from the .gz.
    """
    if not log_dir.is_dir():
        return []
    files = {}
    for path in log_dir.iterdir():
        if not path.name.startswith(base_name) or path.name.endswith((".lock", ".tmp")):
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:  # compressed or pruned meanwhile
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mtime >= since.timestamp():
            files[path] = st.st_mtime
    for path in list(files):
        if path.with_name(path.name + ".gz") in files:
            del files[path]
    return sorted(files, key=files.__getitem__)


def mask(message: str) -> str:
    """A message with its numbers and ids masked, so repeats of one error group together."""
    for pattern, replacement in MASKS:
        message = pattern.sub(replacement, message)
    return message
