"""log_statistics against a plain reference, written here, on random logs.

The operation counts a chunk at a time with one byte-level pattern (or the compiled scanner
that stands for it), in worker processes, and merges the parts; the reference below reads
every line as text, one at a time. Random logs give them both what real ones rarely do:
records out of order and around the window's start, continuation lines, unparseable lines,
levels and loggers the format refuses, Unicode digits and spaces, invalid UTF-8, CRLF, "] "
in messages, a timestamp followed by spaces or by another line, ids to mask, more distinct
loggers and messages than are kept, compressed and rotated files, a file without its last
newline; and chunks (made small here) that split the files anywhere.
"""

import gzip
import heapq
import os
import random
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.test import override_settings

from maintenance import operations
from maintenance.logstats import chunks, files

NOW = datetime(2026, 11, 28, 12, 0, 0, 500000, tzinfo=UTC)
RECORD = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR|CRITICAL) +(\S+) "
    r"\[\d+\] (.*)"
)
ALL_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MASKS = [
    (r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b", "<uuid>"),
    (r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b", "<hex>"),
    (r"\d+", "<n>"),
]


def reference(paths: list[Path], since: str, *, distinct: int, top: int) -> dict:
    """What log_statistics returns, computed the obvious way."""
    levels, loggers, errors = {}, {}, {}
    seen = {"lines": 0, "continuation": 0, "unparseable": 0, "before": 0, "records": 0}
    stamps = []

    def count(counter: dict, key: str) -> None:
        if key not in counter and len(counter) >= distinct:
            key = "(other)"
        counter[key] = counter.get(key, 0) + 1

    for path in paths:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", "replace")
        lines = text.split("\n")
        if text.endswith("\n") or not text:
            lines.pop()
        for line in lines:
            seen["lines"] += 1
            found = RECORD.fullmatch(line)
            if line.startswith("  "):
                seen["continuation"] += 1
            elif found is None:
                seen["unparseable"] += 1
            elif found[1] < since:
                seen["before"] += 1
            else:
                seen["records"] += 1
                levels[found[2]] = levels.get(found[2], 0) + 1
                count(loggers, found[3])
                stamps.append(found[1])
                if found[2] in ("ERROR", "CRITICAL"):
                    message = found[4]
                    for pattern, replacement in MASKS:
                        message = re.sub(pattern, replacement, message)
                    count(errors, message[:300])
    by_count = lambda kv: kv[1]  # noqa: E731
    return {
        "records": seen["records"],
        "by_level": {level: levels.get(level, 0) for level in ALL_LEVELS},
        "by_logger": dict(heapq.nlargest(50, loggers.items(), key=by_count)),
        "top_errors": [
            {"message": m, "count": c} for m, c in heapq.nlargest(top, errors.items(), key=by_count)
        ],
        "first_record_at": min(stamps, default=None),
        "last_record_at": max(stamps, default=None),
        "lines_read": seen["lines"],
        "continuation_lines": seen["continuation"],
        "unparseable_lines": seen["unparseable"],
        "lines_before_window": seen["before"],
    }


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


CLEAN_LOGGERS = ["app", "app.orders", "django.request", "a]b", "[x]", "ñame", "n0", "z" * 40]
LOGGERS = [*CLEAN_LOGGERS, "a\tb", "a\x1fb", "x\u00a0y", "(other)"]
LEVELS = ["INFO"] * 6 + ["WARNING", "ERROR", "ERROR", "CRITICAL", "DEBUG", "TRACE", "info"]
MESSAGES = [
    "connection refused",
    "order {n} failed after {n} ms",
    "job 550e8400-e29b-41d4-a716-44665544{n:04d} row {n}",
    "sha deadbeef{n} and cafe{n}babe",
    "bracket ] {n} and [{n}] inside",
    "unicode é{n} \u0663{n} ¹²",
    "x" * 320 + "{n}",
    "crlf {n}\r",
    "forged\t{n}",
    "",
]
ARABIC = "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in "2026-11-28")
JUNK = [
    "", " ", "garbage", "2026-13-99 not a stamp",
    "\ufeff2026-11-28T12:00:00.000Z INFO app [1] bom",
    f"{ARABIC}T12:00:00.000Z ERROR app [1] arabic digits",
    "2026-11-28T12:00:00.000Z ERROR app [\u0661\u0662] unicode pid",
    "  continuation", "   deeper",
]  # fmt: skip


def random_line(rng: random.Random, moment: datetime, mess: float) -> bytes:
    """A line of the log: a record as the formatter writes it, a continuation line, or (as
    often as `mess` says) something odd."""
    if rng.random() < 0.1:
        return (
            b"  "
            + rng.choice(["Traceback", "File x", f"{stamp(moment)} CRITICAL app [1] x"]).encode()
        )
    if rng.random() < mess / 3:
        return rng.choice(JUNK).encode()
    if rng.random() < mess / 10:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))).replace(b"\n", b"")
    if rng.random() < mess / 10:  # a timestamp, then two spaces or another line's timestamp
        earlier = moment - timedelta(hours=3 * rng.random())
        return (
            f"{stamp(moment)} ".encode() + rng.choice([b"  ", b""]) + random_line(rng, earlier, 0)
        )
    odd = rng.random() < mess
    level = rng.choice(LEVELS if odd else LEVELS[:-2])
    pad = " " * max(1, 9 - len(level)) if not odd else " " * rng.randrange(1, 4)
    pid = rng.choice(["7", "42", str(rng.randrange(1, 99999))] + ["", "1a"] * odd)
    logger = rng.choice(LOGGERS if odd else CLEAN_LOGGERS)
    message = rng.choice(MESSAGES if odd else MESSAGES[:4] + MESSAGES[-4:])
    raw = f"{stamp(moment)} {level}{pad}{logger} [{pid}] {message.format(n=rng.randrange(10**9))}"
    return raw.encode() + (b"\xff\xfe invalid utf-8 \xc3" if odd and rng.random() < 0.1 else b"")


