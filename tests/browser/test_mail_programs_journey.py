"""The mail-programs panel in a real browser: what a person does to connect Thunderbird."""

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from accounts.models import Mailbox
from mailaccess import passwords
from mailaccess.models import AppPassword, ExternalAccess
from tests.browser.browsing import Browsing
from tests.conftest import ALICE_PASSWORD

# Once per `make test`, on the PostgreSQL pass: a browser run is slow, and a live server on
# PostgreSQL takes concurrent requests the way production does.
pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SETTINGS = "Iestatījumi"
PANEL = "Pasta programmas: POP3\\IMAP un SMTP pieeja"
SWITCH = "Atļaut ārējo POP3\\IMAP un SMTP pieeju"
PASSWORD_SHAPE = re.compile(r"^[a-z2-9]+(-[a-z2-9]+)+$")


def shown_password(browsing: Browsing) -> str:
    password = browsing.page.locator("#new-password").inner_text().strip()
    assert PASSWORD_SHAPE.match(password), f"{password!r} does not look like an app password"
    return password


def assert_password_works(password: str, mailbox: Mailbox) -> None:
    """The password on the screen is the one the mail servers will accept."""
    hashes = (
        AppPassword.objects.live().filter(mailbox=mailbox).values_list("password_hash", flat=True)
    )
    assert any(passwords.verify(password, stored) for stored in hashes)


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_connecting_thunderbird_from_the_settings_panel(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str
) -> None:
    browsing = browse(viewport)
    page = browsing.page

    browsing.goto("/")
    browsing.expect_heading("Pieteikties pastkastītē")
    browsing.check("sign-in")

    browsing.sign_in(alice.address, ALICE_PASSWORD)
    browsing.expect_heading(SETTINGS)
    browsing.check("settings")

    page.get_by_role("link", name=PANEL).click()
    browsing.expect_heading(PANEL)
    switch = page.get_by_role("checkbox", name=SWITCH)
    expect(switch).not_to_be_checked()
    # A real checkbox with its own <label>, not a styled div with an ARIA role.
    assert switch.evaluate("e => [e.tagName, e.type, e.labels.length]") == ["INPUT", "checkbox", 1]
    browsing.check("panel")

    switch.check()
    page.get_by_role("button", name="Saglabāt").click()
    password = shown_password(browsing)
    assert_password_works(password, alice)
    expect(page.get_by_role("checkbox", name=SWITCH)).to_be_checked()
    browsing.check("password-shown")

    copy = page.locator("button[data-copy-target]")
    expect(copy).to_be_visible()
    expect(copy).to_have_accessible_name("Kopēt")
    with browsing.timers_paused():
        copy.click()
        expect(copy).to_have_text("Nokopēts")
        assert page.evaluate("navigator.clipboard.readText()") == password
        browsing.shot("password-copied")
        page.clock.run_for(2000)
        expect(copy).to_have_text("Kopēt")

    page.reload()
    browsing.expect_heading(PANEL)
    expect(page.locator("#new-password")).to_have_count(0)
    assert password not in page.content()
    expect(page.get_by_role("checkbox", name=SWITCH)).to_be_checked()
    browsing.check("reloaded")

    page.get_by_role("link", name=re.compile("Mozilla Thunderbird")).click()
    browsing.expect_heading(re.compile("Mozilla Thunderbird"))
    expect(page.get_by_role("main")).to_contain_text("mail.inbox.lv")
    browsing.check("thunderbird")

    page.get_by_role("link", name="Atpakaļ uz pasta programmu iestatījumiem").click()
    page.get_by_role("checkbox", name=SWITCH).uncheck()
    page.get_by_role("button", name="Saglabāt").click()
    browsing.expect_heading("Izslēgt ārējo pieeju?")
    expect(page.get_by_role("main")).to_contain_text("Pārstās darboties 1 pasta programmas parole")
    assert ExternalAccess.objects.get(mailbox=alice).enabled
    browsing.check("confirm-switch-off")
    page.get_by_role("button", name="Izslēgt").click()
    expect(page.get_by_role("status")).to_contain_text(
        "Ārējā pieeja ir izslēgta. 1 pasta programmas parole vairs nedarbojas."
    )
    expect(page.get_by_role("checkbox", name=SWITCH)).not_to_be_checked()
    assert not ExternalAccess.objects.get(mailbox=alice).enabled
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()
    browsing.check("switched-off")

    page.get_by_role("link", name=SETTINGS).first.click()
    page.get_by_role("link", name="Mainīt web paroli").click()
    browsing.expect_heading("Mainīt web paroli")
    browsing.check("change-password")


