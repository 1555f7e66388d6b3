from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta
from django.db import models
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from accounts.models import Mailbox, Plan, Status


class Protocol(models.TextChoices):
    IMAP = "imap", "IMAP"
    POP3 = "pop3", "POP3"
    SMTP = "smtp", "SMTP"


class BlockReason(models.TextChoices):
    """Why access was switched off automatically (or by support).

    Each reason carries its user-facing explanation, its cure and the short text the mail
    servers send, here in one place, so a view, a notice and the passdb never disagree.
    """

    HOURLY_LIMIT = "hourly_limit", _("hourly sending limit exceeded")
    COMPROMISED = "compromised", _("password stolen, mailbox sent spam")
    INACTIVE = "inactive", _("mailbox became inactive")
    IDLE = "idle", _("not used for two months")
    FAULTY_PROGRAM = "faulty_program", _("too many connections from a mail program")
    SUPPORT = "support", _("switched off by customer support")

    @property
    def explanation(self) -> Promise:
        return _BLOCK_EXPLANATIONS[self]

    @property
    def cure(self) -> Promise:
        return _BLOCK_CURES[self]

    @property
    def panel_cure(self) -> Promise:
        """The cure as the panel says it, to an owner who has just signed in."""
        return _BLOCK_PANEL_CURES.get(self, _BLOCK_CURES[self])

    @property
    def server_message(self) -> Promise:
        """One line for IMAP, POP3 and SMTP replies: no markup, no line breaks."""
        return _BLOCK_SERVER_MESSAGES[self]


_BLOCK_EXPLANATIONS: dict[str, Promise] = {
    BlockReason.HOURLY_LIMIT: _(
        "A mail program tried to send a 16th message within one hour: that message was "
        "refused, and access was switched off. Free Inbox Mail mailboxes may send at most 15 "
        "messages an hour and 5 a minute through mail programs."
    ),
    BlockReason.COMPROMISED: _(
        "Your password appears to have been stolen: your mailbox was used to send spam, and "
        "many returned messages from “Mail Delivery System” came in."
    ),
    BlockReason.INACTIVE: _("Your mailbox became inactive."),
    BlockReason.IDLE: _("No mail program used POP3, IMAP or SMTP access for two months."),
    BlockReason.FAULTY_PROGRAM: _(
        "A mail program connected to your mailbox more often than allowed. It may be faulty, "
        "or set to check for new mail too often."
    ),
    BlockReason.SUPPORT: _("Customer support switched external access off."),
}

_BLOCK_CURES: dict[str, Promise] = {
    BlockReason.HOURLY_LIMIT: _(
        "You can switch access on again; you will get a new password. Inbox Mail+ has no "
        "such limit."
    ),
    BlockReason.COMPROMISED: _(
        "Change your web password first. Only then can you switch access on again."
    ),
    BlockReason.INACTIVE: _(
        "Signing in on the web makes your mailbox active again; then switch access on again."
    ),
    BlockReason.IDLE: _("Switch access on again when you need it; you will get a new password."),
    BlockReason.FAULTY_PROGRAM: _(
        "Set your mail program to check for new mail no more often than every five minutes, "
        "then switch access on again."
    ),
    BlockReason.SUPPORT: _("Contact customer support to find out why and what to do."),
}

# Signing in made an inactive mailbox active again (accounts.actions.record_sign_in): the
# panel must not tell its reader to sign in.
_BLOCK_PANEL_CURES: dict[str, Promise] = {
    BlockReason.INACTIVE: _(
        "Your mailbox became active again when you signed in. Switch access on again; you "
        "will get a new password."
    ),
}

