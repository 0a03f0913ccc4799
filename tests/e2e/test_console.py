"""The console's rough edges, in a real Chromium: links, layout, flags, words and clocks."""

import json
import os
import re
import signal
from datetime import UTC, datetime
from urllib.parse import urlparse

import pytest

from taskqueue.models import Schedule, Task
from taskqueue.services import enqueue_task, monitoring
from tests.e2e.browser import BROWSER_TEST, LAYOUT_PROBLEMS, SHOTS, log_in, run_operation, shot
from tests.helpers import ROOT, wait_for

pytestmark = BROWSER_TEST


@pytest.fixture(autouse=True)
def fast_password_hashing() -> None:
    """Passwords here are checked by the live server, which hashes as production does."""


@pytest.fixture
def operator(page, django_user_model):
    django_user_model.objects.create_superuser("operator", password="operator-pw")
    log_in(page, "operator", "operator-pw")
    return page


def failed_task(task_type: str, **fields) -> Task:
    """A task that failed on its only attempt, a moment ago."""
    task = Task.objects.create(task_type=task_type, status="queued", **fields)
    task.lease(dispatch=0, worker_name="w1")
    task.fail(attempt=1, error_code="exception", error_message="boom")
    return task


def test_the_index_and_the_sidebar_link_to_the_dashboard_and_run_maintenance(operator):
    page = operator
    page.goto("/admin/")
    assert page.locator("#site-name").inner_text() == "taskqueue-ops console"
    assert "taskqueue-ops" in page.title()
    page.locator("#content-main").get_by_role("link", name="Dashboard", exact=True).click()
    page.wait_for_url("**/admin/taskqueue/task/dashboard/")
    page.locator("#nav-sidebar").get_by_role("link", name="Run maintenance", exact=True).click()
    page.wait_for_url("**/admin/maintenance/run/operations/")
    page.locator("#nav-sidebar").get_by_role("link", name="Dashboard", exact=True).click()
    page.wait_for_url("**/admin/taskqueue/task/dashboard/")
    page.goto("/admin/")
    page.locator("#content-main").get_by_role("link", name="Run maintenance", exact=True).click()
    page.wait_for_url("**/admin/maintenance/run/operations/")


def test_every_admin_page_has_an_icon_and_favicon_ico_answers(operator):
    page = operator
    for path in ("/admin/", "/admin/taskqueue/task/dashboard/", "/admin/taskqueue/task/"):
        page.goto(path)
        href = page.locator("link[rel=icon]").get_attribute("href")
        icon = page.request.get(href)
        assert (icon.status, icon.headers["content-type"]) == (200, "image/svg+xml"), path
    response = page.request.get("/favicon.ico", max_redirects=0)
    assert response.status == 301 and response.headers["location"] == href
    followed = page.request.get("/favicon.ico")
    assert followed.status == 200 and followed.body().startswith(b"<svg")


TITLES = {
    "cleanup_runs": "Clean up old runs",
    "health_check": "Health check",
    "cleanup_temp_files": "Clean up old temp files",
    "log_statistics": "Log statistics",
}


def test_operations_are_called_by_their_titles_wherever_the_console_lists_them(operator):
    page = operator
    page.goto("/admin/maintenance/run/operations/")
    assert page.locator("#content .tq-card h2").all_inner_texts() == list(TITLES.values())
    for name, title in TITLES.items():
        waiting = run_operation(page, name)  # no worker: each waits, queued
        assert page.locator("#content h2").first.inner_text().startswith(title)
        assert page.locator(".breadcrumbs").inner_text().endswith(f"{title} #{waiting}")
    failed_task("cleanup_runs")  # on the dashboard: wait times and the last failures
    Schedule.objects.create(name="nightly", task_type="log_statistics", interval_seconds=3600)
    pages = {
        "/admin/maintenance/run/operations/": "Clean up old temp files",
        "/admin/taskqueue/task/": "Clean up old temp files",
        "/admin/taskqueue/task/dashboard/": "Clean up old runs",
        f"/admin/taskqueue/task/{waiting}/cancel/": "Log statistics",
        "/admin/taskqueue/schedule/": "Log statistics",
    }
    for path, title in pages.items():
        page.goto(path)
        text = page.locator("#content").inner_text()
        assert title in text, path
        assert not [name for name in TITLES if name in text], path
    page.goto("/admin/taskqueue/task/")
    filters = page.locator("#changelist-filter").inner_text()
    assert all(title in filters for title in TITLES.values())


