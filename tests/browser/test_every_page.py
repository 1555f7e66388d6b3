"""Every page in pages.py reads well on a desktop and a phone, with and without JavaScript."""

import re
from collections.abc import Callable

import pytest

from accounts.models import Mailbox
from tests.browser.browsing import Browsing
from tests.browser.pages import PAGES
from tests.conftest import ALICE_PASSWORD

# Once per `make test`, on the PostgreSQL pass: a browser run is slow, and a live server on
# PostgreSQL takes concurrent requests the way production does.
pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


# axe-core is slow, so it runs once per page (its rules barely depend on the width); the
# phone pass without JavaScript checks the layout and that nothing needs a script.
@pytest.mark.parametrize(
    ("viewport", "javascript"), [("desktop", True), ("phone", False)], ids=["desktop", "phone-nojs"]
)
def test_every_page_is_accessible_and_fits_the_screen(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str, javascript: bool
) -> None:
    browsing = browse(viewport, javascript=javascript)
    for page in sorted(PAGES, key=lambda page: page.signed_in):
        if page.signed_in and "sessionid" not in {
            cookie["name"] for cookie in browsing.page.context.cookies()
        }:
            browsing.goto(PAGES[0].path)
            browsing.sign_in(alice.address, ALICE_PASSWORD)
        browsing.goto(page.path)
        browsing.expect_heading(re.compile(re.escape(page.heading)))
        browsing.check(page.name)
