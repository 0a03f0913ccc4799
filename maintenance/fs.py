"""File-system primitives that never leave their root, its mount, nor follow a symlink.

Every path below a root is reached from the root's directory file descriptor, one
component at a time, with O_NOFOLLOW: a directory swapped for a symlink mid-walk makes the
open fail instead of redirecting a deletion. Each directory opened is checked to be on the
root's mount (device and mount id), so a mount point, a bind mount included, is never entered.
"""

import ctypes
import errno
import functools
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextmanager
def open_dir(name: str | Path, *, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def relative_parts(path: str, root: Path) -> list[str] | None:
    """The components of `path` below `root`, or None when it is not safely below it."""
    pure = PurePosixPath(path)
    if pure.is_absolute():
        try:
            pure = pure.relative_to(PurePosixPath(root))
        except ValueError:
            return None
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


@contextmanager
def open_parent(root_fd: int, parts: list[str], *, mount: tuple[int, int | None]) -> Iterator[int]:
    """The directory holding `parts[-1]`, opened from `root_fd` one component at a time.

    A symlink among the components raises OSError ELOOP/ENOTDIR; a component on another
    mount than `mount` (the root's `mount_of`) raises OSError EXDEV.
    """
    fds = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            parent = os.open(part, DIR_FLAGS, dir_fd=parent)
            fds.append(parent)
            if mount_of(parent) != mount:
                raise OSError(errno.EXDEV, "a mount point on the way, not crossed", part)
        yield parent
    finally:
        for fd in reversed(fds):
            os.close(fd)


def mount_of(fd: int) -> tuple[int, int | None]:
    """(device, mount id) of an open file: a bind mount of the same file system has the
    same device but a mount id of its own. The id is None where the kernel cannot tell."""
    return os.fstat(fd).st_dev, mount_id(fd)


STATX_MNT_ID = 0x1000
AT_EMPTY_PATH = 0x1000
STATX_SIZE, STATX_MNT_ID_OFFSET = 256, 144  # struct statx (linux/stat.h)


@functools.cache
def _statx() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).statx  # glibc >= 2.28
    except (AttributeError, OSError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    return function


def mount_id(fd: int) -> int | None:
    """The id of the mount an open file is on (statx, Linux >= 5.8; else /proc)."""
    statx = _statx()
    if statx is not None:
        buffer = ctypes.create_string_buffer(STATX_SIZE)
        if statx(fd, b"", AT_EMPTY_PATH, STATX_MNT_ID, buffer) == 0:
            (mask,) = struct.unpack_from("I", buffer, 0)
            if mask & STATX_MNT_ID:
                return struct.unpack_from("Q", buffer, STATX_MNT_ID_OFFSET)[0]
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def describe(name: str) -> str:
    """A printable, JSON- and PostgreSQL-safe form of a file name (any bytes, newlines)."""
    raw = os.fsencode(name)
    return raw.decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")


def is_missing(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT
