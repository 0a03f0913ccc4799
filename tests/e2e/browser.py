"""What the browser tests share: Debian's Chromium, logging in, screenshots."""

import os
import shutil
from pathlib import Path

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


def shot(page, name: str, directory: Path = SHOTS, *, full_page: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=full_page)


def run_operation(page, name: str, fields: dict[str, str] | None = None) -> int:
    """Submit an operation's form on the Run maintenance page; return the new task's id."""
    page.goto("/admin/maintenance/run/operations/")
    for field, value in (fields or {}).items():
        page.fill(f"#id_{name}-{field}", value)
    page.click(f"#op-{name} input[type=submit]")
    page.wait_for_url("**/admin/taskqueue/task/*/change/")
    return int(page.url.rstrip("/").split("/")[-2])


# Problems of the tables under `root`: a cell whose content overflows it (clipped or
# scrolled), a card scrolled sideways, a word broken across two lines, and (for the cells
# matching `oneLine`) a text on more than one line.
LAYOUT_PROBLEMS = """([root, oneLine]) => {
  const problems = [];
  const where = (el) => `${el.closest("[id]").id} ${el.tagName} "${el.textContent.trim()}"`;
  const lines = (range) => new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
  for (const card of document.querySelectorAll(root)) {
    if (card.scrollWidth > card.clientWidth) problems.push(`${card.id} scrolls sideways`);
    for (const cell of card.querySelectorAll("th, td")) {
      if (cell.scrollWidth > cell.clientWidth) problems.push(`${where(cell)} overflows`);
      const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (const match of node.data.matchAll(/\\S+/g)) {
          const range = document.createRange();
          range.setStart(node, match.index);
          range.setEnd(node, match.index + match[0].length);
          if (lines(range) > 1) problems.push(`${where(cell)}: "${match[0]}" broken`);
        }
      }
      if (cell.matches(oneLine)) {
        const range = document.createRange();
        range.selectNodeContents(cell);
        if (lines(range) > 1) problems.push(`${where(cell)} on ${lines(range)} lines`);
      }
    }
  }
  return problems;
}"""
