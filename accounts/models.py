from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def normalize_address(address: str) -> str:
    """Mailbox addresses are compared case-insensitively: store them lower-case."""
    return address.strip().lower()


def validate_mail_domain(address: str) -> None:
    local, sep, domain = normalize_address(address).rpartition("@")
    if not sep or not local:
        raise ValidationError(
            _("Enter the full mailbox address, for example 12345@inbox.lv."), code="invalid"
        )
    if domain not in settings.MAIL_DOMAINS:
        raise ValidationError(
            _("%(domain)s is not a mail domain of this provider."),
            code="unknown_domain",
            params={"domain": domain},
        )


class Plan(models.TextChoices):
    FREE = "free", _("Inbox Mail")
    PLUS = "plus", _("Inbox Mail+")


class Status(models.TextChoices):
    ACTIVE = "active", _("active")
    INACTIVE = "inactive", _("inactive")


class MailboxManager(BaseUserManager["Mailbox"]):
    use_in_migrations = True

    def create_user(self, address: str, password: str | None = None, **extra: Any) -> Mailbox:
        address = normalize_address(address)
        validate_mail_domain(address)
        mailbox = self.model(address=address, **extra)
        mailbox.set_password(password)
        mailbox.save(using=self._db)
        return mailbox

    def create_superuser(self, address: str, password: str | None = None, **extra: Any) -> Mailbox:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(address, password, **extra)

    def get_by_natural_key(self, username: str | None) -> Mailbox:
        return self.get(address=normalize_address(username or ""))


class Mailbox(AbstractBaseUser, PermissionsMixin):
    """A mailbox of the provider; its address is the web login.

    Support staff sign in to the admin with a mailbox of their own (``is_staff``).
    """

    address = models.EmailField(
        _("mailbox address"), unique=True, validators=[validate_mail_domain]
    )
    plan = models.CharField(_("plan"), max_length=8, choices=Plan.choices, default=Plan.FREE)
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.ACTIVE
    )
    status_changed_at = models.DateTimeField(_("status changed"), null=True, blank=True)
    language = models.CharField(
        _("preferred language"),
        max_length=8,
        choices=settings.LANGUAGES,
        default=settings.LANGUAGE_CODE,
    )
    password_changed_at = models.DateTimeField(_("web password changed"), null=True, blank=True)
    is_staff = models.BooleanField(_("support staff"), default=False)
    is_active = models.BooleanField(_("may sign in"), default=True)
    date_joined = models.DateTimeField(_("created"), default=timezone.now)
    # Set when the mailbox moves to Inbox Mail+: until then the free sending limits still
    # apply (lifting them can take up to two working days); cleared when they are lifted.
    sending_limits_lift_at = models.DateTimeField(
        _("sending limits lifted by"), null=True, blank=True
    )

    objects = MailboxManager()

    USERNAME_FIELD = "address"
    EMAIL_FIELD = "address"
    REQUIRED_FIELDS = []

    class Meta:
        verbose_name = _("mailbox")
        verbose_name_plural = _("mailboxes")
        indexes = [
            models.Index(fields=["plan"], name="mailbox_plan_idx"),
            models.Index(fields=["status"], name="mailbox_status_idx"),
            models.Index(fields=["last_login"], name="mailbox_last_login_idx"),
            # The admin's search by address prefix uses mailbox_address_bytes_idx on
            # PostgreSQL, created by migration 0006 there only (see accounts/admin.py).
        ]

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        super().clean()
        self.address = normalize_address(self.address)

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def mail_host(self) -> str:
        """The server host mail programs of this mailbox connect to."""
        return settings.MAIL_DOMAINS.get(self.domain, f"mail.{self.domain}")

    @property
    def is_free_plan(self) -> bool:
        return self.plan == Plan.FREE

    def sending_plan(self, now: datetime) -> Plan:
        """The plan whose SMTP sending limits apply now: the free one until an upgrade's
        limits are lifted (the daemon honours the date even if the lifting job runs late)."""
        if self.sending_limits_lift_at is not None and self.sending_limits_lift_at > now:
            return Plan.FREE
        return Plan(self.plan)


class RecoveryCodeQuerySet(models.QuerySet["RecoveryCode"]):
    def unused(self) -> RecoveryCodeQuerySet:
        return self.filter(used_at__isnull=True)


class RecoveryCode(models.Model):
    """A one-time code that stands in for the authenticator app when the phone is lost.

    Only a hash is stored (django-otp's static tokens keep the text); see accounts/two_factor.py.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    used_at = models.DateTimeField(_("used"), null=True, blank=True)

    objects = RecoveryCodeQuerySet.as_manager()

    class Meta:
        verbose_name = _("recovery code")
        verbose_name_plural = _("recovery codes")

    def __str__(self) -> str:
        return f"{self.mailbox_id} {'used' if self.used_at else 'unused'}"
