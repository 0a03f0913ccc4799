"""The compiled line scanner of log_statistics (maintenance/logstats/_scan.c) against the
pattern it stands for, and a chunk's counts by either against the line-by-line reading.

The chunks are random and adversarial: records in and out of the window and before it,
continuation lines, records cut anywhere (keys running into the next line), a timestamp
followed by three spaces or by another timestamp, levels followed by tabs, loggers of
non-ASCII and control bytes, digits other than ASCII, `\\r`, "] " more than once, empty
lines, chunks without records, and begin and end at any newline.
"""

import hashlib
import mmap
import random
import shutil
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maintenance.logs import timestamp
from maintenance.logstats import chunks
from maintenance.logstats.chunks import Bounds, Lines, classifier, scan_chunk, slow_scan

BASE = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
STEPS = [timedelta(milliseconds=1), timedelta(seconds=1), timedelta(hours=1), timedelta(days=40)]
LEVELS = [b"INFO", b"INFO", b"WARNING", b"DEBUG", b"ERROR", b"ERROR", b"CRITICAL", b"TRACE",
          b"info", b"ERRORX", b"CRITICALLY", b"", b"ERROR\t", b"INFO\t"]  # fmt: skip
LOGGERS = [b"app", b"app.orders", b"django.request", b"a]b", b"[x]", b"\xc3\xb1ame", b"a\tb",
           b"a\x1fb", b"a\rb", b"\x7f", b"a\x80\xff", b"a\x0c", b"a[1]", b"", b"x [2]"]  # fmt: skip
PIDS = [b"[42]", b"[7]", b"[31337]", b"[]", b"[1a]", b"[\xd9\xa1]", b"[42]x", b"42", b"[42"]
MESSAGES = [b"", b"order 12 failed", b"] x [1] y] ", b"crlf\r", b"bracket ] 5 and [6] inside",
            b"  two spaces", b"\xff\xfe", b"tab\tend", b"\xd9\xa3 arabic"]  # fmt: skip
JUNK = b" \t\r[]-:.TZ0123456789aINFOERROR\x80\xff\x1c\x7f"


def stamps(rng: random.Random, count: int) -> list[str]:
    """Timestamps close together (equal, a millisecond apart) and far apart."""
    return [timestamp(BASE + rng.choice(STEPS) * rng.randrange(-3, 4)) for _ in range(count)]


def odd_stamp(rng: random.Random, stamp: bytes) -> bytes:
    """A timestamp one byte away from the shape: a digit that is not ASCII, another separator,
    one byte too short."""
    at = rng.randrange(len(stamp))
    return (
        stamp[:at] + rng.choice([b"x", "\u0663".encode(), b"/", b" ", b"z", b""]) + stamp[at + 1 :]
    )


def record(rng: random.Random, stamp: bytes) -> bytes:
    """A record's line as the formatter writes it, or (half the time) nearly."""
    if rng.random() < 0.5:
        level = rng.choice(LEVELS[:7])
        head = level.ljust(9) + rng.choice(LOGGERS[:3]) + b" " + rng.choice(PIDS[:3]) + b" "
        return stamp + b" " + head + rng.choice(MESSAGES[:2])
    level = rng.choice(LEVELS)
    pad = rng.choice([b" " * max(1, 9 - len(level)), b" ", b"  ", b"", b"\t", b" \t"])
    head = level + pad + rng.choice(LOGGERS) + b" " + rng.choice(PIDS)
    return stamp + b" " + head + rng.choice([b" ", b" ", b" ", b"", b"\t"]) + rng.choice(MESSAGES)


def line(rng: random.Random, anchors: list[bytes]) -> bytes:
    stamp = rng.choice(anchors)
    kind = rng.random()
    if kind < 0.45:
        return record(rng, stamp)
    if kind < 0.55:
        return record(rng, odd_stamp(rng, stamp))
    if kind < 0.65:
        return rng.choice([b"  ", b" ", b"   "]) + rng.choice([b"Traceback", record(rng, stamp)])
    if kind < 0.72:
        return stamp + b"   " + rng.choice(MESSAGES)  # a timestamp and three spaces
    if kind < 0.82:
        return stamp + b" " + record(rng, rng.choice(anchors))  # a timestamp, another record
    if kind < 0.9:
        return bytes(rng.choice(JUNK) for _ in range(rng.randrange(0, 40)))
    return b""


def cut(rng: random.Random, raw: bytes) -> bytes:
    """A line cut in two at some byte (half the time in a record's level or logger, which
    makes its key run into the next line), or with a byte left out, now and then."""
    if raw and rng.random() < 0.15:
        at = rng.randrange(len(raw)) if rng.random() < 0.5 else min(len(raw), rng.randrange(25, 40))
        return raw[:at] + rng.choice([b"\n", b""]) + raw[at + rng.randrange(2) :]
    return raw