def test_results_and_payloads_render_as_formatted_json_never_a_python_repr(
    operator, worker_process
):
    page = operator
    task, _ = enqueue_task("ping")
    page.goto(f"/admin/taskqueue/task/{task.pk}/change/")
    page.wait_for_selector(".tq-status-queued")
    worker_process()
    page.wait_for_selector("#tq-result pre.tq-json", timeout=60_000)  # the live block, swapped in
    task.refresh_from_db()
    shown = page.locator("#tq-result pre.tq-json").inner_text()
    assert json.loads(shown) == task.result and '\n  "pong": true' in shown
    assert "'pong'" not in page.locator("#content").inner_text()

    # A result and a payload with text beyond ASCII, nested: indented JSON, characters as is.
    other = Task.objects.create(task_type="ping", status="completed", payload={"note": "naïve"},
                                result={"pong": True, "nested": {"café": ["ü", None]}})  # fmt: skip
    page.goto(f"/admin/taskqueue/task/{other.pk}/change/")
    blocks = page.locator("pre.tq-json").all_inner_texts()
    assert [json.loads(text) for text in blocks] == [other.result, other.payload]
    assert '"café": [\n      "ü",\n      null\n    ]' in blocks[0]
    assert "True" not in page.locator("#content").inner_text()


def test_one_vocabulary_and_one_clock(operator):
    page = operator
    running = Task.objects.create(task_type="health_check", status="queued")
    running.lease(dispatch=0, worker_name="w1")
    failed_task("log_statistics")
    waiting = Task.objects.create(task_type="ping")
    Schedule.objects.create(name="hourly", task_type="health_check", interval_seconds=3600,
                            next_run_at=datetime(2026, 11, 28, 22, 44, 17, tzinfo=UTC))  # fmt: skip

    page.goto("/admin/taskqueue/task/dashboard/")
    counts = page.locator("#tq-counts").inner_text()
    assert "Running\t1" in counts and "leased" not in counts
    failures = page.locator("#tq-failures").inner_text()
    assert "just now" in failures and "minutes" not in failures
    waiting.cancel()  # an event: the dashboard refreshes itself and stamps the time
    page.wait_for_function("document.getElementById('tq-refreshed').textContent !== ''")
    text = page.locator("#tq-refreshed").inner_text()
    assert re.fullmatch(r"Last: \d\d:\d\d:\d\d UTC", text), text
    hours, minutes, seconds = map(int, text[6:14].split(":"))
    now = datetime.now(UTC)
    off = (hours - now.hour) * 3600 + (minutes - now.minute) * 60 + seconds - now.second
    assert abs((off + 43200) % 86400 - 43200) < 30  # UTC, give or take the refresh

    for path in ("/admin/taskqueue/task/", f"/admin/taskqueue/task/{running.pk}/change/"):
        page.goto(path)
        assert "Running" in page.locator(".tq-badge").all_inner_texts()
        assert "leased" not in page.locator("#content").inner_text().lower()
    page.goto("/admin/taskqueue/task/")
    assert "Running" in page.locator("#changelist-filter").inner_text()

    page.goto("/admin/taskqueue/schedule/")
    assert "2026-11-28 22:44:17 UTC" in page.locator("#result_list").inner_text()
    assert not re.search(r"[ap]\.m\.", page.locator("#content").inner_text())

    page.goto("/admin/taskqueue/task/")
    page.locator(f"input[name=_selected_action][value='{running.pk}']").check()
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")
    text = page.locator("#content").inner_text()
    assert "Tasks that cannot be cancelled or stopped are left alone" in text
    assert "stoped" not in text and "cancel or stop" not in text.replace("Cancel or stop", "")


