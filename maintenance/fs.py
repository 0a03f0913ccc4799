"""File-system primitives that never leave their root and never follow a symlink.

Every path below a root is reached from the root's directory file descriptor, one
component at a time, with O_NOFOLLOW: a directory swapped for a symlink mid-walk makes the
open fail instead of redirecting a deletion.
"""

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeRoot(Exception):
    """A configured root that an operation must refuse to work in."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def check_root(path: Path, *, project_dir: Path, var_dir: Path, name: str) -> Path:
    """The root as an absolute path, or UnsafeRoot saying what is wrong with it."""
    raw = str(path)
    if not os.path.isabs(raw):
        raise UnsafeRoot("root_relative", f"{name} must be an absolute path, not {raw!r}.")
    normal = Path(os.path.normpath(raw))
    if normal == Path("/"):
        raise UnsafeRoot("root_is_slash", f"{name} must not be the file-system root.")
    if os.path.islink(normal) or os.path.realpath(normal) != str(normal):
        raise UnsafeRoot("root_symlink", f"{name} ({normal}) is or goes through a symlink.")
    if not normal.is_dir():
        raise UnsafeRoot("root_missing", f"{name} ({normal}) does not exist or is not a directory.")
    project, var = project_dir.resolve(), var_dir.resolve()
    inside_project = normal == project or normal.is_relative_to(project)
    if project.is_relative_to(normal) or (inside_project and not normal.is_relative_to(var)):
        raise UnsafeRoot("root_in_project", f"{name} ({normal}) overlaps the project's own files.")
    return normal


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


def tree_bytes(dir_fd: int) -> int:
    """Bytes of the regular files below an open directory (links not followed)."""
    total = 0
    for _, _, files, root_fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in files:
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def remove_below(root_fd: int, parts: list[str], *, dry_run: bool) -> int | None:
    """Remove the entry at `parts` below `root_fd`; the bytes it held, None if absent.

    Intermediate components must be real directories (a symlink among them raises OSError
    ELOOP/ENOTDIR). A final symlink is removed as a link; its target is never touched.
    """
    fds = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            parent = os.open(part, DIR_FLAGS, dir_fd=parent)
            fds.append(parent)
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            if not dry_run:
                os.unlink(name, dir_fd=parent)
            return size
        with open_dir(name, dir_fd=parent) as fd:
            size = tree_bytes(fd)
        if not dry_run:
            shutil.rmtree(name, dir_fd=parent)
        return size
    finally:
        for fd in reversed(fds):
            os.close(fd)


def describe(name: str) -> str:
    """A printable, JSON- and PostgreSQL-safe form of a file name (any bytes, newlines)."""
    raw = os.fsencode(name)
    return raw.decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")


def is_missing(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT
