"""Sudo mode: switching access on needs fresh proof (web password, or a code with 2FA)."""

import re
from datetime import timedelta

import time_machine
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts import sudo
from accounts.models import Mailbox
from mailaccess.models import AppPassword
from tests.conftest import ALICE_PASSWORD, csrf_post
from tests.otp import current_code, enable_two_factor, enter_code, form_post, sign_in

PANEL = reverse("mailaccess:mail_programs")
NEW_PASSWORD_RE = re.compile(r'<output id="new-password"[^>]*>([a-z2-9-]+)</output>')
NOW = timezone.now().replace(microsecond=0)
LATER = NOW + timedelta(minutes=11)


def signed_in(mailbox: Mailbox, password: str = ALICE_PASSWORD) -> Client:
    client = Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        assert sign_in(client, mailbox.address, password).status_code == 302
    return client


def confirm(client: Client, proof: dict[str, str]):  # type: ignore[no-untyped-def]
    """Answer the confirmation page: the original field rides along, as the page sends it."""
    return csrf_post(client, PANEL, {"external_access": "on", "sudo-confirm": "1", **proof})


def test_right_after_sign_in_switching_on_needs_no_second_proof(alice: Mailbox) -> None:
    client = signed_in(alice)
    with time_machine.travel(NOW + timedelta(minutes=9), tick=False):
        response = csrf_post(client, PANEL, {"external_access": "on"})
    assert NEW_PASSWORD_RE.search(response.content.decode())


def test_after_ten_minutes_switching_on_asks_for_the_password_first(alice: Mailbox) -> None:
    client = signed_in(alice)
    with time_machine.travel(LATER, tick=False):
        response = csrf_post(client, PANEL, {"external_access": "on"})
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="sudo-password"' in page
    # The confirmation form posts back to the panel with the original switch value.
    assert f'action="{PANEL}"' in page
    assert '<input type="hidden" name="external_access" value="on">' in page
    assert not NEW_PASSWORD_RE.search(page)
    assert not AppPassword.objects.filter(mailbox=alice).exists()
    assert "no-store" in response["Cache-Control"]


def test_the_right_password_completes_the_switch_in_the_same_response(alice: Mailbox) -> None:
    client = signed_in(alice)
    with time_machine.travel(LATER, tick=False):
        response = confirm(client, {"sudo-password": ALICE_PASSWORD})
        assert response.status_code == 200
        assert NEW_PASSWORD_RE.search(response.content.decode())
        assert AppPassword.objects.live().filter(mailbox=alice).count() == 1
        # Proof lasts: switching off and on again a minute later asks for nothing.
        csrf_post(client, PANEL, {})
    with time_machine.travel(LATER + timedelta(minutes=1), tick=False):
        again = csrf_post(client, PANEL, {"external_access": "on"})
    assert NEW_PASSWORD_RE.search(again.content.decode())


def test_a_wrong_password_changes_nothing(alice: Mailbox) -> None:
    client = signed_in(alice)
    with time_machine.travel(LATER, tick=False):
        response = confirm(client, {"sudo-password": "not-the-password"})
        assert response.status_code == 400
        assert 'name="sudo-password"' in response.content.decode()
        assert not AppPassword.objects.filter(mailbox=alice).exists()
        assert csrf_post(client, PANEL, {"external_access": "on"}).status_code == 200
    assert not AppPassword.objects.filter(mailbox=alice).exists()


def test_wrong_passwords_on_the_confirmation_page_are_throttled(
    alice: Mailbox, settings: object
) -> None:
    settings.SIGN_IN_FAILURES_PER_MAILBOX = 3  # type: ignore[attr-defined]
    # The browser signed in, so it is a known one: its own limit counts.
    settings.SIGN_IN_FAILURES_PER_DEVICE = 3  # type: ignore[attr-defined]
    client = signed_in(alice)
    with time_machine.travel(LATER, tick=False):
        for _ in range(3):
            assert confirm(client, {"sudo-password": "guess"}).status_code == 400
        response = confirm(client, {"sudo-password": ALICE_PASSWORD})
    assert response.status_code == 429
    assert not AppPassword.objects.filter(mailbox=alice).exists()


