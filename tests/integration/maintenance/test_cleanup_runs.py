"""cleanup_runs: finished runs past the cutoff go with their artifacts; nothing else."""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils import timezone

from maintenance.models import PendingArtifactRemoval, Run
from maintenance.operations import cleanup_runs
from tests.helpers import bind_mount, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def artifacts(roots: dict[str, Path]) -> Path:
    return roots["ARTIFACTS_DIR"]


def run(artifacts: Path, status: str, hours_ago: float, *, files: int = 1) -> Run:
    finished = timezone.now() - timedelta(hours=hours_ago)
    item = Run.objects.create(name="job", status=status, created_at=finished, finished_at=finished)
    if files:
        relative = f"runs/{item.pk}"
        (artifacts / relative).mkdir(parents=True)
        for n in range(files):
            (artifacts / relative / f"out-{n}").write_bytes(b"z" * 1000)
        item.artifacts_dir = relative
        item.save(update_fields=["artifacts_dir"])
    return item


def test_finished_runs_just_past_the_cutoff_go_with_their_artifacts(artifacts: Path) -> None:
    old = run(artifacts, "succeeded", 24.01, files=2)
    young = run(artifacts, "failed", 23.99)
    result = cleanup_runs(max_age_hours=24)
    assert list(Run.objects.values_list("pk", flat=True)) == [young.pk]
    assert not (artifacts / old.artifacts_dir).exists()
    assert (artifacts / young.artifacts_dir).exists()
    assert result["runs_deleted"] == 1
    assert result["artifact_dirs_removed"] == 1
    assert result["bytes_removed"] == 2000
    assert result["dry_run"] is False
    assert result["cutoff"]


@pytest.mark.parametrize("status", ["pending", "running"])
def test_active_runs_are_never_deleted_however_old(artifacts: Path, status: str) -> None:
    active = run(artifacts, status, 24 * 365)
    assert cleanup_runs(max_age_hours=1)["runs_deleted"] == 0
    assert Run.objects.filter(pk=active.pk).exists()
    assert (artifacts / active.artifacts_dir).exists()


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_every_finished_status_is_cleaned(artifacts: Path, status: str) -> None:
    run(artifacts, status, 48)
    assert cleanup_runs(max_age_hours=24)["runs_deleted"] == 1


def test_dry_run_counts_without_deleting(artifacts: Path) -> None:
    old = run(artifacts, "succeeded", 48)
    result = cleanup_runs(max_age_hours=24, dry_run=True)
    assert (result["runs_deleted"], result["artifact_dirs_removed"], result["bytes_removed"]) == (
        1,
        1,
        1000,
    )
    assert Run.objects.filter(pk=old.pk).exists()
    assert (artifacts / old.artifacts_dir).exists()


def test_running_twice_deletes_nothing_the_second_time(artifacts: Path) -> None:
    for hours in (30, 40, 50):
        run(artifacts, "succeeded", hours)
    assert cleanup_runs(max_age_hours=24)["runs_deleted"] == 3
    second = cleanup_runs(max_age_hours=24)
    assert (second["runs_deleted"], second["artifact_dirs_removed"]) == (0, 0)


def test_works_in_batches(artifacts: Path) -> None:
    for _ in range(7):
        run(artifacts, "succeeded", 48)
    with override_settings(MAINTENANCE={"ARTIFACTS_DIR": artifacts, "CLEANUP_BATCH_SIZE": 2}):
        assert cleanup_runs(max_age_hours=24)["runs_deleted"] == 7
    assert Run.objects.count() == 0
    assert list((artifacts / "runs").iterdir()) == []


def test_artifact_paths_outside_the_root_are_never_touched(artifacts: Path, sentinel: Path) -> None:
    for path in (str(sentinel / "dir"), "../outside/dir", "runs/../../outside"):
        Run.objects.create(
            name="evil",
            status="succeeded",
            finished_at=timezone.now() - timedelta(days=3),
            artifacts_dir=path,
        )
    result = cleanup_runs(max_age_hours=24)
    assert result["runs_deleted"] == 3
    assert result["skipped"] == {"outside_root": 3}


def test_symlinks_in_artifact_paths_are_not_followed(artifacts: Path, sentinel: Path) -> None:
    (artifacts / "via-link").symlink_to(sentinel)  # a component that is a symlink
    (artifacts / "final-link").symlink_to(sentinel / "dir")  # the directory itself
    for path in ("via-link/dir", "final-link"):
        Run.objects.create(
            name="sneaky",
            status="failed",
            finished_at=timezone.now() - timedelta(days=3),
            artifacts_dir=path,
        )
    result = cleanup_runs(max_age_hours=24)
    assert result["runs_deleted"] == 2
    assert result["skipped"] == {"symlink_or_changed": 1}
    assert not (artifacts / "final-link").exists()  # the link itself is gone, not its target
    assert (artifacts / "via-link").is_symlink()


def test_directories_left_by_an_interrupted_run_are_removed_next_time(artifacts: Path) -> None:
    """A crash between the committed delete and the removal leaves the journal behind."""
    (artifacts / "runs" / "orphan").mkdir(parents=True)
    (artifacts / "runs" / "orphan" / "data").write_bytes(b"1234")
    PendingArtifactRemoval.objects.create(path="runs/orphan")
    result = cleanup_runs(max_age_hours=24)
    assert not (artifacts / "runs" / "orphan").exists()
    assert result["artifact_dirs_removed"] == 1
    assert result["bytes_removed"] == 4
    assert PendingArtifactRemoval.objects.count() == 0


