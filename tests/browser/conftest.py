"""Fixtures for the browser tests: Debian's Chromium driven by Playwright against the live site.

Playwright cannot download its own browser here, so the tests launch `/usr/bin/chromium`
(`.ci/run` installs it) and skip with the reason when it is missing; CI's REQUIRE_E2E=1 turns
that skip into a failure.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Browser, ViewportSize, sync_playwright
from pytest_django.live_server_helper import LiveServer

from tests.browser.browsing import CHROMIUM, VIEWPORTS, Browsing

# Without these Chromium phones home (updates, sync, QUIC probes) and the sandbox needs
# privileges a container does not have.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The live server must listen where the browser goes: 127.0.0.1 is a secure context (the
# clipboard API needs one) and the host Django's ALLOWED_HOSTS gets for the live server.
# Set DJANGO_LIVE_TEST_SERVER_ADDRESS=127.0.0.1:<port> to pin the port.
os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`)"
        )
    # Playwright's sync API keeps an asyncio loop running in this thread, and Django then
    # refuses every ORM call as "async unsafe". The test's own ORM calls are plain sync code
    # made while that loop waits, so they are safe; the variable lives only for this test.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # Django keeps connections per async context: the ones the test opened while
            # Playwright's loop ran are closed here, or they hold the test database open.
            connections.close_all()


@pytest.fixture
def site(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture
def browse(
    chromium: Browser,
    site: str,
    request: pytest.FixtureRequest,
) -> Callable[..., Browsing]:
    """Open a fresh browser context: `browse("phone", javascript=False)`.

    Screenshots go to screenshots/<test name>/<viewport>[-nojs]/.
    """

    def open_context(viewport: str = "desktop", *, javascript: bool = True) -> Browsing:
        size = VIEWPORTS[viewport]
        context = chromium.new_context(
            viewport=ViewportSize(width=size["width"], height=size["height"]),
            is_mobile=viewport == "phone",
            has_touch=viewport == "phone",
            java_script_enabled=javascript,
            locale="lv-LV",
            base_url=site,
        )
        if javascript:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
        page = context.new_page()
        if javascript:
            # Page timers run as usual until a test pauses them (see Browsing.timers_paused).
            page.clock.install()
        folder = viewport if javascript else f"{viewport}-nojs"
        test_name = request.node.originalname
        return Browsing(page, SCREENSHOTS / test_name / folder, javascript)

    return open_context
