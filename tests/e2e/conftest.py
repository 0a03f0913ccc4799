"""Fixtures of the browser tests: a real Chromium per module, a fresh page per test."""

import os
from collections.abc import Iterator

import pytest

from tests.e2e.browser import CHROMIUM, FLAGS


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls, which Django must allow here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=FLAGS
            )
            yield instance
            instance.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser, live_server_url, redis_db):
    # A browser far from UTC, in a 12-hour locale: a time shown in the browser's zone shows.
    context = browser.new_context(
        base_url=live_server_url,
        viewport={"width": 1440, "height": 900},
        timezone_id="America/New_York",
        locale="en-US",
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    # Shown by pytest when a test fails: what the page's scripts said.
    page.on("console", lambda message: print(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: print(f"page error: {error}"))
    yield page
    context.close()
