"""What the browser tests share: Debian's Chromium, logging in, screenshots."""

import os
import shutil

import pytest

from tests.helpers import ROOT

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
SHOTS = ROOT / "artifacts" / "screenshots"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# The marks of every browser test module.
BROWSER_TEST = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium here: install Debian's `chromium` (.ci/run does) to run browser tests",
    ),
]


def log_in(page, username: str, password: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_load_state()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def run_operation(page, name: str, fields: dict[str, str] | None = None) -> int:
    """Submit an operation's form on the Run maintenance page; return the new task's id."""
    page.goto("/admin/maintenance/run/operations/")
    for field, value in (fields or {}).items():
        page.fill(f"#id_{name}-{field}", value)
    page.click(f"#op-{name} input[type=submit]")
    page.wait_for_url("**/admin/taskqueue/task/*/change/")
    return int(page.url.rstrip("/").split("/")[-2])
