"""Unsafe roots: refused by `manage.py check` and again by the operations at run time."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from maintenance.checks import check_roots
from maintenance.operations import cleanup_runs, cleanup_temp_files
from taskqueue.exceptions import TaskError
from tests.helpers import age, snapshot

# The documented check ids, one per rule (docs/operations.md): a contract.
ROOT_CHECK_IDS = {
    "root_relative": "maintenance.E001",
    "root_is_slash": "maintenance.E002",
    "root_symlink": "maintenance.E003",
    "root_missing": "maintenance.E004",
    "root_in_project": "maintenance.E005",
    "root_system": "maintenance.E006",
    "root_holds_state": "maintenance.E007",
    "root_overlap": "maintenance.E008",
}


@pytest.fixture
def var(tmp_path: Path) -> Iterator[Path]:
    """A VAR_DIR outside the project, with the state make run keeps there, all ancient."""
    var = tmp_path / "var"
    for name in ("tmp", "artifacts", "log", "redis"):
        (var / name).mkdir(parents=True)
    for path in (var / "secret_key", var / "log" / "app.log.1.gz", var / "redis" / "dump.rdb"):
        path.write_text("precious")
        age(path, 24 * 30)
    with override_settings(VAR_DIR=var):
        yield var


def configure(var: Path, **roots: str | Path) -> dict[str, Any]:
    defaults = {"TEMP_DIR": var / "tmp", "ARTIFACTS_DIR": var / "artifacts", "LOG_DIR": var / "log"}
    return {**defaults, **roots}


# (setting flagged, code, the MAINTENANCE roots, given VAR_DIR)
UNSAFE: list[tuple[str, str, Callable[[Path], dict[str, Any]]]] = [
    ("TEMP_DIR", "root_holds_state", lambda v: configure(v, TEMP_DIR=v)),
    ("ARTIFACTS_DIR", "root_holds_state", lambda v: configure(v, ARTIFACTS_DIR=v)),
    ("TEMP_DIR", "root_holds_state", lambda v: configure(v, TEMP_DIR=v.parent)),
    ("TEMP_DIR", "root_holds_state", lambda v: configure(v, TEMP_DIR=v / "redis")),
    ("TEMP_DIR", "root_holds_state", lambda v: configure(v, TEMP_DIR=v / "cleanup")),
    ("TEMP_DIR", "root_system", lambda v: configure(v, TEMP_DIR="/etc")),
    ("ARTIFACTS_DIR", "root_system", lambda v: configure(v, ARTIFACTS_DIR="/usr/share")),
    ("TEMP_DIR", "root_system", lambda v: configure(v, TEMP_DIR="/home")),
    ("TEMP_DIR", "root_system", lambda v: configure(v, TEMP_DIR=Path.home())),
    ("TEMP_DIR", "root_system", lambda v: configure(v, TEMP_DIR="/tmp")),
    ("ARTIFACTS_DIR", "root_system", lambda v: configure(v, ARTIFACTS_DIR="/var")),
    ("TEMP_DIR", "root_system", lambda v: configure(v, TEMP_DIR="/proc")),
    ("TEMP_DIR", "root_overlap", lambda v: configure(v, TEMP_DIR=v / "artifacts")),
    ("ARTIFACTS_DIR", "root_overlap", lambda v: configure(v, ARTIFACTS_DIR=v / "tmp")),
    ("TEMP_DIR", "root_overlap", lambda v: configure(v, TEMP_DIR=v / "artifacts" / "tmp")),
    ("TEMP_DIR", "root_overlap", lambda v: configure(v, TEMP_DIR=v / "log")),
    ("TEMP_DIR", "root_overlap", lambda v: configure(v, LOG_DIR=v / "tmp" / "log")),
]
IDS = [f"{setting}-{code}-{n}" for n, (setting, code, _) in enumerate(UNSAFE)]


@pytest.mark.parametrize(("setting", "code", "roots"), UNSAFE, ids=IDS)
def test_manage_py_check_refuses_an_unsafe_root(
    var: Path, setting: str, code: str, roots: Callable[[Path], dict[str, Any]]
) -> None:
    for path in roots(var).values():
        Path(path).mkdir(parents=True, exist_ok=True)
    with override_settings(MAINTENANCE=roots(var)):
        messages = check_roots()
    flagged = {(m.id, m.msg.split("'")[1]) for m in messages}
    assert (ROOT_CHECK_IDS[code], setting) in flagged, f"accepted: {[m.msg for m in messages]}"
    assert all(m.hint for m in messages)


def test_the_project_var_dir_itself_is_refused() -> None:
    """VAR_DIR inside the project: the old rule let anything below the project's var/ pass."""
    with override_settings(MAINTENANCE={"TEMP_DIR": settings.VAR_DIR}):
        messages = check_roots()
        with pytest.raises(TaskError) as caught:
            cleanup_temp_files(max_age_hours=1, dry_run=True)
    flagged = {(m.id, m.msg.split("'")[1]) for m in messages}
    assert (ROOT_CHECK_IDS["root_holds_state"], "TEMP_DIR") in flagged
    assert caught.value.code == "root_holds_state"


def test_safe_roots_under_var_and_elsewhere_pass(var: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "srv" / "scratch"
    elsewhere.mkdir(parents=True)
    with override_settings(MAINTENANCE=configure(var)):
        assert check_roots() == []
    with override_settings(MAINTENANCE=configure(var, TEMP_DIR=elsewhere)):
        assert check_roots() == []


OWN_ROOT = {cleanup_temp_files: "TEMP_DIR", cleanup_runs: "ARTIFACTS_DIR"}
SLOW_TO_WALK = {"/proc", "/usr/share", "/tmp"}  # what a dry run on the old code walked
RUN_TIME = [
    pytest.param(operation, code, roots, id=f"{operation.__name__}-{name}")
    for (setting, code, roots), name in zip(UNSAFE, IDS, strict=True)
    for operation, own in OWN_ROOT.items()
    if setting == own and str(roots(Path("/x"))[own]) not in SLOW_TO_WALK
]


@pytest.mark.parametrize(("operation", "code", "roots"), RUN_TIME)
@pytest.mark.django_db
def test_the_operations_refuse_an_unsafe_root_before_touching_anything(
    var: Path,
    operation: Callable[..., dict[str, Any]],
    code: str,
    roots: Callable[[Path], dict[str, Any]],
) -> None:
    for path in roots(var).values():
        Path(path).mkdir(parents=True, exist_ok=True)
    with override_settings(MAINTENANCE=roots(var)), pytest.raises(TaskError) as caught:
        operation(max_age_hours=1, dry_run=True)  # a dry run: the old code walked the root
    assert (caught.value.code, caught.value.retryable) == (code, False)


def test_temp_dir_equal_to_var_dir_deletes_nothing(var: Path) -> None:
    """The damage the old rule allowed: var/secret_key, rotated logs and Redis' dump."""
    before = snapshot(var)
    with override_settings(MAINTENANCE=configure(var, TEMP_DIR=var)):
        try:
            cleanup_temp_files(max_age_hours=24)
        except TaskError as exc:
            code = exc.code
        else:
            code = None
    assert snapshot(var) == before, "the project's state was deleted"
    assert code == "root_holds_state"


def test_manage_py_check_fails_on_an_unsafe_root(var: Path) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with (
        override_settings(MAINTENANCE=configure(var, TEMP_DIR=var)),
        pytest.raises(SystemCheckError) as caught,
    ):
        call_command("check")
    assert "maintenance.E007" in str(caught.value)
    assert "VAR_DIR" in str(caught.value)