# Mail programs show these as the server's reply. SMTP replies are ASCII, so Latvian letters
# lose their marks there: the translations avoid words that then read as other words (see
# locale/GLOSSARY.md).
_BLOCK_SERVER_MESSAGES: dict[str, Promise] = {
    BlockReason.HOURLY_LIMIT: _(
        "External access is off: a 16th message within one hour was refused (15 are allowed). "
        "Switch access on again in Settings."
    ),
    BlockReason.COMPROMISED: _(
        "External access is blocked: your password may be stolen. Change the web password, "
        "then switch access on in Settings."
    ),
    BlockReason.INACTIVE: _(
        "External access is blocked: the mailbox is inactive. Sign in on the web, then switch "
        "access on in Settings."
    ),
    BlockReason.IDLE: _(
        "External access is blocked: not used for two months. Switch it on again in Settings."
    ),
    BlockReason.FAULTY_PROGRAM: _(
        "External access is blocked: too many connections. Check mail at most every five "
        "minutes, then switch access on in Settings."
    ),
    BlockReason.SUPPORT: _(
        "External access is blocked by customer support. Please contact customer support."
    ),
}

ACCESS_OFF_SERVER_MESSAGE = _(
    "External POP3/IMAP and SMTP access is switched off. Switch it on in Settings."
)


# Access nobody used for two months is switched off (the provider's rule), counted from the
# last successful use or from switching on; the owner is warned a week before.
IDLE_EXPIRY = relativedelta(months=2)
EXPIRY_WARNING_BEFORE = timedelta(days=7)


class ExternalAccessQuerySet(models.QuerySet["ExternalAccess"]):
    def of_inactive_mailboxes(self) -> ExternalAccessQuerySet:
        return self.filter(enabled=True, mailbox__status=Status.INACTIVE)

    def idle_at(self, now: datetime) -> ExternalAccessQuerySet:
        """Access on and unused for two months: due to be blocked as idle."""
        return self.filter(enabled=True, last_activity_at__lte=now - IDLE_EXPIRY)

    def due_expiry_warning(self, now: datetime) -> ExternalAccessQuerySet:
        """Access that expires within a week and whose owner was not warned since its last use.

        A use after a warning moves ``last_activity_at`` past ``expiry_warned_at``, so the next
        idle stretch earns its own warning.
        """
        expiry_cutoff = now - IDLE_EXPIRY
        return self.filter(
            enabled=True,
            last_activity_at__lte=expiry_cutoff + EXPIRY_WARNING_BEFORE,
            last_activity_at__gt=expiry_cutoff,
        ).filter(
            models.Q(expiry_warned_at__isnull=True)
            | models.Q(expiry_warned_at__lt=models.F("last_activity_at"))
        )


