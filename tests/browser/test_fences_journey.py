"""Issue 22 §3 in a real browser, in Latvian, at both widths: the owner fences a new device
password to her networks; a malformed list is explained and creates nothing; axe checks each
step."""

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from accounts.models import Mailbox
from mailaccess.models import AppPassword
from tests.browser.browsing import Browsing
from tests.conftest import ALICE_PASSWORD
from tests.test_mail_servers_e2e import switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PANEL = "Pasta programmas: POP3\\IMAP un SMTP pieeja"


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_fencing_a_new_device_password_to_home_networks(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str
) -> None:
    switch_on(alice)
    before = AppPassword.objects.filter(mailbox=alice).count()
    browsing = browse(viewport)
    page = browsing.page
    browsing.goto("/")
    browsing.sign_in(alice.address, ALICE_PASSWORD)
    page.get_by_role("link", name=PANEL).click()
    browsing.expect_heading(PANEL)

    page.get_by_label("Ierīce vai programma").fill("Telefons")
    fence = page.get_by_label("Drīkst lietot tikai no šiem tīkliem")
    fence.fill("192.0.2.0/24, mājas")
    page.get_by_role("button", name="Izveidot paroli").click()
    expect(page.get_by_text("„mājas” nav IP adrese vai tīklu diapazons.")).to_be_visible()
    assert AppPassword.objects.filter(mailbox=alice).count() == before
    browsing.check("fence-refused")

    page.get_by_label("Ierīce vai programma").fill("Telefons")
    page.get_by_label("Drīkst lietot tikai no šiem tīkliem").fill("192.0.2.7 2001:db8::1/64")
    page.get_by_role("button", name="Izveidot paroli").click()
    expect(page.get_by_text("tikai no 192.0.2.7/32, 2001:db8::/64")).to_be_visible()
    created = AppPassword.objects.get(mailbox=alice, label="Telefons")
    assert created.allowed_networks == ["192.0.2.7/32", "2001:db8::/64"]
    browsing.check("fence-created")
