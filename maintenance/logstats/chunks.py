"""A chunk of log lines counted at the speed of the regular expression engine, exactly as
reading it line by line counts it (`LogSummary.feed`).

One pattern, built for the chunk, gives every line one short key in one C-level `findall`:
`b"  "` for a continuation line, `b"INFO     app.orders [42] "` (level, logger and process
id) for a record in the window, the same and the message for an error, one digit for a
record before the window, `b""` for anything else. A timestamp is compared with bytes, by
the pattern: a record counts as one in the window without its timestamp when that lies
between two records found first near the start and the end of its file (or chunk), the
earliest and the latest there, which are then the first and last; a record of the window
outside them (out of order by more than a few lines) keeps its timestamp in its key.
The keys are found and counted by a compiled scanner (`_scan.c`, built at install by
scripts/build_scanner.py) that gives what `Counter(pattern.findall(...))` gives, in one pass
that makes a bytes object of each distinct key only; where it is not built, by the pattern
and `Counter` themselves (the same keys, for several times the CPU). That leaves the
distinct keys to check one by one: levels, loggers and messages are decoded there only, and
a level or logger the text reading would refuse makes unparseable lines. What this cannot
vouch for (a key running across lines, lines that might be records to the Unicode reading
of `\\d` and `\\S` only) sends the chunk through `LogSummary.feed` instead.
"""

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, repeat
from operator import itemgetter, not_
from typing import Any, NamedTuple

from maintenance.logs import LEVELS, mask
from maintenance.logstats.summary import LogSummary, Part

try:
    from maintenance.logstats import _scan
except ImportError:  # not built (no compiler at install): the pattern counts
    _scan = None

SHAPE = "0000-00-00T00:00:00.000Z"  # a timestamp; "0" is any ASCII digit
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)
# The record's head as logs.RECORD reads it, with a logger of ASCII non-space characters
# (the bytes both readings agree on).
HEAD = r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\x00-\x08\x0e-\x1b\x21-\x7f]+ \[[0-9]+\] "
ERROR_KEYS = (b"ERROR ", b"CRITICAL ")
BEFORE_KEYS = [bytes([d]) for d in b"0123456789"]
ERROR_KEY = re.compile(rb"^([^ \n]++ ++[^ \n]++ \[[0-9]++)\] ([^\n]*+)$", re.MULTILINE)
STAMPED = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T")
PROBE_BYTES = 256 * 1024  # where a chunk's earliest and latest records are looked for
DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)


def _tail(i: int) -> str:
    return "".join("[0-9]" if c == "0" else re.escape(c) for c in SHAPE[i:])


def _bound(stamp: str, i: int, *, up: bool, inclusive: bool) -> str:
    """Timestamp suffixes from position i that are >= (up) or <= stamp[i:] (or strictly)."""
    if i == len(SHAPE):
        return "" if inclusive else "(?!)"
    rest = _bound(stamp, i + 1, up=up, inclusive=inclusive)
    same = None if rest == "(?!)" else re.escape(stamp[i]) + rest
    if SHAPE[i] != "0":
        return same or "(?!)"
    low, high = (chr(ord(stamp[i]) + 1), "9") if up else ("0", chr(ord(stamp[i]) - 1))
    other = f"[{low}-{high}]{_tail(i + 1)}" if low <= high else None
    alternatives = [a for a in (same, other) if a is not None]
    return f"(?:{'|'.join(alternatives)})" if alternatives else "(?!)"


def between(low: str, high: str) -> str:
    """A pattern for the timestamps from `low` to `high`, both included."""
    if low > high:
        return "(?!)"
    k = next((i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a != b), len(SHAPE))
    if k == len(SHAPE):
        return re.escape(low)
    alternatives = [low[k] + _bound(low, k + 1, up=True, inclusive=True)]
    if ord(high[k]) - ord(low[k]) > 1:
        alternatives.append(f"[{chr(ord(low[k]) + 1)}-{chr(ord(high[k]) - 1)}]{_tail(k + 1)}")
    alternatives.append(high[k] + _bound(high, k + 1, up=False, inclusive=True))
    return re.escape(low[:k]) + f"(?:{'|'.join(alternatives)})"


def at_least(stamp: str) -> str:
    return _bound(stamp, 0, up=True, inclusive=True)


def below(stamp: str) -> str:
    return _bound(stamp, 0, up=False, inclusive=False)


@lru_cache(maxsize=64)
def classifier(since: str, first: str | None, last: str | None) -> re.Pattern[bytes]:
    """The pattern giving each line of a chunk its key (see the module's docstring)."""
    inside = between(first, last) if first and last else "(?!)"
    # Level, logger and process id; with the message for an error.
    keys = (r"(?!ERROR |CRITICAL )[^ ]++ ++[^ ]++ \[[0-9]++\] "
            r"|(?:ERROR|CRITICAL) ++[^ ]++ \[[0-9]++\] [^\n]*+")  # fmt: skip
    pattern = (
        rf"\n(?:{inside} |)("
        rf"(?<=Z )(?:{keys}|)"  # in the window, between first and last: its key, or none
        r"|  "  # a continuation line
        rf"|(?={below(since)} {HEAD})[0-9]"  # a record before the window
        rf"|{_tail(0)} (?:{keys})"  # any other record: out of order, or a name not in ASCII
        r"|)"  # anything else
    )
    return re.compile(pattern.encode())