def chunk(rng: random.Random, anchors: list[bytes]) -> Lines:
    """Random lines; begin and end where `Lines.of` puts them (newlines of the buffer)."""
    lines = [cut(rng, line(rng, anchors)) for _ in range(rng.randrange(0, 40))]
    data = b"\n" + b"\n".join(lines) + rng.choice([b"\n", b""])
    buffer = rng.choice([bytearray, bytes])(data)
    newlines = [i for i, byte in enumerate(data) if byte == 10]
    begin = rng.choice(newlines)
    stops = [i + 1 for i in newlines if i >= begin] + [len(data)]
    return Lines.of(buffer, begin, rng.choice(stops))


def bounds(rng: random.Random, anchors: list[str]) -> tuple[str, str | None, str | None]:
    since = rng.choice(anchors)
    if rng.random() < 0.2:
        return since, None, None
    first, last = rng.choice(anchors), rng.choice(anchors)
    return (since, first, last) if rng.random() < 0.2 else (since, *sorted((first, last)))


needs_scanner = pytest.mark.skipif(chunks._scan is None, reason="the scanner is not built")


@needs_scanner
def test_the_scanner_counts_what_the_pattern_finds_or_gives_none_for_a_key_across_lines() -> None:
    rng = random.Random(1)
    crossed = found = 0
    for _ in range(150):
        anchors = stamps(rng, 4)
        since, first, last = bounds(rng, anchors)
        pattern = classifier(since, first, last)
        for _ in range(40):
            lines = chunk(rng, [stamp.encode() for stamp in anchors])
            expected = Counter(pattern.findall(*lines))
            keys = chunks._scan.keys(*lines, since, first, last)
            if any(b"\n" in key for key in expected):
                assert keys is None, (bytes(lines.buffer), since, first, last)
                crossed += 1
            else:
                assert keys is not None, (bytes(lines.buffer), since, first, last)
                assert list(keys.items()) == list(expected.items()), (bytes(lines.buffer), since)
                found += len(keys)
    assert crossed > 100  # the chunks did make keys run across lines
    assert found > 10000


@pytest.mark.usefixtures("log_scanner")
def test_a_chunk_counts_as_the_line_by_line_reading_counts_it() -> None:
    rng = random.Random(2)
    for _ in range(600):
        anchors = stamps(rng, 4)
        since = rng.choice(anchors)
        lines = chunk(rng, [stamp.encode() for stamp in anchors])
        expected = slow_scan(lines, since, 10000)
        assert scan_chunk(lines, since, 10000) == expected, (bytes(lines.buffer), since)
        # With bounds of its file, a record between them is counted without its timestamp
        # (the file's first and last records are its first and last).
        first, last = sorted(rng.choices([stamp for stamp in anchors if stamp >= since], k=2))
        counted = scan_chunk(lines, since, 10000, Bounds(first, last))
        assert replace(counted, first=None, last=None) == replace(expected, first=None, last=None)


@needs_scanner
def test_the_scanner_reads_any_buffer_and_checks_its_arguments(tmp_path: Path) -> None:
    data = b"\n2026-11-28T12:00:00.000Z INFO     app [7] hello\n  more"
    since = "2026-11-28T11:00:00.000Z"
    expected = {b"2026-11-28T12:00:00.000Z INFO     app [7] ": 1, b"  ": 1}
    path = tmp_path / "log"
    path.write_bytes(data)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert chunks._scan.keys(mapped, 0, len(data), since, None, None) == expected
    assert chunks._scan.keys(memoryview(data), -5, 10**9, since, None, None) == expected
    assert chunks._scan.keys(data, 30, 20, since, None, None) == {}
    for wrong in (("2026-11-28", None, None), (since, "x", since), (since, since, 5)):
        with pytest.raises(ValueError, match="timestamp like"):
            chunks._scan.keys(data, 0, len(data), *wrong)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no compiler: the pattern counts")
def test_the_scanner_is_built_from_its_source_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where it can be built it must be (`make install` builds it), from the source as it is:
    a build that failed or is out of date would otherwise fall back to the pattern unseen."""
    assert chunks._scan is not None, "run scripts/build_scanner.py (make install does)"
    source = Path(chunks.__file__).with_name("_scan.c").read_bytes()
    assert hashlib.sha256(source).hexdigest() == chunks._scan.SOURCE_SHA256, "out of date"
    calls = []
    monkeypatch.setattr(chunks._scan, "keys", lambda *args: calls.append(args) or {b"": 1})
    lines = Lines.of(bytearray(b"\nx"), 0, 2)
    assert scan_chunk(lines, "2026-11-28T11:00:00.000Z", 10).unparseable == 1
    assert len(calls) == 1
