"""Each test gets its own TEMP_DIR, ARTIFACTS_DIR and LOG_DIR, and a sentinel tree outside."""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[dict[str, Path]]:
    paths = {name: tmp_path / name.lower() for name in ("TEMP_DIR", "ARTIFACTS_DIR", "LOG_DIR")}
    for path in paths.values():
        path.mkdir()
    with override_settings(MAINTENANCE=paths):
        yield paths


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` with a digest of its content (or its link target)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                state[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[str(path)] = "dir"
    return state


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A tree outside every root; the test fails if anything in it changes."""
    root = tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    (root / "file.txt").write_text("keep me")
    (root / "dir" / "nested.txt").write_text("keep me too")
    for path in (root / "file.txt", root / "dir" / "nested.txt", root / "dir"):
        os.utime(path, (1, 1))  # ancient: any sweep that reached here would delete them
    before = snapshot(root)
    yield root
    assert snapshot(root) == before, "something outside the configured root changed"


def age(path: Path, hours: float) -> None:
    """Set a path's modification time `hours` ago, without following a symlink."""
    import time

    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment), follow_symlinks=False)
