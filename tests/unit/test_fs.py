"""maintenance.fs: the mount id that tells a bind mount apart, by statx or by /proc."""

import os
from pathlib import Path

import pytest

from maintenance import fs


def fdinfo_mount_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    raise AssertionError("no mnt_id in fdinfo")


def test_the_mount_id_is_the_kernels_by_statx_and_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fs.open_dir(tmp_path) as fd:
        expected = fdinfo_mount_id(fd)
        assert fs.mount_id(fd) == expected
        monkeypatch.setattr(fs, "_statx", lambda: None)  # glibc without statx
        assert fs.mount_id(fd) == expected
        assert fs.mount_of(fd) == (os.fstat(fd).st_dev, expected)
