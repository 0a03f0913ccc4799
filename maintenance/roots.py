"""Which directories the file operations may work in.

Checked by `manage.py check` (maintenance/checks.py) and again by each operation before it
touches anything (the task fails with the rule's code). TEMP_DIR and ARTIFACTS_DIR are
destructive roots: everything below them may be deleted, so beyond the rules every root
obeys they must not be a system or home directory, nor hold, sit in or overlap anything of
the project's own (its code, VAR_DIR, the database, the secret key, Redis' data, the logs,
the Python environment), nor each other.
"""

import os
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings

from maintenance.conf import conf

ROOTS = ("TEMP_DIR", "ARTIFACTS_DIR", "LOG_DIR")
DESTRUCTIVE = ("TEMP_DIR", "ARTIFACTS_DIR")
# Never a root, nor anything inside them.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                "/proc", "/sbin", "/sys", "/usr")  # fmt: skip
# Shared directories: never a root themselves (a directory of the project's inside is fine).
SYSTEM_DIRS = ("/home", "/root", "/tmp", "/var", "/var/tmp", "/var/lib", "/var/log",  # noqa: S108
               "/var/cache", "/var/spool", "/var/mail", "/var/run", "/run", "/opt", "/srv",
               "/mnt", "/media", "/snap", "/lost+found")  # fmt: skip


class UnsafeRoot(Exception):
    """A configured root that an operation must refuse to work in."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def check_root(setting: str, *, must_exist: bool = True) -> Path:
    """MAINTENANCE[setting] as an absolute path, or UnsafeRoot saying what is wrong with it."""
    raw = str(getattr(conf, setting))
    if not os.path.isabs(raw):
        raise UnsafeRoot("root_relative", f"{setting} must be an absolute path, not {raw!r}.")
    root = PurePosixPath(os.path.normpath(raw))
    if root == PurePosixPath("/"):
        raise UnsafeRoot("root_is_slash", f"{setting} must not be the file-system root.")
    if os.path.islink(root) or os.path.realpath(root) != str(root):
        raise UnsafeRoot("root_symlink", f"{setting} ({root}) is or goes through a symlink.")
    if must_exist and not os.path.isdir(root):
        raise UnsafeRoot(
            "root_missing", f"{setting} ({root}) does not exist or is not a directory."
        )
    if setting in DESTRUCTIVE and _system(root):  # first: the project may live inside one
        raise UnsafeRoot(
            "root_system", f"{setting} ({root}) is a system or home directory, or inside one."
        )
    project, var = _real(settings.BASE_DIR), _real(settings.VAR_DIR)
    if project.is_relative_to(root) or (
        root.is_relative_to(project) and not root.is_relative_to(var)
    ):
        raise UnsafeRoot("root_in_project", f"{setting} ({root}) overlaps the project's own files.")
    if setting in DESTRUCTIVE:
        _check_destructive(setting, root, var)
    return Path(root)


def _check_destructive(setting: str, root: PurePosixPath, var: PurePosixPath) -> None:
    if var.is_relative_to(root):
        raise UnsafeRoot(
            "root_holds_state",
            f"{setting} ({root}) is VAR_DIR ({var}) or holds it: the project's own state "
            "(secret key, database, Redis' data, logs) would be deleted.",
        )
    for what, path in _state():
        if _overlaps(root, path):
            raise UnsafeRoot("root_holds_state", f"{setting} ({root}) overlaps {what} ({path}).")
    for what, path in _other_roots(setting):
        if _overlaps(root, path):
            raise UnsafeRoot(
                "root_overlap", f"{setting} ({root}) overlaps {what} ({path}): one holds the other."
            )


def _system(root: PurePosixPath) -> bool:
    homes = {_real(Path.home())}
    if os.environ.get("HOME", "").startswith("/"):
        homes.add(_real(os.environ["HOME"]))
    return (
        any(root.is_relative_to(tree) for tree in SYSTEM_TREES)
        or str(root) in SYSTEM_DIRS
        or root.parent == PurePosixPath("/home")  # a user's home
        or any(home.is_relative_to(root) for home in homes)
    )


def _state() -> list[tuple[str, PurePosixPath]]:
    """The project's own files and directories outside its code, each with what it is."""
    var = Path(settings.VAR_DIR)
    state = [("the secret key", var / "secret_key"), ("Redis' data", var / "redis"),
             ("the cleanups' journal", var / "cleanup"),
             ("the static files", getattr(settings, "STATIC_ROOT", None)),
             ("the Python environment", sys.prefix)]  # fmt: skip
    for database in settings.DATABASES.values():
        if database.get("ENGINE", "").endswith("sqlite3"):
            state.append(("the database", database.get("NAME")))
            state.append(("the test database", database.get("TEST", {}).get("NAME")))
    url = urlsplit(str(getattr(settings, "REDIS_URL", "")))
    if url.scheme == "unix":
        state.append(("Redis' socket", os.path.dirname(url.path)))
    return [(what, _real(path)) for what, path in state if path and os.path.isabs(str(path))]


def _other_roots(setting: str) -> list[tuple[str, PurePosixPath]]:
    others = [(name, getattr(conf, name)) for name in ROOTS if name != setting]
    for handler in getattr(settings, "LOGGING", {}).get("handlers", {}).values():
        if os.path.isabs(str(handler.get("filename", ""))):
            others.append(("a log file's directory", os.path.dirname(handler["filename"])))
    # A root that is / is refused on its own; every other would "overlap" it.
    return [(w, _real(p)) for w, p in others if os.path.isabs(str(p)) and str(p).strip("/")]


def _real(path: str | os.PathLike) -> PurePosixPath:
    return PurePosixPath(os.path.realpath(path))


def _overlaps(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)