@pytest.mark.parametrize("width", [1024, 1400, 1920])
def test_the_dashboard_holds_its_tables_from_1024_to_1920_px(operator, worker_process, width):
    page = operator
    worker_process()
    done = [enqueue_task("ping")[0] for _ in range(3)]
    done.append(enqueue_task("diagnostic", {"action": "fail"}, max_attempts=1)[0])
    wait_for(lambda: Task.objects.filter(pk__in=[t.pk for t in done]).terminal().count() == 4)
    busy, _ = enqueue_task("diagnostic", {"action": "sleep", "seconds": 8})
    wait_for(lambda: Task.objects.get(pk=busy.pk).status == "leased")
    for _ in range(3):  # waiting behind the busy worker
        enqueue_task("health_check")
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/admin/taskqueue/task/dashboard/")
    page.wait_for_selector("#tq-workers [data-worker]")
    page.wait_for_selector("#tq-queues [data-queue=default]")
    assert page.locator("#tq-queues [data-queue=default] td").nth(1).inner_text() == "3"
    problems = page.evaluate(LAYOUT_PROBLEMS, ["#tq-queues", "#tq-queues th, #tq-queues td"])
    problems += page.evaluate(LAYOUT_PROBLEMS, [".tq-card", ".tq-card th"])
    assert problems == [], problems
    # The committed screenshots: refreshed with UPDATE_DOCS_IMG=1 (else into artifacts/).
    shot(
        page,
        f"dashboard-{width}",
        ROOT / "docs" / "img" if os.environ.get("UPDATE_DOCS_IMG") else SHOTS,
    )


def test_a_frozen_worker_shows_stale_and_its_waiting_queue_is_flagged(operator, worker_process):
    page = operator
    worker = worker_process()
    wait_for(lambda: [w["state"] for w in monitoring.worker_stats()] == ["idle"])
    page.goto("/admin/taskqueue/task/dashboard/")
    heartbeat = page.locator("#tq-workers .tq-heartbeat")
    assert "tq-ok" in heartbeat.get_attribute("class")
    assert page.locator(".tq-idle-wait").count() == 0

    os.kill(worker.pid, signal.SIGSTOP)  # frozen, idle, its heartbeat no longer moves
    try:
        # The first job may go to the frozen worker's pending BLPOP (Redis pops it for the
        # worker); the second waits in the queue.
        tasks = [enqueue_task("ping")[0] for _ in range(2)]

        def flagged() -> bool:
            page.reload()
            return page.locator(".tq-idle-wait[data-queue=default]").count() == 1 and (
                "stale" in heartbeat.inner_text()
            )

        wait_for(flagged, timeout=60, interval=2)
        assert re.fullmatch(r"stale — no heartbeat for \d+ s", heartbeat.inner_text())
        assert "tq-firing" in heartbeat.get_attribute("class")
        assert page.locator("#tq-workers td").nth(1).inner_text() == "idle"  # what RQ says
        assert "jobs waiting while workers idle" in page.locator(".tq-idle-wait").inner_text()
        shot(page, "dashboard-frozen-worker")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    done = Task.objects.filter(pk__in=[t.pk for t in tasks], status="completed")
    wait_for(lambda: done.count() == 2, timeout=30)
    page.reload()
    assert "tq-ok" in heartbeat.get_attribute("class")
    assert page.locator(".tq-idle-wait").count() == 0


@pytest.mark.parametrize("path", ["/api/redoc/", "/api/docs/"])
def test_the_api_docs_load_nothing_from_outside(operator, path):
    page = operator
    outside = []

    def record(request) -> None:
        url = urlparse(request.url)
        if url.scheme not in ("data", "blob") and url.hostname != "127.0.0.1":
            outside.append(request.url)

    page.on("request", record)
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(path)
    page.wait_for_selector("text=Task queue for operations")
    page.wait_for_load_state("networkidle")
    assert outside == []
    assert errors == []  # nothing refused by the page's policy either
    shot(page, "api-docs" + path.replace("/", "-").rstrip("-"), full_page=False)
