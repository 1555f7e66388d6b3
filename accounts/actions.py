"""Changes to a mailbox's web account, audited. Access changes live in mailaccess.actions."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from accounts.models import Mailbox, RecoveryCode, Status
from audit import actions as audit
from audit.models import Actor, AuditAction
from mailaccess import actions as access_actions


@transaction.atomic
def change_web_password(mailbox: Mailbox, new_password: str, *, ip: str | None = None) -> None:
    mailbox.set_password(new_password)
    mailbox.password_changed_at = timezone.now()
    mailbox.save(update_fields=["password", "password_changed_at"])
    access_actions.record_web_password_change(mailbox, actor=Actor.user(mailbox), ip=ip)


@transaction.atomic
def record_sign_in(mailbox: Mailbox, *, ip: str | None = None) -> None:
    """A completed web sign-in: audited, and it makes an inactive mailbox active again.

    The provider marks mailboxes inactive after long web disuse, so using the web is the cure.
    """
    actor = Actor.user(mailbox)
    if mailbox.status == Status.INACTIVE:
        access_actions.change_status(mailbox, Status.ACTIVE, actor=actor)
    audit.record_account_event(mailbox, AuditAction.SIGNED_IN, actor=actor, ip=ip)


def check_code(mailbox: Mailbox, code: str, *, ip: str | None = None) -> TOTPDevice | bool:
    """A code from the authenticator app or an unused recovery code, each accepted once.

    Returns the TOTP device that accepted it, True for a recovery code, False for neither.
    """
    normalized = two_factor.normalize_code(code)
    if two_factor.looks_like_totp(normalized):
        return two_factor.verify_totp(mailbox, normalized) or False
    with transaction.atomic():
        if not two_factor.use_recovery_code(mailbox, normalized):
            return False
        audit.record_account_event(
            mailbox, AuditAction.RECOVERY_CODE_USED, actor=Actor.user(mailbox), ip=ip
        )
    return True


def confirm_two_factor(mailbox: Mailbox, code: str, *, ip: str | None = None) -> list[str] | None:
    """Switch two-factor sign-in on once the app shows a correct code.

    Returns the new recovery codes (to be shown once), or None when the code is wrong.
    """
    # Verified in its own transaction: a wrong code must still count against django-otp's
    # throttle rather than be rolled back.
    device = two_factor.verify_totp(mailbox, code, confirmed=False)
    if device is None:
        return None
    with transaction.atomic():
        TOTPDevice.objects.filter(user=mailbox).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = two_factor.replace_recovery_codes(mailbox)
        audit.record_account_event(
            mailbox, AuditAction.TWO_FACTOR_ENABLED, actor=Actor.user(mailbox), ip=ip
        )
    return codes


def disable_two_factor(mailbox: Mailbox, code: str, *, ip: str | None = None) -> bool:
    """Switch two-factor sign-in off: only with a fresh code (or an unused recovery code)."""
    if not check_code(mailbox, code, ip=ip):
        return False
    with transaction.atomic():
        TOTPDevice.objects.filter(user=mailbox).delete()
        RecoveryCode.objects.filter(mailbox=mailbox).delete()
        audit.record_account_event(
            mailbox, AuditAction.TWO_FACTOR_DISABLED, actor=Actor.user(mailbox), ip=ip
        )
    return True


@transaction.atomic
def renew_recovery_codes(mailbox: Mailbox, *, ip: str | None = None) -> list[str]:
    codes = two_factor.replace_recovery_codes(mailbox)
    audit.record_account_event(
        mailbox, AuditAction.RECOVERY_CODES_CREATED, actor=Actor.user(mailbox), ip=ip
    )
    return codes
