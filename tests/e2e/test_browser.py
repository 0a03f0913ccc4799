"""The admin in a real Chromium (Debian's, driven by Playwright; no browser download)."""

import pytest

from taskqueue.models import Task
from taskqueue.services import enqueue_task
from tests.conftest import user_with
from tests.e2e.browser import BROWSER_TEST, log_in, run_operation, shot
from tests.helpers import wait_for

pytestmark = BROWSER_TEST


@pytest.fixture(autouse=True)
def fast_password_hashing() -> None:
    """Passwords here are checked by the live server, which hashes as production does."""


def test_an_operator_runs_cancels_retries_and_watches(page, django_user_model, worker_process):
    django_user_model.objects.create_superuser("operator", password="operator-pw")
    log_in(page, "operator", "operator-pw")

    # No worker yet: an operation waits queued, and can be cancelled from its page.
    waiting = run_operation(page, "log_statistics", {"hours": "24"})
    page.wait_for_selector(".tq-status-queued")
    page.click("#tq-cancel")
    page.click("#tq-confirm")
    page.wait_for_selector(".tq-status-cancelled")
    assert Task.objects.get(pk=waiting).status == "cancelled"

    # With a worker, every operation reaches completed on its page without a reload.
    worker_process()
    for name in ("health_check", "cleanup_runs", "cleanup_temp_files", "log_statistics"):
        run_operation(page, name)
        page.evaluate("window.__loadedOnce = true")
        page.wait_for_selector(".tq-status-completed", timeout=60_000)
        assert page.evaluate("window.__loadedOnce") is True  # the page updated by itself
        if name == "health_check":
            page.wait_for_selector("text=Overall")
            shot(page, "task-page-health-check")

    # A failed task is retried from its page; the new task links back to it.
    failed, _ = enqueue_task("diagnostic", {"action": "fail"}, max_attempts=1)
    wait_for(lambda: Task.objects.get(pk=failed.pk).status == "failed", timeout=60)
    page.goto(f"/admin/taskqueue/task/{failed.pk}/change/")
    page.click("#tq-retry")
    page.wait_for_selector(f"text=task {failed.pk}")
    page.wait_for_selector(".tq-status-failed", timeout=60_000)
    assert Task.objects.filter(retry_of=failed).count() == 1

    page.goto("/admin/taskqueue/task/dashboard/")
    page.wait_for_selector("svg.tq-chart")
    page.wait_for_selector("text=Workers")
    shot(page, "dashboard")
    page.goto("/admin/taskqueue/task/")
    page.wait_for_selector(".tq-badge")
    shot(page, "task-list")


def test_users_without_permissions_see_no_buttons_and_forged_posts_fail(page, django_user_model):
    task, _ = enqueue_task("ping")
    user_with(django_user_model, "viewer", perms=("taskqueue.view_task",))
    log_in(page, "viewer", "pw-viewer")
    page.goto(f"/admin/taskqueue/task/{task.pk}/change/")
    page.wait_for_selector(".tq-status-queued")
    assert page.locator("#tq-cancel").count() == 0
    assert page.locator("#tq-retry").count() == 0
    status = page.evaluate(
        """async (url) => {
            const cookie = document.cookie.split("; ").find(c => c.startsWith("csrftoken="));
            const headers = {"X-CSRFToken": cookie.split("=")[1]};
            const response = await fetch(url, {method: "POST", headers});
            return response.status;
        }""",
        f"/admin/taskqueue/task/{task.pk}/cancel/",
    )
    assert status == 403
    assert Task.objects.get(pk=task.pk).status == "queued"


def test_a_user_who_is_not_staff_cannot_enter_the_admin(page, django_user_model):
    user_with(django_user_model, "outsider", staff=False, perms=("taskqueue.view_task",))
    log_in(page, "outsider", "pw-outsider")
    assert "/admin/login/" in page.url
    page.goto("/admin/taskqueue/task/dashboard/")
    assert "/admin/login/" in page.url
