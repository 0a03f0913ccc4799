"""The console's rough edges, in a real Chromium: links, layout, flags, words and clocks."""

import pytest

from tests.e2e.browser import BROWSER_TEST, log_in

pytestmark = BROWSER_TEST


@pytest.fixture(autouse=True)
def fast_password_hashing() -> None:
    """Passwords here are checked by the live server, which hashes as production does."""


@pytest.fixture
def operator(page, django_user_model):
    django_user_model.objects.create_superuser("operator", password="operator-pw")
    log_in(page, "operator", "operator-pw")
    return page


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