def test_the_keyboard_alone_connects_and_disconnects_a_mail_program(
    browse: Callable[..., Browsing], alice: Mailbox
) -> None:
    browsing = browse("desktop")
    page, keyboard = browsing.page, browsing.page.keyboard

    browsing.goto("/")
    address = page.get_by_label("Pastkastītes adrese")
    expect(address).to_be_focused()
    keyboard.type(alice.address)
    browsing.tab_to(page.get_by_label("Parole"))
    keyboard.type(ALICE_PASSWORD)
    keyboard.press("Enter")
    browsing.expect_heading(SETTINGS)

    browsing.follow_link(PANEL)
    browsing.expect_heading(PANEL)
    switch = page.get_by_role("checkbox", name=SWITCH)
    browsing.press(switch, "Space")
    expect(switch).to_be_checked()
    browsing.press(page.get_by_role("button", name="Saglabāt"), "Enter")
    password = shown_password(browsing)
    browsing.shot("password-shown")

    copy = page.locator("button[data-copy-target]")
    with browsing.timers_paused():
        browsing.press(copy, "Enter")
        expect(copy).to_have_text("Nokopēts")
        expect(copy).to_be_focused()
    assert page.evaluate("navigator.clipboard.readText()") == password

    browsing.follow_link(re.compile("Mozilla Thunderbird"))
    browsing.expect_heading(re.compile("Mozilla Thunderbird"))
    browsing.shot("thunderbird")

    browsing.follow_link("Atpakaļ uz pasta programmu iestatījumiem")
    switch = page.get_by_role("checkbox", name=SWITCH)
    browsing.press(switch, "Space")
    expect(switch).not_to_be_checked()
    browsing.press(page.get_by_role("button", name="Saglabāt"), "Enter")
    browsing.expect_heading("Izslēgt ārējo pieeju?")
    browsing.press(page.get_by_role("button", name="Izslēgt"), "Enter")
    expect(page.get_by_role("status")).to_contain_text("Ārējā pieeja ir izslēgta")
    browsing.shot("switched-off")
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_the_panel_works_without_javascript(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str
) -> None:
    browsing = browse(viewport, javascript=False)
    page = browsing.page

    browsing.goto("/")
    browsing.sign_in(alice.address, ALICE_PASSWORD)
    page.get_by_role("link", name=PANEL).click()
    browsing.expect_heading(PANEL)
    page.get_by_role("checkbox", name=SWITCH).check()
    page.get_by_role("button", name="Saglabāt").click()
    password = shown_password(browsing)
    assert_password_works(password, alice)
    # Copying needs JavaScript: without it the button stays hidden, never dead.
    expect(page.locator("button[data-copy-target]")).to_be_hidden()
    browsing.check("password-shown")

    page.reload()
    assert password not in page.content()

    page.get_by_role("link", name=re.compile("Mozilla Thunderbird")).click()
    browsing.expect_heading(re.compile("Mozilla Thunderbird"))
    browsing.check("thunderbird")

    page.get_by_role("link", name="Atpakaļ uz pasta programmu iestatījumiem").click()
    page.get_by_role("checkbox", name=SWITCH).uncheck()
    page.get_by_role("button", name="Saglabāt").click()
    browsing.expect_heading("Izslēgt ārējo pieeju?")
    browsing.check("confirm-switch-off")
    page.get_by_role("button", name="Izslēgt").click()
    expect(page.get_by_role("status")).to_contain_text("Ārējā pieeja ir izslēgta")
    browsing.check("switched-off")
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()


def test_on_a_phone_the_header_takes_two_rows_and_buttons_keep_their_border(
    browse: Callable[..., Browsing], db: None
) -> None:
    """English, the longest labels, and a long address: still two rows, and the Apple profile
    link is one box, not a border split over two lines."""
    long_address = "kristaps.berzins-ozolins@inbox.lv"
    Mailbox.objects.create_user(long_address, ALICE_PASSWORD, language="en")
    browsing = browse("phone")
    page = browsing.page
    browsing.goto("/")
    browsing.sign_in(long_address, ALICE_PASSWORD)
    header = page.locator("header.topbar")
    row = page.locator(".brand").evaluate("e => e.getBoundingClientRect().height")
    height = header.evaluate("e => e.getBoundingClientRect().height")
    assert height < 2 * row + 60, f"the header is {height}px high: more than two rows"
    browsing.check("header")

    page.get_by_role("link", name=re.compile("Mail programs")).click()
    page.get_by_role("checkbox", name=re.compile("Allow external")).check()
    page.get_by_role("button", name="Save").click()
    profile = page.get_by_role("link", name=re.compile("install a profile"))
    display = profile.evaluate("e => getComputedStyle(e).display")
    assert display == "inline-block", f"the button is display: {display}"
    browsing.check("password-shown-english")


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_a_stolen_password_is_one_box_with_its_button(
    browse: Callable[..., Browsing], alice: Mailbox, viewport: str
) -> None:
    from audit.models import Actor
    from mailaccess import actions
    from mailaccess.models import BlockReason

    actions.enable_access(alice, actor=Actor.user(alice))
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    browsing = browse(viewport)
    page = browsing.page
    browsing.goto("/")
    browsing.sign_in(alice.address, ALICE_PASSWORD)
    page.get_by_role("link", name=PANEL).click()
    box = page.locator(".block")
    expect(box).to_have_count(1)
    expect(box.get_by_role("heading")).to_have_text("Pieeja tika automātiski izslēgta")
    expect(page.get_by_text("Izskatās, ka Jūsu parole ir uzlauzta")).to_have_count(1)
    expect(page.get_by_role("checkbox", name=SWITCH)).to_be_disabled()
    browsing.check("compromised")
    box.get_by_role("link", name="Mainīt web paroli").click()
    browsing.expect_heading("Mainīt web paroli")
