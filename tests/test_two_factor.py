"""Two-factor sign-in: set-up with a QR code, recovery codes, the second sign-in step."""

import re
from base64 import b32encode
from datetime import timedelta

import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Mailbox, RecoveryCode
from audit.models import AuditAction, AuditEvent
from tests.conftest import ALICE_PASSWORD, csrf_post
from tests.otp import (
    current_code,
    enable_two_factor,
    enter_code,
    form_post,
    is_signed_in,
    sign_in,
    verified_client,
)

START = reverse("accounts:two_factor_start")
SETUP = reverse("accounts:two_factor_setup")
OFF = reverse("accounts:two_factor_disable")
CODE_RE = re.compile(r"<li><code>([a-z2-9-]+)</code></li>")
NOW = timezone.now().replace(microsecond=0)


def set_up(client: Client, mailbox: Mailbox) -> tuple[TOTPDevice, list[str]]:
    assert form_post(client, START).status_code == 302
    device = TOTPDevice.objects.get(user=mailbox)
    response = csrf_post(client, SETUP, {"code": current_code(device)})
    assert response.status_code == 200
    return device, CODE_RE.findall(response.content.decode())


def test_setting_up_shows_a_locally_drawn_qr_code_and_the_key(
    alice_client: Client, alice: Mailbox
) -> None:
    response = form_post(alice_client, START)
    assert response["Location"] == SETUP
    device = TOTPDevice.objects.get(user=alice)
    assert not device.confirmed
    page = alice_client.get(SETUP)
    html = page.content.decode()
    assert "<svg" in html and 'class="qr"' in html
    assert "<img" not in html  # nothing fetched from another site: the key stays here
    key = b32encode(device.bin_key).decode()
    assert " ".join(key[i : i + 4] for i in range(0, len(key), 4)) in html
    assert "no-store" in page["Cache-Control"]


def test_starting_set_up_is_post_only(alice_client: Client, alice: Mailbox) -> None:
    assert alice_client.get(START).status_code == 405
    assert not TOTPDevice.objects.filter(user=alice).exists()


def test_a_wrong_code_does_not_switch_two_factor_on(alice_client: Client, alice: Mailbox) -> None:
    form_post(alice_client, START)
    device = TOTPDevice.objects.get(user=alice)
    wrong = f"{(int(current_code(device)) + 1) % 1_000_000:06d}"
    response = csrf_post(alice_client, SETUP, {"code": wrong})
    assert response.status_code == 400
    assert not TOTPDevice.objects.filter(user=alice, confirmed=True).exists()
    assert not RecoveryCode.objects.filter(mailbox=alice).exists()


def test_the_right_code_switches_it_on_and_shows_recovery_codes_once(
    alice_client: Client, alice: Mailbox
) -> None:
    device, codes = set_up(alice_client, alice)
    device.refresh_from_db()
    assert device.confirmed
    assert len(codes) == 10 and len(set(codes)) == 10
    stored = list(RecoveryCode.objects.filter(mailbox=alice).values_list("code_hash", flat=True))
    assert len(stored) == 10
    assert not any(
        code in hash_ or code.replace("-", "") in hash_ for code in codes for hash_ in stored
    )
    later = alice_client.get(reverse("accounts:security")).content.decode()
    assert not any(code in later for code in codes)
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.TWO_FACTOR_ENABLED).exists()


def test_until_the_code_is_confirmed_sign_in_asks_for_none(alice: Mailbox) -> None:
    TOTPDevice.objects.create(user=alice, name="authenticator", confirmed=False)
    client = Client(enforce_csrf_checks=True)
    assert sign_in(client, alice.address, ALICE_PASSWORD)["Location"] == reverse(
        "mailaccess:settings"
    )
    assert is_signed_in(client)


def test_sign_in_asks_for_the_code_after_the_password(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        response = sign_in(client, alice.address, ALICE_PASSWORD)
        assert response["Location"] == reverse("accounts:sign_in_code")
        # Between the steps the visitor is not signed in: the session only names the mailbox.
        assert not is_signed_in(client)
        assert client.session["sign_in_pending"]["mailbox"] == alice.pk
        assert client.get(reverse("mailaccess:settings")).status_code == 302
        response = enter_code(client, current_code(device))
    assert response["Location"] == reverse("mailaccess:settings")
    assert is_signed_in(client)
    assert "sign_in_pending" not in client.session
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.SIGNED_IN).count() == 1