def test_a_run_without_artifacts_or_with_missing_ones_is_deleted(artifacts: Path) -> None:
    run(artifacts, "succeeded", 48, files=0)
    gone = run(artifacts, "succeeded", 48)
    os.rename(artifacts / gone.artifacts_dir, artifacts / "elsewhere")
    result = cleanup_runs(max_age_hours=24)
    assert (result["runs_deleted"], result["artifact_dirs_removed"]) == (2, 0)


def test_a_dry_run_changes_nothing_and_reports_the_journal_too(artifacts: Path) -> None:
    """Directories left in the journal by an earlier run are counted, not removed."""
    (artifacts / "runs" / "orphan").mkdir(parents=True)
    (artifacts / "runs" / "orphan" / "data").write_bytes(b"1234")
    PendingArtifactRemoval.objects.create(path="runs/orphan")
    old = run(artifacts, "succeeded", 48)
    before = snapshot(artifacts)
    result = cleanup_runs(max_age_hours=24, dry_run=True)
    assert snapshot(artifacts) == before, "a dry run removed files"
    assert list(PendingArtifactRemoval.objects.values_list("path", flat=True)) == ["runs/orphan"]
    assert Run.objects.filter(pk=old.pk).exists()
    assert result["dry_run"] is True
    assert (result["runs_deleted"], result["artifact_dirs_removed"], result["bytes_removed"]) == (
        1,
        2,
        1004,
    )
    assert result["removals_retried"] == 1


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """A directory nobody, root included, can remove entries from (chattr +i)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory immutable here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_failed_removal_stays_in_the_journal_counted_and_is_retried(artifacts: Path) -> None:
    stuck = run(artifacts, "succeeded", 48)
    locked = artifacts / stuck.artifacts_dir / "locked"
    locked.mkdir()
    (locked / "data").write_bytes(b"y" * 10)
    with immutable(locked):
        first = cleanup_runs(max_age_hours=24)
        second = cleanup_runs(max_age_hours=24)
        kept = list(PendingArtifactRemoval.objects.all())
    assert [item.path for item in kept] == [stuck.artifacts_dir], "the failed removal was dropped"
    assert kept[0].attempts == 2
    assert "Operation not permitted" in kept[0].last_error
    assert kept[0].last_attempt_at is not None
    assert (first["runs_deleted"], first["removals_failed"], first["removals_retried"]) == (1, 1, 0)
    assert first["skipped"] == {"permission_denied": 1}
    assert "Operation not permitted" in first["errors"][0]
    assert (second["runs_deleted"], second["removals_failed"], second["removals_retried"]) == (
        0,
        1,
        1,
    )
    third = cleanup_runs(max_age_hours=24)  # the directory is removable again
    assert not (artifacts / stuck.artifacts_dir).exists()
    assert (third["removals_retried"], third["removals_failed"]) == (1, 0)
    assert third["artifact_dirs_removed"] == 1
    assert PendingArtifactRemoval.objects.count() == 0


def test_a_mount_inside_old_artifacts_is_never_entered(artifacts: Path, sentinel: Path) -> None:
    """A bind mount of the same file system (same st_dev) inside a run's artifacts."""
    old = run(artifacts, "succeeded", 48, files=2)
    before = snapshot(sentinel)
    with bind_mount(sentinel, artifacts / old.artifacts_dir / "mounted") as mounted:
        result = cleanup_runs(max_age_hours=24)
        assert snapshot(sentinel) == before, "files were deleted through the mount"
        assert mounted.is_dir()
        kept = PendingArtifactRemoval.objects.get()
    assert sorted(p.name for p in (artifacts / old.artifacts_dir).iterdir()) == ["mounted"]
    assert (result["runs_deleted"], result["removals_failed"]) == (1, 1)
    assert result["skipped"] == {"mount_point": 1}
    assert (kept.path, kept.attempts) == (old.artifacts_dir, 1)
    assert "mount point" in kept.last_error
    cleanup_runs(max_age_hours=24)  # unmounted: the rest goes
    assert not (artifacts / old.artifacts_dir).exists()
    assert PendingArtifactRemoval.objects.count() == 0


def test_a_mount_on_the_way_to_old_artifacts_is_not_crossed(
    artifacts: Path, sentinel: Path
) -> None:
    old = run(artifacts, "succeeded", 48, files=0)
    old.artifacts_dir = "mounted/dir"
    old.save(update_fields=["artifacts_dir"])
    before = snapshot(sentinel)
    with bind_mount(sentinel, artifacts / "mounted"):
        result = cleanup_runs(max_age_hours=24)
        assert snapshot(sentinel) == before, "files were deleted through the mount"
    assert result["skipped"] == {"mount_point": 1}
    assert result["removals_failed"] == 1


def test_runs_far_apart_in_the_key_space_are_all_found(artifacts: Path) -> None:
    """The table is walked by ranges of keys that widen where keys are sparse."""
    finished = timezone.now() - timedelta(days=3)
    keys = [1, 2, 3, 50, 51, 5_000, 5_001, 123_456, 123_457, 2_000_000, 9_000_000]
    for pk in keys:
        young = pk % 2 == 0
        Run.objects.create(pk=pk, name=f"r{pk}", status="succeeded",
                           finished_at=timezone.now() if young else finished)  # fmt: skip
    with override_settings(MAINTENANCE={"ARTIFACTS_DIR": artifacts, "CLEANUP_BATCH_SIZE": 2}):
        result = cleanup_runs(max_age_hours=24)
    assert sorted(Run.objects.values_list("pk", flat=True)) == [k for k in keys if k % 2 == 0]
    assert result["runs_deleted"] == len([k for k in keys if k % 2])