@dataclass(frozen=True)
class Bounds:
    """Two records of the window, `first` <= `last`: the pattern counts a record between
    them without its timestamp. `held` are those of the two in the chunk."""

    first: str | None = None
    last: str | None = None
    held: tuple[str, ...] = ()


@lru_cache(maxsize=4)
def finder(since: str | None) -> re.Pattern[bytes]:
    """A record (at or after `since`), its timestamp as group 1."""
    return re.compile(rf"\n({at_least(since) if since else _tail(0)}) {HEAD}".encode())


class Lines(NamedTuple):
    """Whole lines in a buffer (a bytearray, an mmap): `buffer[begin]` is the newline before
    the first, and they run to `end`, their last newline left out."""

    buffer: Any
    begin: int
    end: int

    @classmethod
    def of(cls, buffer: Any, begin: int, stop: int) -> "Lines":
        """The lines between a newline at `begin` and `stop` (after a newline, or the end)."""
        return cls(buffer, begin, stop - 1 if stop > begin and buffer[stop - 1] == 10 else stop)

    def text(self) -> list[str]:
        """The lines as text, as reading them as UTF-8 (errors replaced) gives them."""
        if self.end <= self.begin:
            return []
        return str(memoryview(self.buffer)[self.begin + 1 : self.end], "utf-8", "replace").split(
            "\n"
        )

    def is_ascii(self) -> bool:
        return bytes(memoryview(self.buffer)[self.begin : self.end]).isascii()


def chunk_bounds(lines: Lines, since: str) -> Bounds:
    """The earliest record of the window near the lines' start and the latest near their
    end: in lines in time order give or take a few, the first and the last."""
    buffer, begin, end = lines
    early = finder(since).findall(buffer, begin, min(end, begin + PROBE_BYTES))
    if not early:
        found = finder(since).search(buffer, begin, end)
        if found is None:
            return Bounds()
        early = [found[1]]
    late = finder(since).findall(buffer, max(begin, end - PROBE_BYTES), end)
    first, last = min(early).decode(), max(late + early).decode()
    return Bounds(first, last, (first, last))


def scan_chunk(lines: Lines, since: str, cap: int, bounds: Bounds | None = None) -> Part | None:
    """The counts of the lines, with the `bounds` of their file or else their own; None when
    more than `cap` distinct loggers or messages would have to be kept."""
    if lines.end <= lines.begin:
        return Part()
    part = None
    if STAMP.fullmatch(since):
        bounds = bounds or chunk_bounds(lines, since)
        keys = line_keys(lines, since, bounds)
        part = None if keys is None else _tally(keys, lines.is_ascii, bounds.held, since)
    return part if part is not None else slow_scan(lines, since, cap)


def line_keys(lines: Lines, since: str, bounds: Bounds) -> dict[bytes, int] | None:
    """The lines' keys counted, in the order of their first appearance (by the compiled
    scanner when it is built, else by the pattern); None when a key runs across lines."""
    if _scan is not None:
        return _scan.keys(lines.buffer, lines.begin, lines.end, since, bounds.first, bounds.last)
    pattern = classifier(since, bounds.first, bounds.last)
    keys = Counter(pattern.findall(lines.buffer, lines.begin, lines.end))
    return None if b"\n" in b"".join(keys) else keys


def slow_scan(lines: Lines, since: str, cap: int) -> Part | None:
    """The same counts, line by line."""
    summary = LogSummary(since, max_distinct=cap)
    summary.feed(lines.text())
    return None if summary.overflowed else summary.part()


def _tally(
    keys: dict[bytes, int], is_ascii: Callable[[], bool], held: tuple[str, ...], since: str
) -> Part | None:
    """The part the keys of a chunk's lines add up to; None when it must be read line by line."""
    part = Part(lines=sum(keys.values()), unparseable=keys.pop(b"", 0))
    part.continuation = keys.pop(b"  ", 0)
    part.before = sum(keys.pop(key, 0) for key in BEFORE_KEYS)
    if part.unparseable and not is_ascii():
        return None  # maybe records to the Unicode reading of \d and \S
    order, counts, stamped = list(keys), list(keys.values()), []
    if order and min(order)[:1] <= b"9":  # keys with their timestamps
        order, counts, stamped = _unstamp(order, counts, since, part)
    is_error = list(map(bytes.startswith, order, repeat(ERROR_KEYS)))
    others = _other_keys(order, counts, is_error, part)
    errors = _error_keys(order, counts, is_error)
    if errors is None:
        return None  # an error's key is ambiguous
    for _, level, logger, count in sorted(others[0] + errors[0], key=itemgetter(0)):
        part.levels[level] = part.levels.get(level, 0) + count
        part.loggers[logger] = part.loggers.get(logger, 0) + count
    part.errors = errors[1]
    stamps = list(held)  # records of the window the chunk counted without their timestamps
    stamps += [stamp for position, stamp in stamped if position not in others[1]]  # and with
    if stamps:
        part.first, part.last = min(stamps), max(stamps)
    return part


