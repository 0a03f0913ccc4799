"""The byte-level pieces of log_statistics against their plain definitions."""

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from maintenance.logs import mask
from maintenance.logstats.chunks import (
    Lines,
    at_least,
    below,
    between,
    count_masked,
    scan_chunk,
    slow_scan,
)


def stamps(rng: random.Random, count: int) -> list[str]:
    """Timestamps close together (sharing long prefixes) and far apart."""
    base = datetime(2026, 11, 28, 19, 59, 59, 999000, tzinfo=UTC)
    spans = [
        timedelta(milliseconds=1),
        timedelta(seconds=1),
        timedelta(hours=1),
        timedelta(days=400),
    ]
    out = []
    for _ in range(count):
        moment = base + rng.choice(spans) * rng.randrange(-30, 30)
        out.append(moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z")
    return out


def test_the_timestamp_patterns_compare_as_strings_do() -> None:
    rng = random.Random(7)
    for _ in range(300):
        low, high, *probes = stamps(rng, 12)
        low, high = min(low, high), max(low, high)
        inside, after, before = (
            re.compile(p) for p in (between(low, high), at_least(low), below(low))
        )
        for probe in [*probes, low, high]:
            assert bool(inside.fullmatch(probe)) == (low <= probe <= high), (low, high, probe)
            assert bool(after.fullmatch(probe)) == (probe >= low), (low, probe)
            assert bool(before.fullmatch(probe)) == (probe < low), (low, probe)
    assert (
        re.compile(between("2026-11-28T00:00:00.000Z", "2026-11-27T00:00:00.000Z")).fullmatch(
            "2026-11-27T12:00:00.000Z"
        )
        is None
    )  # an empty interval
    assert not re.fullmatch(at_least("2026-11-28T00:00:00.000Z"), "2026-11-28T0x:00:00.000Z")


def test_messages_are_masked_and_counted_as_one_by_one_in_order() -> None:
    messages = ["order 1234 failed", "order 98 failed", "id 550e8400-e29b-41d4-a716-446655440000",
                "sha deadbeef99 x", "sha deadbeef99" + "9" * 300, "é\u0663 12", "bad \ufffd 7",
                "12345678", "1234567", "order 5 failed"]  # fmt: skip
    weights = [1, 2, 1, 1, 1, 3, 1, 1, 1, 1]
    expected: dict[str, int] = {}
    for message, weight in zip(messages, weights, strict=True):
        key = mask(message)[:300]
        expected[key] = expected.get(key, 0) + weight
    raw = [m.encode() for m in messages[:-4]] + [
        b"bad \xff 7",
        b"12345678",
        b"1234567",
        b"order 5 failed",
    ]
    counted = count_masked(raw, weights)
    assert counted == expected
    assert list(counted) == list(expected)  # first appearance decides the order


@pytest.mark.usefixtures("log_scanner")
def test_a_key_running_into_the_next_line_sends_the_chunk_line_by_line() -> None:
    """A line before the window whose key (level and logger: runs of non-spaces) takes the
    next line with it must not swallow that line."""
    since = "2026-11-28T11:00:00.000Z"
    for odd in (
        b"2026-11-28T10:00:00.000Z INFOx\nfoo a [1] ",
        b"2026-11-28T10:00:00.000Z x\ny [1] ",
    ):
        data = b"\n" + odd + b"\n2026-11-28T12:00:00.000Z ERROR    app [7] boom\n"
        lines = Lines.of(bytearray(data), 0, len(data))
        part = scan_chunk(lines, since, 100)
        assert part == slow_scan(lines, since, 100)
        assert (part.lines, part.unparseable) == (3, 2)


@pytest.mark.usefixtures("log_scanner")
def test_a_timestamp_of_the_window_followed_by_no_record_is_an_unparseable_line() -> None:
    """Neither spaces nor another timestamp after it make a continuation line or a record
    before the window of it."""
    since = "2026-11-28T11:00:00.000Z"
    data = (
        b"\n2026-11-28T12:00:00.000Z INFO     app [7] first"
        b"\n2026-11-28T12:00:01.000Z    spaces"
        b"\n2026-11-28T12:00:01.000Z 2026-11-28T10:00:00.000Z INFO     app [7] earlier"
        b"\n2026-11-28T12:00:02.000Z INFO     app [7] last"
    )
    lines = Lines.of(bytearray(data), 0, len(data))
    part = scan_chunk(lines, since, 100)
    assert part == slow_scan(lines, since, 100)
    assert (part.continuation, part.before, part.unparseable) == (0, 0, 2)