def test_a_code_is_never_accepted_twice(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    first, second = Client(enforce_csrf_checks=True), Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        code = current_code(device)
        sign_in(first, alice.address, ALICE_PASSWORD)
        assert enter_code(first, code).status_code == 302
        sign_in(second, alice.address, ALICE_PASSWORD)
        replay = enter_code(second, code)
    assert replay.status_code == 200
    assert not is_signed_in(second)
    # The next code from the app, half a minute later, works.
    with time_machine.travel(NOW + timedelta(seconds=30), tick=False):
        assert enter_code(second, current_code(device)).status_code == 302
    assert is_signed_in(second)


def test_a_recovery_code_signs_in_once(alice: Mailbox) -> None:
    _device, codes = enable_two_factor(alice)
    first, second = Client(enforce_csrf_checks=True), Client(enforce_csrf_checks=True)
    sign_in(first, alice.address, ALICE_PASSWORD)
    # Typed in capitals and without dashes: still the same code.
    assert enter_code(first, codes[3].upper().replace("-", " ")).status_code == 302
    assert is_signed_in(first)
    sign_in(second, alice.address, ALICE_PASSWORD)
    assert enter_code(second, codes[3]).status_code == 200
    assert not is_signed_in(second)
    assert RecoveryCode.objects.unused().filter(mailbox=alice).count() == 9
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.RECOVERY_CODE_USED).exists()


def test_the_code_step_expires_after_five_minutes(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        sign_in(client, alice.address, ALICE_PASSWORD)
    with time_machine.travel(NOW + timedelta(minutes=6), tick=False):
        response = enter_code(client, current_code(device))
    assert response["Location"] == reverse("accounts:login")
    assert not is_signed_in(client)


def test_a_new_web_password_voids_a_half_finished_sign_in(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    sign_in(client, alice.address, ALICE_PASSWORD)
    alice.set_password("the-owner-changed-it-9")
    alice.save()
    assert enter_code(client, current_code(device))["Location"] == reverse("accounts:login")
    assert not is_signed_in(client)


def test_switching_off_needs_a_fresh_code(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    with time_machine.travel(NOW, tick=False):
        code = current_code(device)
        sign_in(client, alice.address, ALICE_PASSWORD)
        enter_code(client, code)
        replay = form_post(client, OFF, {"code": code})
    assert replay.status_code == 400
    assert TOTPDevice.objects.filter(user=alice, confirmed=True).exists()
    with time_machine.travel(NOW + timedelta(seconds=30), tick=False):
        response = form_post(client, OFF, {"code": current_code(device)})
    assert response["Location"] == reverse("accounts:security")
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert not RecoveryCode.objects.filter(mailbox=alice).exists()
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.TWO_FACTOR_DISABLED).exists()
    fresh = Client(enforce_csrf_checks=True)
    sign_in(fresh, alice.address, ALICE_PASSWORD)
    assert is_signed_in(fresh)


def test_new_recovery_codes_replace_the_old_ones(alice_client: Client, alice: Mailbox) -> None:
    _device, old = enable_two_factor(alice)
    response = form_post(alice_client, reverse("accounts:recovery_codes"))
    new = CODE_RE.findall(response.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    client = Client(enforce_csrf_checks=True)
    sign_in(client, alice.address, ALICE_PASSWORD)
    assert enter_code(client, old[0]).status_code == 200
    assert enter_code(client, new[0]).status_code == 302


def test_support_staff_can_remove_an_authenticator_but_never_see_its_key(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    staff = Mailbox.objects.create_superuser("support@inbox.lv", "support-password-1")
    client = verified_client(staff)
    page = client.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk]))
    assert page.status_code == 200
    assert device.key not in page.content.decode()
    config = reverse("admin:otp_totp_totpdevice_config", args=[device.pk])
    assert client.get(config).status_code == 403
