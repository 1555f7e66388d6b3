"""Support staff reach the admin in a real browser: only through the sign-in and its second step."""

import base64
from collections.abc import Callable

import pytest
from django_otp.oath import totp
from playwright.sync_api import expect

from accounts.models import Mailbox
from tests.browser.browsing import Browsing
from tests.otp import current_code, enable_two_factor

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SUPPORT_PASSWORD = "support-web-password-1"
SIGN_IN = "Pieteikties pastkastītē"
ENTER_CODE = "Ievadiet kodu"
CODE = "Kods no autentifikācijas lietotnes vai rezerves kods"
ADMIN_INDEX = "Vietnes pārvaldīšana"


@pytest.fixture
def staff(db: None) -> Mailbox:
    # Staff alone: the live server's database is emptied between tests, data migrations too.
    return Mailbox.objects.create_user("support@inbox.lv", SUPPORT_PASSWORD, is_staff=True)


def code_from_key(manual_key: str) -> str:
    """What an authenticator app shows for the key typed into it from the set-up page."""
    key = manual_key.replace(" ", "")
    secret = base64.b32decode(key + "=" * (-len(key) % 8))
    return f"{totp(secret):06d}"


def test_support_needs_the_code_to_reach_the_admin(
    browse: Callable[..., Browsing], staff: Mailbox
) -> None:
    staff.is_superuser = True
    staff.save(update_fields=["is_superuser"])
    device, _codes = enable_two_factor(staff)
    browsing = browse("desktop")
    page = browsing.page

    browsing.goto("/admin/accounts/mailbox/")
    browsing.expect_heading(SIGN_IN)
    browsing.check("sign-in-for-the-admin")
    browsing.sign_in(staff.address, SUPPORT_PASSWORD)
    browsing.expect_heading(ENTER_CODE)
    browsing.check("second-step")

    # The password alone opens nothing: the admin sends the browser back to the sign-in.
    browsing.goto("/admin/accounts/mailbox/")
    browsing.expect_heading(SIGN_IN)
    browsing.sign_in(staff.address, SUPPORT_PASSWORD)
    page.get_by_label(CODE).fill(current_code(device))
    page.get_by_role("button", name="Pieteikties").click()
    # Back where the admin was asked for: the mailbox list.
    expect(page.locator("#changelist")).to_be_visible()
    assert page.url.endswith("/admin/accounts/mailbox/")
    browsing.shot("mailbox-list")


def test_support_without_an_authenticator_sets_one_up_before_the_admin(
    browse: Callable[..., Browsing], staff: Mailbox
) -> None:
    browsing = browse("desktop")
    page = browsing.page

    browsing.goto("/admin/")
    browsing.sign_in(staff.address, SUPPORT_PASSWORD)
    # Signed in, but the admin opens only to a session that passed the second step.
    browsing.expect_heading("Drošība")
    expect(page.get_by_role("status")).to_contain_text("divpakāpju pieteikšanās")
    browsing.check("sent-to-set-up")

    page.get_by_role("button", name="Iestatīt divpakāpju pieteikšanos").click()
    browsing.expect_heading("Iestatīt divpakāpju pieteikšanos")
    code = code_from_key(page.locator("#manual-key").inner_text())
    page.get_by_label("Sešu ciparu kods no lietotnes").fill(code)
    page.get_by_role("button", name="Ieslēgt divpakāpju pieteikšanos").click()
    browsing.expect_heading("Jūsu rezerves kodi")
    browsing.check("recovery-codes")

    browsing.goto("/admin/")
    expect(page.get_by_role("heading", level=1)).to_have_text(ADMIN_INDEX)
    browsing.shot("admin")
