"""Both cleanups SIGKILLed halfway, in a process of their own, then run again: the second
run finishes the job, and the end state is exactly what one uninterrupted run leaves.

Each kill happens at a chosen point of the work: the process kills itself (SIGKILL, no
cleanup of any kind) on the n-th call of a function, just before or just after it: after
a file or directory is removed but before anything notes it, inside a batch's transaction
before its commit, after the commit and before the batch's directories are removed, after
a directory is written down as unfinished and before the removal in it. Another test kills
the process from outside at random moments, again and again, until a run gets through.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils import timezone

from maintenance.models import PendingArtifactRemoval, Run
from maintenance.operations import cleanup_runs, cleanup_temp_files
from tests.helpers import ROOT, age, snapshot, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

# Runs an operation; with a hook, SIGKILLs itself on the n-th call of a function.
DRIVER = """
import os, signal, sys
import django
django.setup()
from django.db.models.query import QuerySet
from maintenance import operations, sweep

operation, hook = sys.argv[1], sys.argv[2:]
if hook:
    where, name, nth, when = hook[0], hook[1], int(hook[2]), hook[3]
    owner = {"os": os, "journal": operations._Journal, "queryset": QuerySet,
             "unfinished": sweep.Unfinished}[where]
    real, calls = getattr(owner, name), [0]

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, hooked)
print("started", flush=True)
getattr(operations, operation)(max_age_hours=24)
"""


def start(operation: str, roots: dict[str, Path], *hook: str) -> subprocess.Popen:
    env = subprocess_env(**{name: str(path) for name, path in roots.items()})
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, operation, *hook],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def killed(operation: str, roots: dict[str, Path], *hook: str) -> None:
    """Run the operation in a process of its own that is SIGKILLed at the hook."""
    process = start(operation, roots, *hook)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"not killed at {hook}: {err[-2000:]}"


def relative(tree: dict[str, str], root: Path) -> dict[str, str]:
    return {os.path.relpath(path, root): digest for path, digest in tree.items()}


# cleanup_runs ------------------------------------------------------------------------


def make_runs(artifacts: Path) -> None:
    """Old runs (most with a tree of artifacts), young and active ones; deterministic."""
    now = timezone.now()
    runs = []
    for n in range(1200):
        status = ("succeeded", "failed", "cancelled", "running", "pending")[n % 5]
        finished = now - timedelta(hours=48 if n % 7 else 2)
        path = f"runs/{n}" if n % 3 else ""
        finished_at = None if n % 11 == 0 else finished
        runs.append(Run(name=f"run-{n}", status=status, created_at=finished,
                        finished_at=finished_at, artifacts_dir=path))  # fmt: skip
        if path:
            (artifacts / path / "sub").mkdir(parents=True)
            (artifacts / path / "out.txt").write_text(f"output {n}")
            (artifacts / path / "sub" / "data.bin").write_bytes(bytes(n % 256) * 10)
    Run.objects.bulk_create(runs)


def runs_state(artifacts: Path) -> tuple:
    names = sorted(Run.objects.values_list("name", flat=True))
    return names, relative(snapshot(artifacts), artifacts), PendingArtifactRemoval.objects.count()


@pytest.fixture
def uninterrupted_runs(roots: dict[str, Path]) -> tuple:
    """The state one uninterrupted cleanup_runs leaves; the data made again for the test."""
    make_runs(roots["ARTIFACTS_DIR"])
    result = cleanup_runs(max_age_hours=24)
    expected = runs_state(roots["ARTIFACTS_DIR"])
    assert result["runs_deleted"] > 500 and expected[2] == 0
    Run.objects.all().delete()
    shutil.rmtree(roots["ARTIFACTS_DIR"] / "runs")
    make_runs(roots["ARTIFACTS_DIR"])
    return expected


@pytest.mark.parametrize(
    "hook",
    [
        ("os", "rmdir", "1", "after"),  # inside the first tree, its sub/ just removed
        ("os", "rmdir", "150", "after"),
        ("os", "unlink", "301", "after"),  # a tree half removed
        ("journal", "drain", "2", "before"),  # a batch committed, its trees not removed
        ("journal", "drain", "3", "before"),
        ("queryset", "delete", "3", "after"),  # inside the 2nd batch's transaction, uncommitted
    ],
)
def test_cleanup_runs_killed_halfway_is_finished_by_the_next_run(
    hook: tuple, roots: dict[str, Path], uninterrupted_runs: tuple, sentinel: Path
) -> None:
    killed("cleanup_runs", roots, *hook)
    left = Run.objects.count()
    assert 0 < left < 1200  # killed halfway: some runs deleted, not all
    cleanup_runs(max_age_hours=24)
    assert runs_state(roots["ARTIFACTS_DIR"]) == uninterrupted_runs
    again = cleanup_runs(max_age_hours=24)
    assert (again["runs_deleted"], again["artifact_dirs_removed"], again["removals_retried"]) == (
        0,
        0,
        0,
    )


# cleanup_temp_files ------------------------------------------------------------------


def make_tree(root: Path, files: int) -> None:
    """Old files, recent ones, old and recent empty directories, nested; deterministic."""
    rng = random.Random(5)
    for n in range(files):
        directory = root / f"d{n // 50}" / f"e{n % 5}"  # ten files a directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"f{n}"
        path.write_bytes(b"x" * (n % 50))
        age(path, 1 if rng.random() < 0.15 else 48)
    for name, hours in (("old-empty", 48), ("new-empty", 1), ("d3/old-empty", 48)):
        (root / name).mkdir(exist_ok=True)
        age(root / name, hours)
    for directory in sorted(root.rglob("*"), reverse=True):
        if directory.is_dir() and "empty" not in directory.name:
            age(directory, 1)  # recent directories: only emptying them removes them


def two_trees(roots: dict[str, Path], twin: Path, files: int) -> tuple[Path, dict[str, str]]:
    """The tree to clean, and what one uninterrupted run leaves of an identical one."""
    twin.mkdir()
    make_tree(twin, files)
    make_tree(roots["TEMP_DIR"], files)
    with override_settings(MAINTENANCE={**roots, "TEMP_DIR": twin}):
        result = cleanup_temp_files(max_age_hours=24)
    assert result["files_removed"] > files * 0.7 and result["dirs_removed"] > 10
    return roots["TEMP_DIR"], relative(snapshot(twin), twin)


@pytest.mark.parametrize(
    "hook",
    [
        ("os", "unlink", "1", "after"),
        ("os", "unlink", "250", "after"),
        ("os", "rmdir", "1", "before"),  # a directory emptied, not yet removed
        ("os", "rmdir", "7", "after"),
        ("unfinished", "opened", "4", "after"),  # written down, nothing removed in it yet
    ],
)
def test_cleanup_temp_files_killed_halfway_is_finished_by_the_next_run(
    hook: tuple, roots: dict[str, Path], tmp_path: Path, sentinel: Path
) -> None:
    temp, expected = two_trees(roots, tmp_path / "twin", 600)
    killed("cleanup_temp_files", roots, *hook)
    assert relative(snapshot(temp), temp) != expected  # killed halfway
    cleanup_temp_files(max_age_hours=24)
    assert relative(snapshot(temp), temp) == expected


def test_cleanup_temp_files_killed_again_and_again_gets_there(
    roots: dict[str, Path], tmp_path: Path, sentinel: Path
) -> None:
    """SIGKILLed from outside at random moments until one run completes."""
    temp, expected = two_trees(roots, tmp_path / "twin", 6000)
    rng, kills = random.Random(11), 0
    for _ in range(40):
        process = start("cleanup_temp_files", roots)
        assert process.stdout.readline() == "started\n"
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        kills += process.wait(30) == -signal.SIGKILL
        if relative(snapshot(temp), temp) == expected:
            break
    cleanup_temp_files(max_age_hours=24)  # whatever the last kill left
    assert relative(snapshot(temp), temp) == expected
    assert kills >= 3
