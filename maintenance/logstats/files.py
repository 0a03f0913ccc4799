"""The log files read once each, in chunks of whole lines, counted in worker processes when
there is enough to read, and merged in their order (which the summary's bounded counters
depend on).

Every file is opened before anything is counted and read through that descriptor only: a
rotated file compressed or pruned meanwhile is still read once, whole, as it was listed; a
file being appended to is read up to the size it had then. A plain file is split into ranges
of about `CHUNK_BYTES` at line starts, read with `pread`; a compressed one is decompressed as
a stream, one range (zlib is then the limit, about 250 MB/s of output on one core).
"""

import ctypes
import gzip
import io
import mmap
import os
import signal
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

from maintenance.logstats.chunks import PROBE_BYTES, Bounds, Lines, finder, scan_chunk
from maintenance.logstats.summary import LogSummary, Part

CHUNK_BYTES = 4 * 2**20  # 4 to 32 MiB cost the same CPU; the smallest the least memory
PARALLEL_BYTES = 32 * 2**20  # less is read faster in this process than by forking workers
# The distinct loggers or messages a part of a file may bring back (its memory): past that,
# the summary reads the part itself, line by line, as it merges.
PART_KEYS = 20000
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
PR_SET_PDEATHSIG = 1
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Source:
    """A stretch of one open log file: whole lines from `start` to `end` (a compressed file
    is always read whole), with the bounds found for its file (else its chunks find theirs)."""

    fd: int
    start: int
    end: int
    compressed: bool
    name: str = field(compare=False)
    bounds: Bounds | None = None


def read_logs(files: list[Path], summary: LogSummary, *, processes: int, progress: Progress) -> int:
    """Count every line of `files` into `summary`, in order; the bytes there were to read."""
    with ExitStack() as stack:
        stack.callback(_buffers.clear)
        # Every file opened before a worker is forked (they inherit the descriptors); the
        # files split as the workers start on the first ones.
        opened = [found for path in files if (found := _open(path, stack))]
        total = sum(size for _, size, _ in opened)
        sources: list[Source] = []
        planned = _planned(opened, summary.since, sources)
        if total < PARALLEL_BYTES:
            processes = 1
        done, read, cap = 0, 0, max(PART_KEYS, summary.max_distinct)
        parts = _parts(planned, summary.since, cap, processes, stack)
        while (part := next(parts, _DONE)) is not _DONE:
            source = sources[done]
            if isinstance(part, BrokenProcessPool):  # a worker died: this process reads on
                parts = _parts(_rest(sources, done, planned), summary.since, cap, 1, stack)
                continue
            if part is None:  # too many distinct loggers or messages to merge: read it here
                for lines in _chunks(source, mapped=False):
                    summary.feed(lines.text())
            else:
                summary.merge(part)
            done, read = done + 1, read + source.end - source.start
            progress(100 * read / (total or 1), f"read {source.name}")
    return total


_DONE = object()


def _rest(sources: list[Source], done: int, planned: Iterator[Source]) -> Iterator[Source]:
    """The sources from the `done`-th on, those planned already and those still to come."""
    yield from sources[done:]
    yield from planned


def _planned(opened: list, since: str, into: list[Source]) -> Iterator[Source]:
    """The sources of the opened files, each also appended to `into` as it is made."""
    for found in opened:
        for source in _split(*found, since):
            into.append(source)
            yield source


def _open(path: Path, stack: ExitStack) -> tuple[int, int, Path] | None:
    """(descriptor, size, path) of a log file, or of its .gz once another process compressed
    it; None when it is gone."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        try:
            fd = os.open(candidate, OPEN_FLAGS)
        except FileNotFoundError:
            if candidate.suffix == ".gz":
                return None
            continue
        stack.callback(os.close, fd)
        st = os.fstat(fd)
        return (fd, st.st_size, candidate) if stat.S_ISREG(st.st_mode) else None
    return None


def _split(fd: int, size: int, path: Path, since: str) -> Iterator[Source]:
    """The sources of one file: ranges of about CHUNK_BYTES, each beginning a line."""
    if path.suffix == ".gz":
        yield Source(fd, 0, size, True, path.name)
        return
    first, last = _file_bounds(fd, size, since)
    start = 0
    while start < size:
        end = _line_start_after(fd, start + CHUNK_BYTES, size)
        held = tuple(stamp for stamp, at in (first, last) if at is not None and start <= at < end)
        bounds = Bounds(first[0], last[0], held)
        yield Source(fd, start, end, False, path.name, bounds)
        start = end


def _file_bounds(fd: int, size: int, since: str) -> tuple[tuple, tuple]:
    """(timestamp, offset) of the earliest record of the window near the file's start (or
    near where the window starts, found by bisection) and of the latest near its end."""
    early = _records(fd, 0, since) or _records(fd, _window_start(fd, size, since), since)
    late = _records(fd, max(0, size - PROBE_BYTES), since) or early
    if not early:
        return (None, None), (None, None)
    return min(early), max(late + early)


def _records(fd: int, offset: int, since: str | None, *, first: bool = False) -> list:
    """(timestamp, offset) of the records (of the window) starting within PROBE_BYTES after
    `offset`; only the first of them if `first`."""
    block = (
        os.pread(fd, PROBE_BYTES + 1, offset - 1)
        if offset
        else b"\n" + os.pread(fd, PROBE_BYTES, 0)
    )
    found = [finder(since).search(block)] if first else finder(since).finditer(block)
    return [(record[1].decode(), offset + record.start()) for record in found if record]


def _window_start(fd: int, size: int, since: str) -> int:
    """Where the window's records begin in a file in time order (bisection)."""
    low, high = 0, size
    while high - low > PROBE_BYTES // 2:
        middle = (low + high) // 2
        found = _records(fd, middle, None, first=True)
        if not found or found[0][0] >= since:
            high = middle
        else:
            low = middle
    return low


