"""Issue 22 in a real browser, in Latvian, at both widths: the owner reads each password's
sign-ins and refusals, gets "A new mail program signed in", and ends the password with
"This was not me"; axe checks every step."""

import time
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from accounts.models import Mailbox
from mailaccess import activity
from mailaccess.activity import Event
from mailaccess.models import ActivityKind, AppPassword
from tests.browser.browsing import Browsing
from tests.conftest import ALICE_PASSWORD
from tests.test_mail_servers_e2e import switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PANEL = "Pasta programmas: POP3\\IMAP un SMTP pieeja"


def busy_mailbox(mailbox: Mailbox) -> AppPassword:
    """Thunderbird at home for a day, a refusal for checking too often, then a stranger."""
    switch_on(mailbox)
    password = AppPassword.objects.get(mailbox=mailbox)
    now = time.time()

    def event(network: str, when: float, client: str = "", reason: str = "") -> tuple[str, Event]:
        kind = ActivityKind.REFUSED if reason else ActivityKind.SIGN_IN
        retry = when + 240 if reason else None
        return f"{when}", Event(
            kind, mailbox.pk, password.pk, "imap", network, network, client, when, reason, retry
        )

    activity.fold([event("192.0.2.10", now - 86400 + i * 300, "Thunderbird 128") for i in range(5)])
    activity.fold(
        [
            event("192.0.2.10", now - 600, "Thunderbird 128", "too_often"),
            event("203.0.113.7", now - 60, "Outlook 16"),
        ]
    )
    return password


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_reading_activity_and_ending_a_stranger_s_password(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str
) -> None:
    password = busy_mailbox(alice)
    browsing = browse(viewport)
    page = browsing.page

    browsing.goto("/")
    browsing.sign_in(alice.address, ALICE_PASSWORD)
    page.get_by_role("link", name=PANEL).click()
    browsing.expect_heading(PANEL)

    notice = page.get_by_role("alert").filter(has_text="Pieteicās jauna pasta programma.")
    expect(notice).to_contain_text("Adrese: 203.0.113.7")
    expect(notice).to_contain_text("Programma: Outlook 16")
    section = page.locator("#activity")
    expect(section.get_by_role("heading", name="Pēdējās pieteikšanās un atteikumi")).to_be_visible()
    table = section.get_by_role("table", name="Pasta programmas")
    expect(table).to_contain_text("Thunderbird 128")
    expect(table).to_contain_text("(5 reizes)")
    expect(table).to_contain_text("pastu pārbaudīja biežāk nekā reizi piecās minūtēs")
    expect(table).to_contain_text("Drīkst pārbaudīt vēlreiz pēc plkst.")
    browsing.check("activity")

    notice.get_by_role("link", name="Tas nebiju es").click()
    browsing.expect_heading("Tas nebiju es")
    expect(page.get_by_role("listitem").filter(has_text="203.0.113.7")).to_be_visible()
    browsing.check("not-me")

    page.get_by_role("button", name="Atsaukt paroli").click()
    browsing.expect_heading("Mainīt web paroli")
    expect(page.get_by_text("vairs nedarbojas")).to_be_visible()
    browsing.check("change-password-after-not-me")
    password.refresh_from_db()
    assert not password.is_live