def test_strangers_failing_to_sign_in_do_not_block_the_owners_confirmation(
    alice: Mailbox, settings: object
) -> None:
    settings.SIGN_IN_FAILURES_PER_MAILBOX = 3  # type: ignore[attr-defined]
    client = signed_in(alice)
    with time_machine.travel(LATER, tick=False):
        for n in range(5):
            stranger = Client()
            data = {"address": alice.address, "password": f"guess-{n}"}
            stranger.post(reverse("accounts:login"), data, REMOTE_ADDR=f"198.51.100.{n}")
        response = confirm(client, {"sudo-password": ALICE_PASSWORD})
    assert NEW_PASSWORD_RE.search(response.content.decode())


def test_with_two_factor_the_proof_is_a_fresh_code(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        sign_in(client, alice.address, ALICE_PASSWORD)
        used_code = current_code(device)
        enter_code(client, used_code)
    with time_machine.travel(LATER, tick=False):
        page = csrf_post(client, PANEL, {"external_access": "on"}).content.decode()
        assert 'name="sudo-code"' in page and 'name="sudo-password"' not in page
        # The web password alone is no longer proof, and a used code is never taken again.
        assert confirm(client, {"sudo-password": ALICE_PASSWORD}).status_code == 400
        assert confirm(client, {"sudo-code": used_code}).status_code == 400
    with time_machine.travel(LATER + timedelta(seconds=30), tick=False):
        response = confirm(client, {"sudo-code": current_code(device)})
    assert NEW_PASSWORD_RE.search(response.content.decode())


def test_switching_off_never_asks_for_proof(alice_client: Client, alice: Mailbox) -> None:
    csrf_post(alice_client, PANEL, {"external_access": "on"})
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        response = csrf_post(alice_client, PANEL, {})
    assert response.status_code == 302
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()


def test_setting_up_two_factor_needs_proof_and_then_continues(alice: Mailbox) -> None:
    client = signed_in(alice)
    start = reverse("accounts:two_factor_start")
    with time_machine.travel(LATER, tick=False):
        asked = form_post(client, start)
        assert 'name="sudo-password"' in asked.content.decode()
        done = form_post(client, start, {"sudo-confirm": "1", "sudo-password": ALICE_PASSWORD})
    assert done["Location"] == reverse("accounts:two_factor_setup")


def test_the_confirmation_page_returns_to_the_page_it_came_from(alice: Mailbox) -> None:
    client = signed_in(alice)
    url = f"{reverse('accounts:sudo')}?next={PANEL}"
    with time_machine.travel(LATER, tick=False):
        assert 'name="sudo-password"' in client.get(url).content.decode()
        response = csrf_post(client, url, {"sudo-password": ALICE_PASSWORD})
        assert response["Location"] == PANEL
        assert client.session[sudo.SESSION_KEY] == int(LATER.timestamp())


def test_the_confirmation_page_never_returns_to_another_site(alice: Mailbox) -> None:
    client = signed_in(alice)
    url = f"{reverse('accounts:sudo')}?next=https://evil.example/"
    with time_machine.travel(LATER, tick=False):
        response = csrf_post(client, url, {"sudo-password": ALICE_PASSWORD})
    assert response["Location"] == reverse("mailaccess:settings")


def test_a_protected_page_asks_for_proof_then_sends_the_user_back(alice: Mailbox) -> None:
    @sudo.require_sudo_mode
    def download(request: HttpRequest) -> HttpResponse:
        return HttpResponse("profile")

    request = RequestFactory().get("/settings/profile/?program=ios")
    request.user = alice
    request.session = SessionStore()
    response = download(request)
    assert response.content != b"profile"
    assert "/accounts/confirm/?next=%2Fsettings%2Fprofile%2F%3Fprogram%3Dios" in (
        response.content.decode()
    )
    sudo.start(request)
    assert download(request).content == b"profile"
