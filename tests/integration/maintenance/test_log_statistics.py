"""log_statistics against logs with a known ground truth, and the log handler itself."""

import gzip
import logging
import multiprocessing
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maintenance.logs import LineFormatter, SharedRotatingFileHandler, mask
from maintenance.operations import log_statistics


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def record(level: str, message: str, *, name: str = "app", exc: bool = False) -> str:
    """A line exactly as the project's formatter writes it."""
    rec = logging.LogRecord(name, getattr(logging, level), __file__, 1, message, None, None)
    if exc:
        try:
            raise ValueError("inner")
        except ValueError:
            import sys

            rec.exc_info = sys.exc_info()
    return LineFormatter().format(rec) + "\n"


@pytest.fixture
def log_dir(roots: dict[str, Path]) -> Path:
    return roots["LOG_DIR"]


def test_counts_match_a_known_ground_truth(log_dir: Path) -> None:
    now = datetime.now(tz=UTC)
    old = stamp(now - timedelta(hours=30))
    rotated = "".join(
        [
            f"{old} ERROR    app.old [1] outside the window\n",
            record("ERROR", "Order 1234 failed after 30 ms"),
            record("ERROR", "Order 98765 failed after 7 ms", name="app.orders"),
        ]
    )
    with gzip.open(log_dir / "app.log.1.gz", "wt") as handle:
        handle.write(rotated)
    current = "".join(
        [
            record("INFO", "started"),
            record("WARNING", "slow", name="django.request"),
            record("ERROR", "crashed", exc=True),  # + 4 or so traceback continuation lines
            # A message that tries to forge a record of its own on a new line:
            record("INFO", f"user input\n{stamp(now)} CRITICAL app [1] forged!"),
            "garbage that is not a record\n",
            "2026-13-99 not a timestamp either\n",
            record("CRITICAL", "disk 7f3a9c2e1b4d5f60 gone"),
        ]
    )
    (log_dir / "app.log").write_text(current)
    (log_dir / "unrelated.txt").write_text(record("ERROR", "not a log of ours"))
    result = log_statistics(hours=24)
    assert result["by_level"] == {"DEBUG": 0, "INFO": 2, "WARNING": 1, "ERROR": 3, "CRITICAL": 1}
    assert result["records"] == 7
    assert result["lines_before_window"] == 1
    assert result["unparseable_lines"] == 2
    assert result["continuation_lines"] >= 4
    assert result["by_logger"] == {"app": 5, "app.orders": 1, "django.request": 1}
    assert {"message": "Order <n> failed after <n> ms", "count": 2} in result["top_errors"]
    assert {"message": "disk <hex> gone", "count": 1} in result["top_errors"]
    assert all("forged" not in e["message"] for e in result["top_errors"])
    assert sorted(result["files"]) == ["app.log", "app.log.1.gz"]
    assert result["first_record_at"] <= result["last_record_at"]


def test_files_older_than_the_window_are_not_read(log_dir: Path) -> None:
    path = log_dir / "app.log.5.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(record("ERROR", "ancient"))
    week_ago = (datetime.now(tz=UTC) - timedelta(days=7)).timestamp()
    os.utime(path, (week_ago, week_ago))
    result = log_statistics(hours=24)
    assert result["files"] == []
    assert result["records"] == 0


def test_no_logs_at_all_is_an_empty_summary(log_dir: Path) -> None:
    result = log_statistics(hours=1)
    assert (result["records"], result["first_record_at"], result["top_errors"]) == (0, None, [])


def test_memory_and_output_stay_bounded_with_many_distinct_errors(log_dir: Path) -> None:
    from django.test import override_settings

    lines = "".join(record("ERROR", f"error kind {chr(65 + i % 26)}{i // 26}x") for i in range(500))
    (log_dir / "app.log").write_text(lines)
    with override_settings(
        MAINTENANCE={"LOG_DIR": log_dir, "LOG_MAX_DISTINCT_MESSAGES": 10, "LOG_TOP_MESSAGES": 5}
    ):
        result = log_statistics(hours=1)
    assert len(result["top_errors"]) == 5
    assert result["by_level"]["ERROR"] == 500
    assert result["top_errors"][0]["message"] == "(other)"


def test_masking_groups_numbers_and_ids() -> None:
    assert mask("job 550e8400-e29b-41d4-a716-446655440000 row 42 sha deadbeef99") == (
        "job <uuid> row <n> sha <hex>"
    )


def _write_lines(path: str, worker: int, count: int) -> None:
    logger = logging.getLogger(f"writer{worker}")
    logger.propagate = False
    handler = SharedRotatingFileHandler(path, maxBytes=20_000, backupCount=100)
    handler.setFormatter(LineFormatter())
    logger.addHandler(handler)
    for n in range(count):
        logger.warning("worker %s line %s %s", worker, n, "x" * 50)
    handler.close()


def test_several_processes_share_one_rotating_log_without_losing_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "app.log")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_lines, args=(path, w, 1500)) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    lines = []
    for file in tmp_path.glob("app.log*"):
        if file.suffix == ".gz":
            with gzip.open(file, "rt") as handle:
                lines += handle.read().splitlines()
        elif file.suffix != ".lock":
            lines += file.read_text().splitlines()
    assert len(lines) == 4500
    assert len({line.split("] ", 1)[1] for line in lines}) == 4500
    assert len(list(tmp_path.glob("app.log.2*"))) > 3  # it did rotate, many times


def test_rotated_files_are_compressed_and_pruned(tmp_path: Path) -> None:
    path = str(tmp_path / "app.log")
    _write_lines(path, 0, 1000)  # closing the handler waits for its compression
    rotated = list(tmp_path.glob("app.log.2*"))
    assert len(rotated) > 2
    assert all(p.suffix == ".gz" for p in rotated)
    handler = SharedRotatingFileHandler(path, maxBytes=20_000, backupCount=2)
    handler._prune()
    assert len(list(tmp_path.glob("app.log.2*"))) == 2
