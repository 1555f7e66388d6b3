"""Helpers for tests of two-factor sign-in and sudo mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from accounts.models import Mailbox
from tests.conftest import csrf_post

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse


def enable_two_factor(mailbox: Mailbox) -> tuple[TOTPDevice, list[str]]:
    device = TOTPDevice.objects.create(user=mailbox, name="authenticator", confirmed=True)
    return device, two_factor.replace_recovery_codes(mailbox)


def current_code(device: TOTPDevice) -> str:
    """What the phone shows now: computed from the device key, as the app does."""
    device.refresh_from_db()
    value = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
    return f"{value:0{device.digits}d}"


def sign_in(client: Client, address: str, password: str, **extra: Any) -> TestResponse:
    return csrf_post(
        client, reverse("accounts:login"), {"address": address, "password": password}, **extra
    )


def enter_code(client: Client, code: str, **extra: Any) -> TestResponse:
    return csrf_post(client, reverse("accounts:sign_in_code"), {"code": code}, **extra)


def is_signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def form_post(
    client: Client, url: str, data: dict[str, str] | None = None, **extra: Any
) -> TestResponse:
    """POST a form of the security page (its targets are POST-only, so no GET for a cookie)."""
    client.get(reverse("accounts:security"))
    token = client.cookies["csrftoken"].value
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token}, **extra)


def verified_client(mailbox: Mailbox, *, enforce_csrf_checks: bool = False) -> Client:
    """A browser signed in with the password and the authenticator's code: what the admin needs.

    The mailbox gets a confirmed authenticator if it has none.
    """
    device = two_factor.confirmed_device(mailbox) or enable_two_factor(mailbox)[0]
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(mailbox)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client
