"""The one removal routine of both cleanups, and what it reports.

A depth-first walk by directory file descriptors that removes what is older than a cutoff,
never opens a non-directory, never follows a symlink and never enters another mount (bind
mounts included). A directory is read as it is walked, never listed whole, so a million
entries cost no more memory than ten. A walk killed halfway is finished by the next one:
what it had removed is gone, what it had not is still there, and the directories it had
removed something from, which now look recently modified, are written down as it goes
(`Unfinished`) so that the next walk removes them when it finds them empty, as the first
would have.
"""

import errno
import hashlib
import os
import stat
from collections import Counter
from pathlib import Path

from maintenance import fs
from maintenance.conf import conf
from taskqueue.progress import report_progress

SKIP_REASONS = {
    "outside_root": "not below the root",
    "mount_point": "a mount point, not entered",
    "too_deep": "deeper than MAX_TREE_DEPTH",
    "special_file": "a FIFO, socket or device",
    "symlink_or_changed": "a symlink or changed while walked",
}


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


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if fs.is_missing(exc):
        return "vanished"
    if exc.errno == errno.EXDEV:
        return "mount_point"
    return "symlink_or_changed" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else "error"


class Unfinished:
    """The directories below a root that a walk removed something from and had not finished
    with, kept in a file under VAR_DIR while it runs: `+` and a directory when the first
    removal in it is about to happen, `-` once it is removed or kept. A walk killed leaves
    its open directories (at most its depth) to the next one, which takes them as if it had
    removed something from them itself."""

    def __init__(self, root: Path, var_dir: Path, *, write: bool) -> None:
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        self.path = var_dir / "cleanup" / f"temp-files-{digest}.unfinished"
        self.inherited = self._read()
        self.fd: int | None = None
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = b"".join(b"+" + os.fsencode(d).hex().encode() + b"\n" for d in self.inherited)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(lines)
            os.replace(temporary, self.path)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _read(self) -> set[str]:
        live: set[str] = set()
        try:
            with open(self.path, "rb") as journal:
                for line in journal:
                    if line[:1] in (b"+", b"-") and line.endswith(b"\n"):  # else torn: a kill
                        where = os.fsdecode(bytes.fromhex(line[1:-1].decode()))
                        (live.add if line[:1] == b"+" else live.discard)(where)
        except (FileNotFoundError, ValueError):
            pass
        return live

    def opened(self, where: str) -> None:
        os.write(self.fd, b"+" + os.fsencode(where).hex().encode() + b"\n")

    def closed(self, where: str) -> None:
        os.write(self.fd, b"-" + os.fsencode(where).hex().encode() + b"\n")

    def finish(self) -> None:
        """The walk is over: nothing is left to the next one."""
        if self.fd is not None:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)


class Sweep:
    """The removal walk (see the module's docstring).

    `whole_trees` (a run's artifacts) also unlinks FIFOs, sockets and devices, and reports
    no progress of its own. `unfinished`, when given, is kept up to date as the walk goes.
    """

    def __init__(
        self,
        root_fd: int,
        report: Report,
        *,
        cutoff: float,
        dry_run: bool,
        whole_trees: bool = False,
        unfinished: Unfinished | None = None,
    ) -> None:
        self.root_fd = root_fd
        self.mount = fs.mount_of(root_fd)
        self.report = report
        self.cutoff = cutoff
        self.dry_run = dry_run
        self.whole_trees = whole_trees
        self.unfinished = unfinished
        self.inherited = unfinished.inherited if unfinished else set()
        self.touched: set[str] = set()  # directories open in this walk with a removal in them
        self.seen = 0

    def directory(self, fd: int, path: str, depth: int) -> tuple[bool, bool]:
        """Sweep one directory; (it is now empty, something in it was removed)."""
        kept = removed = 0
        try:
            with os.scandir(fd) as entries:  # read as removed: never the whole list at once
                for entry in entries:
                    where = f"{path}/{entry.name}" if path else entry.name
                    if self.entry(fd, entry.name, where, depth):
                        removed += 1
                    else:
                        kept += 1
        except OSError as exc:
            self.report.error(path or ".", exc)
            return False, removed > 0
        return kept == 0, removed > 0 or path in self.inherited

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
                self._removing(where)
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
        gone = empty and (removed_any or st.st_mtime < self.cutoff)
        if gone and not self.dry_run:
            self._removing(where)
            os.rmdir(name, dir_fd=fd)
        self._closed(where)
        if gone:
            self.report.counts["dirs"] += 1
        return gone

    def _removing(self, where: str) -> None:
        """About to remove `where`: its directory goes down as one with a removal in it."""
        parent = where.rpartition("/")[0]
        if self.unfinished is not None and parent not in self.touched:
            self.touched.add(parent)
            if parent not in self.inherited:
                self.unfinished.opened(parent)

    def _closed(self, where: str) -> None:
        """`where` is removed or kept for good: nothing about it is left to a next walk."""
        if where in self.touched or where in self.inherited:
            self.touched.discard(where)
            self.inherited.discard(where)
            if self.unfinished is not None and not self.dry_run:
                self.unfinished.closed(where)
