"""cleanup_temp_files: only old regular files under TEMP_DIR, never through a symlink."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from maintenance.operations import cleanup_temp_files
from taskqueue.exceptions import TaskError
from tests.helpers import age, bind_mount, snapshot


@pytest.fixture
def temp(roots: dict[str, Path]) -> Path:
    return roots["TEMP_DIR"]


def make(path: Path, hours: float, data: bytes = b"x" * 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    age(path, hours)
    return path


def test_files_just_older_than_the_cutoff_go_and_just_newer_stay(temp: Path) -> None:
    old = make(temp / "old.tmp", 24.01, b"a" * 100)
    young = make(temp / "young.tmp", 23.99)
    result = cleanup_temp_files(max_age_hours=24)
    assert not old.exists()
    assert young.exists()
    assert (result["files_removed"], result["bytes_freed"], result["kept_recent"]) == (1, 100, 1)


def test_dry_run_reports_and_removes_nothing(temp: Path) -> None:
    old = make(temp / "a" / "old.tmp", 48)
    result = cleanup_temp_files(max_age_hours=24, dry_run=True)
    assert old.exists()
    assert (result["files_removed"], result["dirs_removed"], result["dry_run"]) == (1, 1, True)


def test_directories_left_empty_and_old_empty_ones_go_never_the_root(temp: Path) -> None:
    make(temp / "emptied" / "deep" / "old.tmp", 48)
    (temp / "old-empty").mkdir()
    age(temp / "old-empty", 48)
    (temp / "new-empty").mkdir()
    make(temp / "mixed" / "old.tmp", 48)
    make(temp / "mixed" / "new.tmp", 1)
    age(temp, 100)
    result = cleanup_temp_files(max_age_hours=24)
    assert sorted(p.name for p in temp.iterdir()) == ["mixed", "new-empty"]
    assert [p.name for p in (temp / "mixed").iterdir()] == ["new.tmp"]
    assert result["dirs_removed"] == 3  # emptied, emptied/deep, old-empty
    assert temp.is_dir()


def test_running_twice_removes_nothing_the_second_time(temp: Path) -> None:
    make(temp / "d" / "old.tmp", 48)
    cleanup_temp_files(max_age_hours=24)
    again = cleanup_temp_files(max_age_hours=24)
    assert (again["files_removed"], again["dirs_removed"]) == (0, 0)


def test_symlinks_are_removed_as_links_and_never_followed(temp: Path, sentinel: Path) -> None:
    (temp / "to-dir").symlink_to(sentinel / "dir")
    (temp / "to-file").symlink_to(sentinel / "file.txt")
    (temp / "sub").mkdir()
    (temp / "sub" / "linked-subdir").symlink_to(sentinel)
    for link in ("to-dir", "to-file", "sub/linked-subdir"):
        age(temp / link, 48)
    result = cleanup_temp_files(max_age_hours=24)
    assert result["links_removed"] == 3
    assert result["files_removed"] == 0
    assert list(temp.iterdir()) == []  # sub was emptied and removed


def test_a_recent_symlink_to_an_old_target_is_kept_and_the_target_untouched(
    temp: Path, sentinel: Path
) -> None:
    (temp / "fresh-link").symlink_to(sentinel / "dir")
    cleanup_temp_files(max_age_hours=24)
    assert (temp / "fresh-link").is_symlink()


def test_a_hard_link_is_unlinked_leaving_the_other_name(temp: Path, sentinel: Path) -> None:
    os.link(sentinel / "file.txt", temp / "hard")
    age(temp / "hard", 48)
    result = cleanup_temp_files(max_age_hours=24)
    assert not (temp / "hard").exists()
    assert (sentinel / "file.txt").read_text() == "keep me"
    assert result["bytes_freed"] == 0  # the data is still referenced by the other name


def test_fifos_sockets_and_devices_are_skipped_without_being_opened(temp: Path) -> None:
    os.mkfifo(temp / "pipe")
    age(temp / "pipe", 48)
    result = cleanup_temp_files(max_age_hours=24)  # opening the FIFO would block forever
    assert (temp / "pipe").exists()
    assert result["skipped"] == {"special_file": 1}


def test_odd_names_are_removed_and_reported_json_safely(temp: Path) -> None:
    raw_root = os.fsencode(temp)
    names = [b"new\nline", b"latin1-\xe9", b"\xff\xfe-not-utf8", "caf\u00e9".encode()]
    for name in names:
        path = raw_root + b"/" + name
        Path(os.fsdecode(path)).write_bytes(b"data")
        os.utime(path, (1, 1))
    result = cleanup_temp_files(max_age_hours=24)
    assert result["files_removed"] == 4
    assert os.listdir(raw_root) == []
    json.dumps(result)


def test_permission_errors_are_counted_and_reported_not_fatal(temp: Path) -> None:
    locked = temp / "locked"
    make(locked / "old.tmp", 48)
    make(temp / "other.tmp", 48)
    chattr = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, check=False)
    if chattr.returncode != 0:
        pytest.skip(f"cannot make a directory immutable here: {chattr.stderr.decode().strip()}")
    try:
        result = cleanup_temp_files(max_age_hours=24)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert (locked / "old.tmp").exists()
    assert not (temp / "other.tmp").exists()
    assert result["skipped"]["permission_denied"] == 1
    assert "locked/old.tmp" in result["errors"][0]


def test_a_directory_swapped_for_a_symlink_mid_walk_never_redirects_a_deletion(
    temp: Path, sentinel: Path
) -> None:
    """A thread keeps swapping temp/sub between a real directory and a link to outside."""
    stop = threading.Event()
    sub, parked = temp / "sub", temp / "parked"

    def swap() -> None:
        while not stop.is_set():
            try:
                make(sub / "old.tmp", 48)
                sub.rename(parked)
                sub.symlink_to(sentinel / "dir")
                sub.unlink()
                parked.rename(sub)
            except OSError:
                pass

    thread = threading.Thread(target=swap)
    thread.start()
    try:
        for _ in range(200):
            cleanup_temp_files(max_age_hours=24)
    finally:
        stop.set()
        thread.join()
    # the sentinel fixture asserts nothing outside changed


@pytest.mark.parametrize(
    ("configured", "code"),
    [
        ("relative/tmp", "root_relative"),
        ("/", "root_is_slash"),
        ("{missing}", "root_missing"),
        ("{link}", "root_symlink"),
        ("{project}", "root_in_project"),
        ("{project_sub}", "root_in_project"),
    ],
)
def test_a_misconfigured_root_fails_clearly_and_deletes_nothing(
    tmp_path: Path, sentinel: Path, configured: str, code: str
) -> None:
    (tmp_path / "link").symlink_to(sentinel)
    value = configured.format(
        missing=tmp_path / "missing",
        link=tmp_path / "link",
        project=settings.BASE_DIR,
        project_sub=Path(settings.BASE_DIR) / "taskqueue",
    )
    with override_settings(MAINTENANCE={"TEMP_DIR": value}), pytest.raises(TaskError) as caught:
        cleanup_temp_files(max_age_hours=1)
    assert caught.value.code == code
    assert caught.value.retryable is False


def test_another_file_system_below_the_root_is_not_entered(temp: Path) -> None:
    mount_point = temp / "mounted"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        make(mount_point / "old.tmp", 48)
        age(mount_point, 48)
        result = cleanup_temp_files(max_age_hours=24)
        assert (mount_point / "old.tmp").exists()
        assert result["skipped"] == {"mount_point": 1}
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_bind_mount_of_the_same_file_system_is_not_entered(temp: Path, sentinel: Path) -> None:
    """Same st_dev as the root: only the mount id tells it apart."""
    before = snapshot(sentinel)
    with bind_mount(sentinel, temp / "mounted") as mounted:
        age(mounted, 48)
        result = cleanup_temp_files(max_age_hours=24)
        assert snapshot(sentinel) == before, "files were deleted through the mount"
    assert result["skipped"] == {"mount_point": 1}
    assert (result["files_removed"], result["dirs_removed"]) == (0, 0)
