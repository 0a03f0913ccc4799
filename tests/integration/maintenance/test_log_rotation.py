"""The shared rotating log: compression outside the logging call, no line lost, and
log_statistics reading rotated files whether or not they are compressed yet."""

import gzip
import logging
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from maintenance import operations
from maintenance.logs import LineFormatter, SharedRotatingFileHandler, log_files
from maintenance.operations import log_statistics
from tests.helpers import age, wait_for


@pytest.fixture
def logger(tmp_path: Path) -> Iterator[logging.Logger]:
    logger = logging.getLogger(f"rotation.{tmp_path.name}")
    logger.propagate = False
    yield logger
    for handler in logger.handlers:
        logger.removeHandler(handler)
        handler.close()


def lines(count: int) -> str:
    """Log lines of random hex, which gzip cannot make short work of."""
    noise = os.urandom(30 * count).hex()
    return "".join(
        f"2026-12-01T10:00:00.000Z WARNING  app [1] {noise[60 * n : 60 * n + 60]}\n"
        for n in range(count)
    )


def test_the_logging_call_that_rotates_returns_before_any_compression(
    tmp_path: Path, logger: logging.Logger
) -> None:
    """A large rotated file waits to be compressed; the record that triggers the next
    rotation must not wait for it: its .gz appears only after the call returned."""
    waiting = tmp_path / "app.log.20261201T000000000000"
    content = lines(150_000)  # 16 MB
    waiting.write_text(content)
    age(waiting, 1)  # an hour quiet: the old handler compressed it in the logging call
    (tmp_path / "app.log").write_text(lines(2))
    handler = SharedRotatingFileHandler(str(tmp_path / "app.log"), maxBytes=100, backupCount=5)
    handler.setFormatter(LineFormatter())
    logger.addHandler(handler)

    logger.warning("the record that rotates")
    compressed_in_the_call = [p.name for p in tmp_path.glob("app.log.2*.gz")]

    assert compressed_in_the_call == [], "the logging call compressed rotated files itself"
    assert waiting.exists()
    packed = Path(f"{waiting}.gz")
    wait_for(lambda: packed.exists() and not waiting.exists(), timeout=60)
    with gzip.open(packed, "rt") as handle:
        assert handle.read() == content
    rotated = sorted(p.name for p in tmp_path.glob("app.log.2*"))
    wait_for(lambda: all(name.endswith(".gz") for name in rotated), timeout=30)
    assert "the record that rotates" in (tmp_path / "app.log").read_text()


def _write_lines(path: str, worker: int, count: int) -> None:
    logger = logging.getLogger(f"writer{worker}")
    logger.propagate = False
    handler = SharedRotatingFileHandler(path, maxBytes=10_000, backupCount=10_000)
    handler.setFormatter(LineFormatter())
    logger.addHandler(handler)
    for n in range(count):
        logger.warning("worker %s line %s %s", worker, n, "x" * 50)
    handler.close()  # waits for this process's compression


def read_all(directory: Path) -> list[str]:
    """Every line in app.log and its rotated files, each file read once (as log_files)."""
    lines: list[str] = []
    for file in directory.glob("app.log*"):
        if file.suffix == ".gz":
            with gzip.open(file, "rt") as handle:
                lines += handle.read().splitlines()
        elif not file.name.endswith((".lock", ".tmp")):
            lines += file.read_text().splitlines()
    return lines


def test_several_processes_rotate_and_compress_meanwhile_without_losing_a_line(
    tmp_path: Path,
) -> None:
    """Each rotated file is compressed at once: safe only because no process can still be
    appending to it (without the shared flock on writes this loses a few lines in 20,000)."""
    path = str(tmp_path / "app.log")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_lines, args=(path, w, 5000)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    rotated = list(tmp_path.glob("app.log.2*"))
    assert len(rotated) > 100  # it rotated many times
    assert all(p.name.endswith(".gz") for p in rotated), "rotated files left uncompressed"
    lines = read_all(tmp_path)
    assert len(lines) == 20000
    assert len({line.split("] ", 1)[1] for line in lines}) == 20000


@pytest.fixture
def log_dir(roots: dict[str, Path]) -> Path:
    return roots["LOG_DIR"]


def test_log_statistics_reads_rotated_files_compressed_or_not_and_each_once(
    log_dir: Path,
) -> None:
    now = "2999-01-01T00:00:00.000Z"  # in the window, whenever the test runs
    record = f"{now} ERROR    app [1] boom\n"
    (log_dir / "app.log").write_text(record)
    (log_dir / "app.log.20261201T010000000000").write_text(record * 2)  # not yet compressed
    with gzip.open(log_dir / "app.log.20261201T000000000000.gz", "wt") as handle:
        handle.write(record * 3)
    # Caught between the two steps of a compression: the .gz renamed in, the original
    # not yet removed; and a compression killed halfway.
    halfway = log_dir / "app.log.20261201T020000000000"
    halfway.write_text(record * 4)
    with gzip.open(halfway.with_name(halfway.name + ".gz"), "wt") as handle:
        handle.write(record * 4)
    (log_dir / "app.log.20261201T030000000000.gz.tmp").write_bytes(b"\x1f\x8b partial")
    result = log_statistics(hours=24)
    assert result["records"] == 1 + 2 + 3 + 4
    assert "app.log.20261201T020000000000" not in result["files"]


def test_a_rotated_file_compressed_between_listing_and_reading_is_read(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process gzips a rotated file after log_statistics listed it."""
    record = "2999-01-01T00:00:00.000Z INFO     app [1] hello\n"
    rotated = log_dir / "app.log.20261201T000000000000"
    rotated.write_text(record * 5)

    def listed_then_compressed(*args: object, **kwargs: object) -> list[Path]:
        files = log_files(*args, **kwargs)
        with gzip.open(f"{rotated}.gz", "wb") as packed:  # as the handler does it
            packed.write(rotated.read_bytes())
        rotated.unlink()
        return files

    monkeypatch.setattr(operations, "log_files", listed_then_compressed)
    result = log_statistics(hours=24)
    assert not rotated.exists()
    assert result["records"] == 5
