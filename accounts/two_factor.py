"""Two-factor sign-in: an authenticator app (django-otp's TOTPDevice) and recovery codes.

A mailbox has two-factor sign-in when it has a *confirmed* TOTPDevice: setting up creates an
unconfirmed one, and only a correct code from the app confirms it, so a half-finished set-up
never locks anybody out.

Every verification locks the device row (``select_for_update`` inside ``atomic``): TOTPDevice
stores the time step of the last accepted code (``last_t``) and accepts only later ones, and
the lock makes two requests carrying the same code queue up, so the second one sees the new
``last_t`` and fails. A code is never accepted twice.

Recovery codes are hashed with plain SHA-256, for the reason mailaccess/passwords.py gives:
16 symbols drawn by ``secrets`` from a 31-symbol alphabet carry 79 bits, which no offline
attack can search, so a slow KDF would only slow down the owner (and a sign-in compares up to
ten of them).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from base64 import b32encode

import segno
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Mailbox, RecoveryCode
from mailaccess.passwords import ALPHABET

RECOVERY_CODE_COUNT = 10
RECOVERY_GROUPS = 4
RECOVERY_GROUP_LENGTH = 4


def confirmed_device(mailbox: Mailbox) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=mailbox, confirmed=True).order_by("pk").first()


def is_enabled(mailbox: Mailbox) -> bool:
    # django_otp ships no types: its managers are Any to mypy.
    return bool(TOTPDevice.objects.filter(user=mailbox, confirmed=True).exists())


def session_verified(request: HttpRequest) -> bool:
    """Whether this browser's session passed the second step (what the admin requires).

    django-otp's middleware decides it from the session: a confirmed device of this mailbox
    was recorded there at sign-in (``django_otp.login``).
    """
    is_verified = getattr(request.user, "is_verified", None)
    return bool(is_verified is not None and is_verified())


def pending_device(mailbox: Mailbox) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=mailbox, confirmed=False).order_by("-pk").first()


def start_setup(mailbox: Mailbox) -> TOTPDevice:
    """A fresh unconfirmed device with a new key; an abandoned earlier attempt is dropped."""
    TOTPDevice.objects.filter(user=mailbox, confirmed=False).delete()
    return TOTPDevice.objects.create(user=mailbox, name="authenticator", confirmed=False)


def manual_key(device: TOTPDevice) -> str:
    """The key as authenticator apps ask for it when typed in: base32, in groups of four."""
    key = b32encode(device.bin_key).decode("ascii").rstrip("=")
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


def qr_code_svg(device: TOTPDevice) -> SafeString:
    """The otpauth:// URL as an inline SVG QR code, drawn here: the key goes to no other site."""
    title = _("QR code for the authenticator app")
    svg = segno.make(device.config_url, micro=False).svg_inline(
        scale=4, title=title, svgclass="qr", lineclass=None
    )
    # segno escapes the title and emits no scripts or styles (the CSP would refuse both).
    return format_html("{}", SafeString(svg))


def normalize_code(code: str) -> str:
    """People type codes with spaces, dashes or capitals: none of them matter."""
    return "".join(ch for ch in code.lower() if ch.isalnum())


def looks_like_totp(code: str) -> bool:
    return code.isdigit() and len(code) in (6, 8)


def verify_totp(mailbox: Mailbox, code: str, *, confirmed: bool = True) -> TOTPDevice | None:
    """The device that accepts this code now, never a second time; throttled by django-otp."""
    code = normalize_code(code)
    if not looks_like_totp(code):
        return None
    with transaction.atomic():
        device = (
            TOTPDevice.objects.select_for_update()
            .filter(user=mailbox, confirmed=confirmed)
            .order_by("-pk")
            .first()
        )
        if device is not None and device.verify_token(code):
            return device
    return None


def hash_recovery_code(code: str) -> str:
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


def generate_recovery_code() -> str:
    return "-".join(
        "".join(secrets.choice(ALPHABET) for _ in range(RECOVERY_GROUP_LENGTH))
        for _ in range(RECOVERY_GROUPS)
    )


def replace_recovery_codes(mailbox: Mailbox) -> list[str]:
    """New codes, returned once for the page that shows them; the old ones stop working."""
    codes = [generate_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    RecoveryCode.objects.filter(mailbox=mailbox).delete()
    RecoveryCode.objects.bulk_create(
        RecoveryCode(mailbox=mailbox, code_hash=hash_recovery_code(code)) for code in codes
    )
    return codes


def use_recovery_code(mailbox: Mailbox, code: str) -> bool:
    """Accept an unused recovery code once, marking it used in the same transaction."""
    digest = hash_recovery_code(code)
    with transaction.atomic():
        for candidate in RecoveryCode.objects.unused().select_for_update().filter(mailbox=mailbox):
            if hmac.compare_digest(candidate.code_hash, digest):
                candidate.used_at = timezone.now()
                candidate.save(update_fields=["used_at"])
                return True
    return False