def _unstamp(
    order: list[bytes], counts: list[int], since: str, part: Part
) -> tuple[list[bytes], list[int], list[tuple[int, str]]]:
    """The keys of records kept with their timestamp, without it: records of the window out
    of order, with (position, timestamp) of each; records before the window are counted as
    such (or as unparseable lines) and left out."""
    keys, weights, stamped = [], [], []
    for key, count in zip(order, counts, strict=True):
        if not STAMPED.match(key):
            keys.append(key)
            weights.append(count)
        elif key[:24].decode() >= since:
            stamped.append((len(keys), key[:24].decode()))
            keys.append(key[25:])
            weights.append(count)
        elif _refused(key[25:]):
            part.unparseable += count
        else:
            part.before += count
    return keys, weights, stamped


def _refused(key: bytes) -> bool:
    """Whether the text reading would see no record in a line of this key."""
    level, _, rest = key.partition(b" ")
    if level in (b"ERROR", b"CRITICAL"):
        found = ERROR_KEY.match(key)
        rest = found[1].partition(b" ")[2] if found else b" "
    logger = rest.lstrip(b" ").rpartition(b" [")[0]
    return level.decode("latin-1") not in LEVELS or _logger(logger) is None


def _logger(raw: bytes) -> str | None:
    """The logger name as the text reading sees it, or None where it would see no record."""
    name = raw.decode("utf-8", "replace")
    return name if name.split() == [name] else None


def _other_keys(
    order: list[bytes], counts: list[int], is_error: list[bool], part: Part
) -> tuple[list, set[int]]:
    """(first position, level, logger, count) for each level and logger of the keys that are
    not errors, and the positions of those the text reading would refuse, whose lines count
    as unparseable."""
    seen: dict[tuple[bytes, bytes], list | None] = {}
    refused = set()
    for i in compress(range(len(order)), map(not_, is_error)):
        level, _, rest = order[i].partition(b" ")
        raw = rest.lstrip(b" ").rpartition(b" [")[0]
        if (level, raw) not in seen:  # one check a level and logger, whatever the process
            logger, name = _logger(raw), level.decode("latin-1")
            seen[level, raw] = [i, name, logger, 0] if logger and name in LEVELS else None
        if (entry := seen[level, raw]) is None:
            part.unparseable += counts[i]
            refused.add(i)
        else:
            entry[3] += counts[i]
    return [tuple(entry) for entry in seen.values() if entry], refused


def _error_keys(order: list[bytes], counts: list[int], is_error: list[bool]) -> tuple | None:
    """The error keys' (position, level, logger, count) entries and their messages, masked
    and counted in order; None when they must be read line by line."""
    keys, weights = list(compress(order, is_error)), list(compress(counts, is_error))
    if not keys:
        return [], {}
    joined = b"\n".join(keys)  # one line a key (none runs across lines)
    if joined.count(b"] ") == len(keys):  # only the one after the process id
        pieces = joined.replace(b"] ", b"\n").split(b"\n")
        heads, messages = pieces[0::2], pieces[1::2]
    else:
        pairs = ERROR_KEY.findall(joined)
        if len(pairs) != len(keys):
            return None
        heads, messages = [head for head, _ in pairs], [message for _, message in pairs]
    positions = list(compress(range(len(order)), is_error))
    per_head = _weighted(heads, weights)
    if len(per_head) > 64:  # else each first place is found early: scan for it
        first_at = dict(zip(reversed(heads), reversed(positions), strict=True))
    entries = []
    for head, count in per_head.items():
        level, _, rest = head.partition(b" ")
        logger = _logger(rest.lstrip(b" ").rpartition(b" [")[0])
        if logger is None:
            return None
        at = first_at[head] if len(per_head) > 64 else positions[heads.index(head)]
        entries.append((at, level.decode(), logger, count))
    return entries, count_masked(messages, weights)


def _weighted(keys: list, weights: list[int]) -> dict:
    """Keys counted with their weights, in the order of their first appearance."""
    if max(weights) == 1:
        return Counter(keys)
    counted: dict = {}
    for key, weight in zip(keys, weights, strict=True):
        counted[key] = counted.get(key, 0) + weight
    return counted


def count_masked(messages: list[bytes], weights: list[int]) -> dict[str, int]:
    """`mask(message)[:300]` of each message (bytes, UTF-8) counted with its weight, in the
    order of first appearance. `mask` treats every ASCII digit alike, so it gives the same
    for a message with its digits made zeros: the messages are counted in that form (one
    pass over all of them), and only each distinct form is decoded and masked."""
    zeroed = b"\n".join(messages).translate(DIGITS_TO_ZERO).split(b"\n")
    counted: dict[str, int] = {}
    for key, count in _weighted(zeroed, weights).items():
        text = mask(key.decode("utf-8", "replace"))[:300]
        counted[text] = counted.get(text, 0) + count
    return counted
