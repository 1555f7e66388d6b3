"""Helpers for driving the site in Chromium: screenshots, axe-core checks, keyboard moves.

Later issues add their pages to `pages.py` (checked everywhere) or write journeys with
`Browsing`, like test_mail_programs_journey.py.
"""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Locator, Page, expect

CHROMIUM = "/usr/bin/chromium"
VIEWPORTS = {
    "desktop": {"width": 1280, "height": 800},
    "phone": {"width": 390, "height": 844},
}
# axe-core's impact levels: "minor" and "moderate" findings are reported, not failed on.
BLOCKING_IMPACTS = {"serious", "critical"}
# Keyboard users must reach anything on our pages within this many Tab presses.
MAX_TABS = 40

_axe = Axe()  # runs the axe.min.js bundled with axe-playwright-python: no network


class Browsing:
    """One browser tab on the site, with the checks every page must pass."""

    def __init__(self, page: Page, screenshots: Path, javascript: bool) -> None:
        self.page = page
        self.screenshots = screenshots
        self.javascript = javascript
        self._steps = 0
        # Leftovers of an earlier run would pass for this run's pictures.
        if screenshots.exists():
            for old in screenshots.glob("*.png"):
                old.unlink()
        screenshots.mkdir(parents=True, exist_ok=True)

    def goto(self, path: str) -> None:
        response = self.page.goto(path)
        assert response is not None and response.ok, (
            f"{path} answered {response and response.status}"
        )

    def shot(self, step: str) -> Path:
        """Save a full-page screenshot, numbered in journey order."""
        self._steps += 1
        path = self.screenshots / f"{self._steps:02d}-{step}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def check(self, step: str) -> None:
        """The checks for every page a journey reaches: it fits, it is accessible, a picture."""
        self.shot(step)
        self.assert_fits_width(step)
        if self.javascript:
            self.assert_accessible(step)

    def assert_fits_width(self, step: str) -> None:
        """Nothing makes the page scroll sideways (on a phone, that hides half of it)."""
        overflow = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{step}: the page is {overflow}px wider than the window"

    def assert_accessible(self, step: str) -> None:
        results = _axe.run(self.page)
        blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING_IMPACTS]
        assert not blocking, f"{step}: axe-core found\n" + "\n".join(
            f"- {v['id']} ({v['impact']}): {v['help']} at "
            + ", ".join(" ".join(node["target"]) for node in v["nodes"])
            for v in blocking
        )

    @contextmanager
    def timers_paused(self) -> Iterator[None]:
        """Hold the page's timers (`page.clock.run_for(ms)` moves them on): feedback that goes
        away by itself ("Copied") is then checked without racing a slow machine. They must run
        again afterwards, or axe-core, which waits on timers, never finishes."""
        self.page.clock.pause_at(time.time() + 1)
        try:
            yield
        finally:
            self.page.clock.resume()

    def sign_in(self, address: str, password: str) -> None:
        self.page.get_by_label("Pastkastītes adrese").fill(address)
        self.page.get_by_label("Parole").fill(password)
        self.page.get_by_role("button", name="Pieteikties").click()

    # Keyboard alone: Tab to move, Space to tick, Enter to follow or submit.

    def tab_to(self, target: Locator) -> None:
        """Press Tab until `target` has the focus, and check the focus can be seen."""
        for _ in range(MAX_TABS):
            self.page.keyboard.press("Tab")
            if target.evaluate("element => element === document.activeElement"):
                outline = target.evaluate("element => getComputedStyle(element).outlineStyle")
                assert outline != "none", f"{target} has the focus but shows no outline"
                return
        raise AssertionError(f"{MAX_TABS} Tab presses did not reach {target}")

    def press(self, target: Locator, key: str) -> None:
        self.tab_to(target)
        self.page.keyboard.press(key)

    def follow_link(self, name: str | re.Pattern[str]) -> None:
        self.press(self.page.get_by_role("link", name=name), "Enter")

    def expect_heading(self, name: str | re.Pattern[str]) -> None:
        expect(self.page.get_by_role("heading", level=1)).to_have_text(name)