class ExternalAccess(models.Model):
    """The state of the switch "Atļaut ārējo POP3\\IMAP un SMTP pieeju" for one mailbox.

    A mailbox without a row has access off. Written only by ``mailaccess.actions``.
    """

    mailbox = models.OneToOneField(
        Mailbox, on_delete=models.CASCADE, primary_key=True, related_name="external_access"
    )
    enabled = models.BooleanField(_("access on"), default=False)
    enabled_at = models.DateTimeField(_("switched on"), null=True, blank=True)
    disabled_at = models.DateTimeField(_("switched off"), null=True, blank=True)
    block_reason = models.CharField(
        _("block reason"), max_length=16, choices=BlockReason.choices, blank=True
    )
    blocked_at = models.DateTimeField(_("blocked"), null=True, blank=True)
    requires_password_change = models.BooleanField(
        _("web password change required"),
        default=False,
        help_text=_("Set when the password was stolen: access stays off until it is changed."),
    )
    # Last successful use per protocol, reported by the mail servers.
    imap_last_used_at = models.DateTimeField(_("IMAP last used"), null=True, blank=True)
    imap_last_ip = models.GenericIPAddressField(_("IMAP last client IP"), null=True, blank=True)
    pop3_last_used_at = models.DateTimeField(_("POP3 last used"), null=True, blank=True)
    pop3_last_ip = models.GenericIPAddressField(_("POP3 last client IP"), null=True, blank=True)
    smtp_last_used_at = models.DateTimeField(_("SMTP last used"), null=True, blank=True)
    smtp_last_ip = models.GenericIPAddressField(_("SMTP last client IP"), null=True, blank=True)
    # Switching on or any use: what the two-month expiry counts from.
    last_activity_at = models.DateTimeField(_("last activity"), null=True, blank=True)
    expiry_warned_at = models.DateTimeField(_("expiry warning sent"), null=True, blank=True)

    objects = ExternalAccessQuerySet.as_manager()

    class Meta:
        verbose_name = _("external access")
        verbose_name_plural = _("external access")
        indexes = [
            models.Index(
                fields=["last_activity_at"],
                name="access_enabled_activity_idx",
                condition=models.Q(enabled=True),
            ),
            models.Index(fields=["block_reason", "blocked_at"], name="access_block_idx"),
            # The admin's "last use" filter (idle for months, never used).
            models.Index(fields=["last_activity_at"], name="access_last_activity_idx"),
        ]
        # What the "support" group may do to a mailbox's access (see mailaccess/admin_views.py).
        permissions = [
            ("block_access", _("Can block external access")),
            ("unblock_access", _("Can lift a block")),
            ("disable_access", _("Can end all mail-program passwords")),
            ("change_plan", _("Can change a mailbox's plan")),
            ("view_support_dashboard", _("Can view the support dashboard")),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id}: {'on' if self.enabled else 'off'}"

    @property
    def block(self) -> BlockReason | None:
        return BlockReason(self.block_reason) if self.block_reason else None

    @property
    def expires_at(self) -> datetime | None:
        """When the idle-expiry job switches this access off unless a mail program uses it."""
        if not self.enabled or self.last_activity_at is None:
            return None
        return self.last_activity_at + IDLE_EXPIRY

    def last_uses(self) -> list[dict[str, Any]]:
        """The last use of each protocol, most recent first, for the panel."""
        uses = []
        for protocol in Protocol:
            when = getattr(self, f"{protocol.value}_last_used_at")
            if when is not None:
                ip = getattr(self, f"{protocol.value}_last_ip")
                uses.append({"protocol": protocol.label, "when": when, "ip": ip})
        return sorted(uses, key=lambda use: use["when"], reverse=True)


class AppPasswordQuerySet(models.QuerySet["AppPassword"]):
    def live(self) -> AppPasswordQuerySet:
        return self.filter(revoked_at__isnull=True)


