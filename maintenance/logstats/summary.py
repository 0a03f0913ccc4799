"""What log_statistics counts, line by line (the reference), and parts counted elsewhere
merged in as if their lines had been read here, in order."""

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from maintenance.logs import CONTINUATION, LEVELS, RECORD, mask

ERROR_LEVELS = ("ERROR", "CRITICAL")


@dataclass
class Part:
    """The counts over a stretch of lines, complete: loggers and messages in the order of
    their first appearance (what the bounded counters of a summary depend on)."""

    lines: int = 0
    continuation: int = 0
    unparseable: int = 0
    before: int = 0
    levels: dict[str, int] = field(default_factory=dict)
    loggers: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None


class LogSummary:
    """Streaming counts over log lines; memory bounded by `max_distinct`.

    `since` is a timestamp in the log's format: records before it only count as such.
    """

    def __init__(self, since: str, *, max_distinct: int) -> None:
        self.since = since
        self.max_distinct = max_distinct
        self.levels: Counter = Counter()
        self.loggers: Counter = Counter()
        self.errors: Counter = Counter()
        self.lines = self.records = self.continuation = self.unparseable = self.before = 0
        self.first: str | None = None
        self.last: str | None = None
        self.overflowed = False  # a logger or message went to "(other)"

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
            if level in ERROR_LEVELS:
                self._count(self.errors, mask(message)[:300])
            if self.first is None or stamp < self.first:
                self.first = stamp
            if self.last is None or stamp > self.last:
                self.last = stamp

    def merge(self, part: Part) -> None:
        """Count a part as if its lines came next: a logger or message is kept when it is
        known or there is room at its first appearance, which is what feeding does."""
        self.lines += part.lines
        self.continuation += part.continuation
        self.unparseable += part.unparseable
        self.before += part.before
        for level, count in part.levels.items():
            self.levels[level] += count
            self.records += count
        for logger, count in part.loggers.items():
            self._count(self.loggers, logger, count)
        for message, count in part.errors.items():
            self._count(self.errors, message, count)
        if part.first is not None and (self.first is None or part.first < self.first):
            self.first = part.first
        if part.last is not None and (self.last is None or part.last > self.last):
            self.last = part.last

    def part(self) -> Part:
        """Everything counted so far, as a part (complete unless `overflowed`)."""
        return Part(self.lines, self.continuation, self.unparseable, self.before,
                    dict(self.levels), dict(self.loggers), dict(self.errors),
                    self.first, self.last)  # fmt: skip

    def _count(self, counter: Counter, key: str, count: int = 1) -> None:
        if key in counter or len(counter) < self.max_distinct:
            counter[key] += count
        else:
            counter["(other)"] += count
            self.overflowed = True

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
