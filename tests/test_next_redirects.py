"""Where signing in and confirming go next: a path on this site, or the panel.

`next` comes from a link anybody can send, so every odd value must end in the panel, with
the sign-in (or the proof) kept, never in a 500 or on another site.
"""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import sudo
from accounts.models import Mailbox
from tests.conftest import ALICE_PASSWORD, csrf_post
from tests.otp import current_code, enable_two_factor, enter_code, is_signed_in

PANEL = reverse("mailaccess:settings")
SECURITY = reverse("accounts:security")
LOGIN = reverse("accounts:login")
CONFIRM = reverse("accounts:sudo")

ODD_VALUES = [
    "x",
    "//evil.example/",
    "https://evil.example/",
    "javascript:alert(1)",
    "/\\evil.example/",
    # URL names: `redirect()` would have looked them up.
    "mailaccess:mail_programs",
    "autoconfig",
    "set_language",
]


@pytest.mark.parametrize("next_url", ODD_VALUES)
def test_signing_in_with_an_odd_next_goes_to_the_panel_and_stays_signed_in(
    alice: Mailbox, next_url: str
) -> None:
    client = Client(enforce_csrf_checks=True)
    response = csrf_post(
        client, f"{LOGIN}?next={next_url}", {"address": alice.address, "password": ALICE_PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == PANEL
    assert is_signed_in(client)


@pytest.mark.parametrize("next_url", ODD_VALUES)
def test_the_second_step_with_an_odd_next_goes_to_the_panel(alice: Mailbox, next_url: str) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    csrf_post(
        client,
        LOGIN,
        {"address": alice.address, "password": ALICE_PASSWORD, "next": next_url},
    )
    response = enter_code(client, current_code(device))
    assert response.status_code == 302
    assert response["Location"] == PANEL
    assert is_signed_in(client)


def test_signing_in_goes_to_the_page_asked_for(alice: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    response = csrf_post(
        client, f"{LOGIN}?next={SECURITY}", {"address": alice.address, "password": ALICE_PASSWORD}
    )
    assert response["Location"] == SECURITY


def test_the_second_step_goes_to_the_page_asked_for(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    csrf_post(
        client, LOGIN, {"address": alice.address, "password": ALICE_PASSWORD, "next": SECURITY}
    )
    assert enter_code(client, current_code(device))["Location"] == SECURITY


def signed_in_without_sudo(mailbox: Mailbox) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(mailbox)
    return client


@pytest.mark.parametrize("next_url", ODD_VALUES)
def test_confirming_with_an_odd_next_goes_to_the_panel_with_the_proof_kept(
    alice: Mailbox, next_url: str
) -> None:
    client = signed_in_without_sudo(alice)
    response = csrf_post(client, f"{CONFIRM}?next={next_url}", {"sudo-password": ALICE_PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == PANEL
    assert sudo.SESSION_KEY in client.session


@pytest.mark.parametrize("next_url", ODD_VALUES)
def test_the_confirmation_page_in_sudo_mode_with_an_odd_next_goes_to_the_panel(
    alice_client: Client, next_url: str
) -> None:
    response = alice_client.get(f"{CONFIRM}?next={next_url}")
    assert response.status_code == 302
    assert response["Location"] == PANEL


def test_confirming_goes_back_to_the_page_asked_for(alice: Mailbox) -> None:
    client = signed_in_without_sudo(alice)
    response = csrf_post(client, f"{CONFIRM}?next={SECURITY}", {"sudo-password": ALICE_PASSWORD})
    assert response["Location"] == SECURITY
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        assert client.get(f"{CONFIRM}?next={SECURITY}")["Location"] == SECURITY