def write_logs(
    directory: Path, rng: random.Random, since: datetime, *, mess: float, disorder: float
) -> list[Path]:
    """A few log files, oldest first, in the window by their modification times; records
    out of order by a few seconds or by hours as often as `disorder` says."""
    paths = []
    names = [f"app.log.2026112{n}T000000000000" for n in range(rng.randrange(1, 4))] + ["app.log"]
    moment = since - timedelta(minutes=rng.randrange(0, 90))
    for n, name in enumerate(names):
        lines = []
        for _ in range(rng.randrange(0, 1500)):
            moment += timedelta(milliseconds=rng.randrange(0, 4000))
            jitter = timedelta()
            if rng.random() < 10 * disorder:
                jitter = timedelta(milliseconds=rng.randrange(-5000, 100))
            if rng.random() < disorder:
                jitter = timedelta(hours=rng.choice([-3, 3]))
            if rng.random() < 0.02:  # on the window's first millisecond, or just before
                jitter = since - moment - timedelta(milliseconds=rng.choice([0, 0, 1]))
            lines.append(random_line(rng, moment + jitter, mess))
        if mess and lines:  # latest of all, out of order, and no record: not the last one
            refused = f"{stamp(since + timedelta(hours=5))} TRACE    app [1] refused".encode()
            lines.insert(rng.randrange(len(lines)), refused)
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")
        path = directory / name
        if name != "app.log" and rng.random() < 0.5:
            path = path.with_name(name + ".gz")
            data = gzip.compress(data)
        path.write_bytes(data)
        mtime = (since + timedelta(minutes=1 + n)).timestamp()
        os.utime(path, (mtime, mtime))
        paths.append(path)
    ignored = directory / "app.log.20261101T000000000000"  # modified before the window
    ignored.write_bytes(random_line(rng, since, mess) + b"\n")
    os.utime(ignored, (since.timestamp() - 60,) * 2)
    return paths


@pytest.mark.usefixtures("log_scanner")  # the compiled scanner, then the pattern
@pytest.mark.parametrize("seed", range(24))
def test_counts_equal_a_plain_reading_of_random_logs(
    seed: int, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(operations.timezone, "now", lambda: NOW)
    hours = rng.choice([1, 2])
    since = NOW - timedelta(hours=hours)
    mess, disorder = (0, 0.01, 0.3)[seed % 3], (0, 0.01)[seed // 3 % 2]
    paths = write_logs(roots["LOG_DIR"], rng, since, mess=mess, disorder=disorder)
    # Chunks of a hundred bytes to 64 KiB: lines cut at every place, many per file; parts
    # of more than 4 distinct keys read again by the summary; worker processes or not.
    monkeypatch.setattr(files, "CHUNK_BYTES", (97, 700, 4096, 65536)[seed % 4])
    monkeypatch.setattr(files, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(files, "PART_KEYS", 4 if seed % 8 == 7 else 20000)
    monkeypatch.setattr(chunks, "PROBE_BYTES", rng.choice([64, 1000]))
    monkeypatch.setattr(files, "PROBE_BYTES", chunks.PROBE_BYTES)
    distinct, top = (3, 10000, 6)[seed // 4 % 3], rng.choice([2, 20])
    settings = {**roots, "LOG_MAX_DISTINCT_MESSAGES": distinct, "LOG_TOP_MESSAGES": top,
                "LOG_READ_PROCESSES": 1 + seed // 12}  # fmt: skip
    with override_settings(MAINTENANCE=settings):
        result = operations.log_statistics(hours=hours)
    expected = reference(paths, stamp(since), distinct=distinct, top=top)
    assert {key: result[key] for key in expected} == expected
    assert result["files"] == [path.name for path in paths]
    assert result["bytes_read"] == sum(path.stat().st_size for path in paths)


def test_a_worker_that_dies_leaves_the_rest_to_this_process(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file truncated under a worker's mapping kills it (SIGBUS): the pool breaks, and the
    sources from the one it was counting on are read here instead, nothing twice."""
    rng = random.Random(99)
    monkeypatch.setattr(operations.timezone, "now", lambda: NOW)
    since = NOW - timedelta(hours=1)
    paths = write_logs(roots["LOG_DIR"], rng, since, mess=0.01, disorder=0.01)
    monkeypatch.setattr(files, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(files, "PARALLEL_BYTES", 0)
    real, calls = files._chunks, iter(range(10**6))

    def dying(source: files.Source, *, mapped: bool) -> object:
        if mapped and next(calls) == 5:  # in a worker: the pool breaks
            os.kill(os.getpid(), signal.SIGKILL)
        return real(source, mapped=mapped)

    monkeypatch.setattr(files, "_chunks", dying)
    resumed, real_rest = [], files._rest
    monkeypatch.setattr(files, "_rest", lambda *args: resumed.append(args[1]) or real_rest(*args))
    settings = {**roots, "LOG_READ_PROCESSES": 2}
    with override_settings(MAINTENANCE=settings):
        result = operations.log_statistics(hours=1)
    expected = reference(paths, stamp(since), distinct=10000, top=20)
    assert {key: result[key] for key in expected} == expected
    assert len(resumed) == 1  # the pool broke, this process read on