def _line_start_after(fd: int, offset: int, size: int) -> int:
    """The first line start at or after `offset`, or `size`."""
    position = offset - 1
    while position < size:
        block = os.pread(fd, 8192, position)
        found = block.find(b"\n")
        if found >= 0:
            return min(position + found + 1, size)
        position += len(block) or size
    return size


def _parts(
    sources: Iterator[Source], since: str, cap: int, processes: int, stack: ExitStack
) -> Iterator[Part | BrokenProcessPool | None]:
    """The sources' parts, in order: counted in worker processes when `processes` > 1 (then
    the BrokenProcessPool that ends them if one dies, of a file truncated under its mapping
    say), else here, reading the files."""
    if processes <= 1:
        return map(scan_source, sources, repeat(since), repeat(cap), repeat(False))
    context = get_context("fork")
    executor = ProcessPoolExecutor(processes, mp_context=context, initializer=_in_worker)
    stack.callback(executor.shutdown, wait=True, cancel_futures=True)
    parts = executor.map(scan_source, sources, repeat(since), repeat(cap), repeat(True))
    return _until_broken(parts)


def _until_broken(parts: Iterator[Part | None]) -> Iterator[Part | BrokenProcessPool | None]:
    try:
        yield from parts
    except BrokenProcessPool as exc:
        yield exc


def _in_worker() -> None:
    """A worker process dies with the task that forked it (a hard timeout kills that one),
    and leaves signals to it."""
    with suppress(AttributeError, OSError):  # not Linux: the worker ends with its pipe
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def scan_source(source: Source, since: str, cap: int, mapped: bool) -> Part | None:
    """The counts of a source's lines (in a worker process, `mapped`); None when more than
    `cap` distinct loggers or messages would have to be kept."""
    total = Part()
    for lines in _chunks(source, mapped=mapped):
        part = scan_chunk(lines, since, cap, source.bounds)
        if part is None or not _add(total, part, cap):
            return None
    return total


def _add(total: Part, part: Part, cap: int) -> bool:
    """Add the part of the next lines to `total`; False past `cap` distinct keys."""
    for name in ("lines", "continuation", "unparseable", "before"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for name in ("levels", "loggers", "errors"):
        counts = getattr(total, name)
        for key, count in getattr(part, name).items():
            counts[key] = counts.get(key, 0) + count
        if len(counts) > cap:
            return False
    if part.first is not None:
        total.first = min(part.first, total.first or part.first)
        total.last = max(part.last, total.last or part.last)
    return True


def _chunks(source: Source, *, mapped: bool) -> Iterator[Lines]:
    """The source's lines in chunks of whole lines: mapped (a worker process, which a file
    truncated under the mapping kills with SIGBUS) or read."""
    if source.compressed:
        yield from _decompressed(source)
    elif mapped and source.end > source.start:
        yield from _mapped_lines(source)
    else:
        size = 1 + source.end - source.start
        chunk = _buffer(size)
        view, offset = memoryview(chunk)[1:size], source.start
        while view:  # pread may return less than asked for
            read = os.preadv(source.fd, [view], offset)
            if read == 0:  # truncated meanwhile
                size -= len(view)
                break
            view, offset = view[read:], offset + read
        del view
        yield Lines.of(chunk, 0, size)


def _mapped_lines(source: Source) -> Iterator[Lines]:
    """The lines of a plain source, mapped (MAP_POPULATE: no copy, no fault a page); the
    newline before them is the file's, but for the file's first line."""
    start = max(source.start - 1, 0)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(source.fd, source.end - base, flags, mmap.PROT_READ, offset=base) as mapped:
        begin, stop = start - base, source.end - base
        if source.start == 0:  # the file's first line, after a newline of its own
            first = mapped.find(b"\n", 0, stop) + 1 or stop
            yield Lines.of(bytearray(b"\n" + mapped[:first]), 0, first + 1)
            begin = first - 1
        if begin < stop - 1:
            yield Lines.of(mapped, begin, stop)


def _decompressed(source: Source) -> Iterator[Lines]:
    carry = b""
    with gzip.GzipFile(fileobj=io.BufferedReader(_PositionalReader(source.fd))) as stream:
        while block := stream.read(CHUNK_BYTES):
            cut = block.rfind(b"\n") + 1
            if cut:
                chunk = bytearray(b"\n" + carry + block[:cut])
                carry = block[cut:]
                yield Lines.of(chunk, 0, len(chunk))
            else:
                carry += block
    if carry:
        yield Lines.of(bytearray(b"\n" + carry), 0, len(carry) + 1)


_buffers: list[bytearray] = []


def _buffer(size: int) -> bytearray:
    """A buffer of at least `size` bytes, starting with a newline, reused by the process
    (allocating and faulting in 16 MiB a chunk cost more than reading it)."""
    if not _buffers or len(_buffers[0]) < size:
        _buffers[:] = [bytearray(max(size, CHUNK_BYTES + 65536))]
        _buffers[0][0] = 10
    return _buffers[0]


class _PositionalReader(io.RawIOBase):
    """A file descriptor read with pread from offset 0: its own position, whoever else
    (a worker process, this one) reads the same open file."""

    def __init__(self, fd: int) -> None:
        self.fd, self.position = fd, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        read = os.preadv(self.fd, [buffer], self.position)
        self.position += read
        return read
