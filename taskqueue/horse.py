"""The long-lived work horse: a child of the worker that runs handlers, one job at a time.

Forked once by the worker (after its warm-up, so Django's caches are inherited) and
reused job after job, it keeps its own database connection. It only runs handlers: the
worker sends it a leased task on one pipe and reads the outcome on another; the worker
records everything (see taskqueue.worker). Each message is a 4-byte length and a pickle,
sent between two processes of the same code.

The horse stays in the worker's process group (a `killpg` of the worker reaches it), dies
with the worker (PR_SET_PDEATHSIG), ignores SIGINT and SIGTERM (the worker decides how to
shut down), and gets a soft timeout: SIGALRM raises RQ's JobTimeoutException in the
handler at the attempt's timeout. The worker kills it if it is still running shortly after.
"""

import contextlib
import ctypes
import logging
import os
import pickle
import random
import select
import signal
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from rq.timeouts import JobTimeoutException

from taskqueue import backend, events
from taskqueue.execution import failure, perform

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
PR_SET_PDEATHSIG = 1
RSS_READ_SECONDS = 1.0


@dataclass
class Horse:
    """The worker's handle on its work horse."""

    pid: int
    jobs: int  # the worker writes jobs here
    reports: int  # and reads outcomes here
    tasks_run: int = 0
    exit_status: int | None = field(default=None, repr=False)
    _rss: tuple[float, int] | None = field(default=None, repr=False)  # (read at, bytes)

    def send(self, message: dict[str, Any]) -> None:
        _write(self.jobs, message)

    def has_report(self, timeout: float = 0.0) -> bool:
        """Whether the horse has written (or its end of the pipe closed), within `timeout`."""
        readable, _, _ = select.select([self.reports], [], [], max(timeout, 0.0))
        return bool(readable)

    def read_report(self) -> dict[str, Any] | None:
        """The outcome the horse wrote, or None if it died first (or wrote half of it)."""
        try:
            return _read(self.reports)
        except (OSError, EOFError, pickle.UnpicklingError):
            return None

    def alive(self) -> bool:
        """Reap the horse if it has exited; whether it still runs."""
        if self.exit_status is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return True
        self.exit_status = status
        return False

    def kill(self) -> None:
        """SIGKILL the horse and reap it (its pipes stay open: a report may be in them)."""
        if self.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            try:
                _, self.exit_status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.exit_status = -1

    def retire(self, timeout: float = 5.0) -> None:
        """Let an idle horse exit by itself (it reads the end of its job pipe), else kill it."""
        with contextlib.suppress(OSError):
            os.close(self.jobs)
        self.jobs = -1
        if self.has_report(timeout):  # EOF on its report pipe: it has exited
            with contextlib.suppress(ChildProcessError):
                _, self.exit_status = os.waitpid(self.pid, 0)
        self.kill()
        self.close()

    def close(self) -> None:
        for fd in (self.jobs, self.reports):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.jobs = self.reports = -1

    def rss_bytes(self) -> int:
        """The horse's resident memory (0 if unknown), read at most once a second (reading
        it after every task was 3 % of the worker's CPU)."""
        if self._rss is not None and time.monotonic() - self._rss[0] < RSS_READ_SECONDS:
            return self._rss[1]
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            rss = 0
        self._rss = (time.monotonic(), rss)
        return rss

    def describe_exit(self) -> str:
        status = self.exit_status
        if status is None or status < 0:
            return "killed"
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit code {os.waitstatus_to_exitcode(status)}"


def spawn(worker_name: str) -> Horse:
    """Fork a work horse. The caller has closed its database connections (none may cross)."""
    jobs_r, jobs_w = os.pipe()
    reports_r, reports_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the horse: never returns
        status = 1
        try:
            os.close(jobs_w)
            os.close(reports_r)
            _become_horse(parent)
            _serve(jobs_r, reports_w, worker_name)
            status = 0
        except BaseException:
            logger.exception("Work horse failed")
        finally:
            os._exit(status)
    os.close(jobs_r)
    os.close(reports_w)
    return Horse(pid=pid, jobs=jobs_w, reports=reports_r)


def _become_horse(parent: int) -> None:
    random.seed()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _timeout)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before PDEATHSIG was armed
        os._exit(1)
    for connection in connections.all(initialized_only=True):
        connection.connection = None  # the worker's (it closed them); never ours to close
    events.forget_held()


def _serve(jobs: int, reports: int, worker_name: str) -> None:
    """Run jobs until the worker closes the job pipe."""
    while True:
        try:
            message = _read(jobs)
        except EOFError:
            return
        context = backend.JobContext(job=None, name=worker_name, id=message["job_id"])
        token = backend.running_job.set(context)
        signal.setitimer(signal.ITIMER_REAL, max(message["timeout"], 0.001))
        try:
            outcome = perform(message["task"], message["payload"])
        except JobTimeoutException as exc:  # raised between the handler's end and here
            outcome = failure(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            backend.running_job.reset(token)
        _write(reports, {"job_id": message["job_id"], **outcome})


def _timeout(signum: int, frame: Any) -> None:
    raise JobTimeoutException("The attempt exceeded its timeout.")


def _write(fd: int, message: dict[str, Any]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read(fd: int) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))  # noqa: S301 (our own child, same code)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