class AppPassword(models.Model):
    """A mail-program password. Only its hashes are stored; the text is shown once."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="app_passwords")
    label = models.CharField(_("label"), max_length=64, blank=True)
    allow_imap = models.BooleanField("IMAP", default=True)
    allow_pop3 = models.BooleanField("POP3", default=True)
    allow_smtp = models.BooleanField("SMTP", default=True)
    # The fence: normalized CIDR ranges it may be used from (mailaccess/fences.py); empty
    # means anywhere. Checked by the auth policy for IMAP, POP3 and SMTP AUTH.
    allowed_networks = models.JSONField(_("may be used from"), default=list, blank=True)
    # Dovecot verifies this one ({SSHA512}); see mailaccess/passwords.py.
    password_hash = models.CharField(max_length=128)
    # Hex SHA-256, equal to Dovecot's %{sha256:password}: picks the row among several.
    lookup_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    last_used_protocol = models.CharField(
        _("last used by"), max_length=8, choices=Protocol.choices, blank=True
    )
    last_used_ip = models.GenericIPAddressField(_("last client IP"), null=True, blank=True)
    last_used_client = models.CharField(_("last mail program"), max_length=128, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    objects = AppPasswordQuerySet.as_manager()

    class Meta:
        verbose_name = _("app password")
        verbose_name_plural = _("app passwords")
        indexes = [
            models.Index(
                fields=["mailbox"],
                name="apppassword_live_idx",
                condition=models.Q(revoked_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return self.label or str(_("Mail programs"))

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None

    def protocols(self) -> list[str]:
        return [protocol.label for protocol in Protocol if getattr(self, f"allow_{protocol.value}")]


class NoticeKind(models.TextChoices):
    BLOCKED = "blocked", _("access blocked")
    EXPIRY_WARNING = "expiry_warning", _("access expires soon")
    NEW_PROGRAM = "new_program", _("a new mail program signed in")


class Notice(models.Model):
    """A message to the mailbox owner: shown in the panel until read, and sent by e-mail.

    ``key`` makes each notice exactly-once: a retried job or task that tries to create the
    same notice again hits the unique constraint instead of sending twice.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(_("kind"), max_length=16, choices=NoticeKind.choices)
    reason = models.CharField(
        _("block reason"), max_length=16, choices=BlockReason.choices, blank=True
    )
    key = models.CharField(max_length=96, unique=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    emailed_at = models.DateTimeField(_("e-mailed"), null=True, blank=True)
    read_at = models.DateTimeField(_("read"), null=True, blank=True)

    class Meta:
        verbose_name = _("notice")
        verbose_name_plural = _("notices")
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["mailbox", "-created_at"],
                name="notice_unread_idx",
                condition=models.Q(read_at__isnull=True),
            ),
            # The support dashboard counts notices of the last days.
            models.Index(fields=["created_at"], name="notice_created_idx"),
            # The sweep that re-sends notices whose e-mail has not gone out yet.
            models.Index(
                fields=["created_at"],
                name="notice_unsent_idx",
                condition=models.Q(emailed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id} {self.kind} {self.reason}"

    @property
    def block(self) -> BlockReason | None:
        return BlockReason(self.reason) if self.reason else None


class SendingLimit(models.Model):
    """SMTP sending limits of a plan; support can change them. Empty means no limit."""

    plan = models.CharField(_("plan"), max_length=8, choices=Plan.choices, unique=True)
    per_minute = models.PositiveIntegerField(_("messages a minute"), null=True, blank=True)
    per_hour = models.PositiveIntegerField(_("messages an hour"), null=True, blank=True)

    class Meta:
        verbose_name = _("sending limit")
        verbose_name_plural = _("sending limits")

    def __str__(self) -> str:
        return str(self.get_plan_display())


class ServerMessage(models.Model):
    """A block reason's server message, translated, for the Dovecot passdb view to read.

    SQL cannot call gettext, so the texts of ``BlockReason.server_message`` and
    ``ACCESS_OFF_SERVER_MESSAGE`` are copied here in every language of ``settings.LANGUAGES``
    (see ``mailaccess/passdb.py``): on every ``migrate`` and by ``manage.py
    sync_server_messages`` after the catalogues change. ``code`` is a block reason, or
    ``access_off`` for a mailbox that simply has access off.
    """

    language = models.CharField(max_length=8)
    code = models.CharField(max_length=16)
    text = models.CharField(max_length=255)

    class Meta:
        verbose_name = _("server message")
        verbose_name_plural = _("server messages")
        constraints = [
            models.UniqueConstraint(fields=["language", "code"], name="servermessage_unique")
        ]

    def __str__(self) -> str:
        return f"{self.language} {self.code}"


class DovecotPassdb(models.Model):
    """What Dovecot's SQL passdb reads: one row per (app password, service) that may answer.

    The view ``mailaccess_dovecot_passdb`` stays the definition of which rows exist (migration
    0012); this table holds its rows, written by the access actions in the same transaction
    as the change (``mailaccess/passdb.py: refresh``), so that a login is one lookup in one
    covering unique index on (lookup_key, service) instead of a view the planner unfolds on
    every login (issue 23). ``expires_at`` keeps the view's only clock: a refused mailbox's
    most recently ended password answers with the reason for 30 days after it ended. Written
    on PostgreSQL only, where Dovecot reads it; empty on SQLite.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    user = models.CharField(max_length=254)
    lookup_key = models.CharField(max_length=64)
    service = models.CharField(max_length=8)
    password = models.CharField(max_length=128)
    # NULL, not "": Dovecot takes a field that is there, even empty, as set (nologin).
    nologin = models.CharField(max_length=1, null=True)  # noqa: DJ001
    reason = models.CharField(max_length=255, null=True)  # noqa: DJ001
    # The AppPassword's id, given back to the auth policy; no foreign key: the mailbox's
    # cascade removes the row first, and a second index would only slow every write.
    app_password = models.BigIntegerField()
    expires_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "mailaccess_passdb"
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.user} {self.service}"


class ActivityKind(models.TextChoices):
    SIGN_IN = "sign_in", _("signed in")
    REFUSED = "refused", _("refused")


class RefusalReason(models.TextChoices):
    """Why the auth policy refused a login, as the owner reads it in the activity list."""

    TOO_OFTEN = "too_often", _("checked mail more often than every five minutes")
    GUESSING = "guessing", _("locked after too many wrong passwords")
    WRONG_PROTOCOL = "wrong_protocol", _("this password is not for this protocol")
    ACCESS_OFF = "access_off", _("external access is off")
    BLOCKED = "blocked", _("external access is blocked")
    FENCED = "fenced", _("this password may not be used from this network")


class PasswordActivity(models.Model):
    """Sign-ins and refusals of a mailbox's passwords: a bounded history (``activity.py``).

    Written only by the compaction job from what the auth policy buffered in Redis, never
    per login: repeated events of one program (password, protocol, network, program and,
    for a refusal, its reason) are folded into one row with a count and a time span.
    ``app_password`` is empty for a refusal that came before any password was recognised
    (the guessing lock).
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="password_activity")
    app_password = models.ForeignKey(
        AppPassword, on_delete=models.CASCADE, null=True, blank=True, related_name="activity"
    )
    kind = models.CharField(_("kind"), max_length=8, choices=ActivityKind.choices)
    reason = models.CharField(
        _("refusal reason"), max_length=16, choices=RefusalReason.choices, blank=True
    )
    protocol = models.CharField(_("protocol"), max_length=8, choices=Protocol.choices)
    # The network counted (an IPv4 address or an IPv6 /64) and the last address as sent.
    network = models.CharField(_("network"), max_length=64, blank=True)
    ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    client = models.CharField(_("mail program"), max_length=128, blank=True)
    first_at = models.DateTimeField(_("first"))
    last_at = models.DateTimeField(_("last"))
    count = models.PositiveIntegerField(_("times"), default=1)
    # TOO_OFTEN and GUESSING: when the program may try again.
    retry_at = models.DateTimeField(_("may try again after"), null=True, blank=True)

    class Meta:
        verbose_name = _("mail-program activity")
        verbose_name_plural = _("mail-program activity")
        ordering = ["-last_at", "-id"]
        indexes = [
            models.Index(fields=["mailbox", "-last_at"], name="activity_mailbox_idx"),
            models.Index(fields=["last_at"], name="activity_last_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id} {self.kind} {self.protocol} {self.ip}"

    @property
    def refusal(self) -> RefusalReason | None:
        return RefusalReason(self.reason) if self.reason else None


class NewProgramAlert(models.Model):
    """ "A new mail program signed in": what its notice tells, and whether "This was not me"
    was acted on (``used_at``: the link works once)."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    app_password = models.ForeignKey(AppPassword, on_delete=models.CASCADE, related_name="+")
    notice = models.OneToOneField(Notice, on_delete=models.CASCADE, related_name="new_program")
    signed_in_at = models.DateTimeField(_("signed in"))
    protocol = models.CharField(_("protocol"), max_length=8, choices=Protocol.choices)
    ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    client = models.CharField(_("mail program"), max_length=128, blank=True)
    used_at = models.DateTimeField(_("“This was not me” used"), null=True, blank=True)

    class Meta:
        verbose_name = _("new mail program alert")
        verbose_name_plural = _("new mail program alerts")
        indexes = [
            models.Index(fields=["app_password", "signed_in_at"], name="alert_password_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id} {self.app_password_id} {self.signed_in_at:%Y-%m-%d %H:%M}"
