"""The audit trail: who changed what of a mailbox, when and why.

Both the web account (sign-in, web password, two-factor) and the mail access (switching on
and off, blocks, passwords, plans) write here, so the trail sits below both apps. The table
keeps the name it was created with (``mailaccess_auditevent``): moving the model to this app
moved no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Mailbox
from mailaccess.models import BlockReason


class ActorKind(models.TextChoices):
    USER = "user", _("the mailbox owner")
    SUPPORT = "support", _("support staff")
    SYSTEM = "system", _("the system")


@dataclass(frozen=True)
class Actor:
    """Who makes an access change: written to every audit row."""

    kind: str
    mailbox: Mailbox | None = None
    label: str = ""

    @classmethod
    def user(cls, mailbox: Mailbox) -> Actor:
        return cls(ActorKind.USER, mailbox, mailbox.address)

    @classmethod
    def support(cls, staff: Mailbox) -> Actor:
        return cls(ActorKind.SUPPORT, staff, staff.address)

    @classmethod
    def system(cls, label: str) -> Actor:
        return cls(ActorKind.SYSTEM, None, label)


class AuditAction(models.TextChoices):
    ACCESS_ENABLED = "access_enabled", _("access switched on")
    ACCESS_DISABLED = "access_disabled", _("access switched off")
    ACCESS_BLOCKED = "access_blocked", _("access blocked")
    ACCESS_UNBLOCKED = "access_unblocked", _("block lifted")
    PASSWORD_CREATED = "password_created", _("mail-program password created")
    PASSWORD_REVOKED = "password_revoked", _("mail-program password revoked")
    PLAN_CHANGED = "plan_changed", _("plan changed")
    SENDING_LIMITS_LIFTED = "sending_limits_lifted", _("free sending limits lifted early")
    STATUS_CHANGED = "status_changed", _("status changed")
    WEB_PASSWORD_CHANGED = "web_password_changed", _("web password changed")
    EXPIRY_WARNED = "expiry_warned", _("expiry warning sent")
    SIGNED_IN = "signed_in", _("signed in")
    TWO_FACTOR_ENABLED = "two_factor_enabled", _("two-factor sign-in switched on")
    TWO_FACTOR_DISABLED = "two_factor_disabled", _("two-factor sign-in switched off")
    RECOVERY_CODES_CREATED = "recovery_codes_created", _("new recovery codes created")
    RECOVERY_CODE_USED = "recovery_code_used", _("recovery code used")
    NOT_ME = "not_me", _("“This was not me”: password ended")


# What the owner sees under "Recent security events": who got in, and what changed access.
SECURITY_EVENTS = [
    AuditAction.SIGNED_IN,
    AuditAction.WEB_PASSWORD_CHANGED,
    AuditAction.TWO_FACTOR_ENABLED,
    AuditAction.TWO_FACTOR_DISABLED,
    AuditAction.RECOVERY_CODES_CREATED,
    AuditAction.RECOVERY_CODE_USED,
    AuditAction.ACCESS_ENABLED,
    AuditAction.ACCESS_DISABLED,
    AuditAction.ACCESS_BLOCKED,
    AuditAction.ACCESS_UNBLOCKED,
    AuditAction.PASSWORD_CREATED,
    AuditAction.PASSWORD_REVOKED,
    AuditAction.NOT_ME,
]


# A support action says why, in a sentence: long enough not to be a blank ("-", "ok"), short
# enough for the audit table. The staff member's name and address go with it.
JUSTIFICATION_MIN_LENGTH = 5
JUSTIFICATION_MAX_LENGTH = 500


def is_justification(text: str) -> bool:
    return JUSTIFICATION_MIN_LENGTH <= len(text.strip()) <= JUSTIFICATION_MAX_LENGTH


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("The audit log is append-only.")

    def security_events(self, mailbox: Mailbox) -> AuditEventQuerySet:
        return self.filter(mailbox=mailbox, action__in=SECURITY_EVENTS)


class AuditEvent(models.Model):
    """Append-only record of every access change and who made it.

    The address is copied so the trail stays readable after a mailbox is deleted.
    """

    mailbox = models.ForeignKey(
        Mailbox, on_delete=models.SET_NULL, null=True, related_name="audit_events"
    )
    address = models.CharField(_("mailbox address"), max_length=254)
    action = models.CharField(_("action"), max_length=24, choices=AuditAction.choices)
    reason = models.CharField(
        _("block reason"), max_length=16, choices=BlockReason.choices, blank=True
    )
    actor_kind = models.CharField(_("done by"), max_length=8, choices=ActorKind.choices)
    actor = models.ForeignKey(
        Mailbox, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(_("done by (name)"), max_length=254, blank=True)
    ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    # Why support acted, in the staff member's words (required for every support action).
    justification = models.CharField(
        _("justification"), max_length=JUSTIFICATION_MAX_LENGTH, blank=True
    )
    detail = models.JSONField(_("detail"), default=dict, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        # The table of the days when this model lived in mailaccess (see the migrations).
        db_table = "mailaccess_auditevent"
        verbose_name = _("audit event")
        verbose_name_plural = _("audit log")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["mailbox", "-created_at"], name="audit_mailbox_idx"),
            # The support dashboard counts blocks per reason over the last days.
            models.Index(fields=["action", "created_at"], name="audit_action_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.address} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise TypeError("The audit log is append-only.")
        super().save(*args, **kwargs)
