"""Every change of a mailbox's external access, in one place.

Views, the admin, Celery tasks, the auth-policy endpoint and the SMTP policy daemon all call
these functions; nothing else writes ExternalAccess, AppPassword, AuditEvent or Notice. Each
function is atomic, locks the mailbox's access row (so a double-submitted form or two policy
processes cannot both act), writes an audit row naming who acted, and sends its side effects
only once the transaction has committed.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, F, OuterRef, Q, QuerySet, Subquery, Value, When
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy

from accounts.models import Mailbox, Plan, Status
from audit import actions as audit
from audit.models import Actor, AuditAction, AuditEvent
from common import metrics
from common.bulk import insert_rows
from common.logging import Event
from mailaccess import fences, passdb, passwords
from mailaccess.models import (
    IDLE_EXPIRY,
    AppPassword,
    BlockReason,
    ExternalAccess,
    Notice,
    NoticeKind,
    Protocol,
)
from mailaccess.sending_limits import in_good_standing, limits_lift_at

logger = logging.getLogger("mailaccess.actions")

# The hourly-limit blocks that count towards "compromised" (``block_for_hourly_limit``).
HOURLY_BLOCKS_WINDOW = timedelta(hours=24)

# Functions called after commit with a mailbox id whenever its access state changes (the
# auth-policy cache registers one). A list, not an import, so this module stays the bottom
# of the dependency graph.
access_changed_hooks: list[Callable[[Sequence[int]], None]] = []
# Called after commit with the ids of mailboxes whose open IMAP and POP3 sessions must end
# (blocked, switched off, a password ended): mailaccess.sessions registers one.
sessions_ended_hooks: list[Callable[[Sequence[int]], None]] = []
# Called after commit with the ids of the notices one transaction created (the notices
# mailer): a list, so a job's batch of a thousand blocks queues a few tasks, not a thousand.
notice_created_hooks: list[Callable[[list[int]], None]] = []


class AccessError(Exception):
    """A change the rules do not allow; ``message`` is for the user."""

    def __init__(self, message: Any, code: str) -> None:
        super().__init__(str(message))
        self.message = message
        self.code = code


def _locked_access(mailbox: Mailbox) -> ExternalAccess:
    ExternalAccess.objects.get_or_create(mailbox=mailbox)
    return ExternalAccess.objects.select_for_update().get(mailbox=mailbox)


def _access_changed(mailbox_id: int) -> None:
    _access_changed_many([mailbox_id])


def language_changed(
    sender: Any, instance: Mailbox, update_fields: Any = None, **kwargs: Any
) -> None:
    """post_save receiver of Mailbox: the mail servers speak the mailbox's language (the
    passdb table's refused rows carry their reason in it, Dovecot's auth cache holds those
    replies, the auth policy's cached state names it), so a new language is made known to
    them exactly as an access change is."""
    if kwargs.get("created"):
        return  # nothing of a new mailbox is cached anywhere yet
    if update_fields is None or "language" in update_fields:
        _access_changed(instance.pk)


def _end_sessions(mailbox_ids: Sequence[int]) -> None:
    """After commit: end the open sessions, which logged in before the change (sessions.py)."""

    def run() -> None:
        for hook in sessions_ended_hooks:
            hook(mailbox_ids)

    transaction.on_commit(run)


def _revoke_live_passwords(mailbox: Mailbox, now: datetime) -> int:
    return AppPassword.objects.live().filter(mailbox=mailbox).update(revoked_at=now)


def _create_password(
    mailbox: Mailbox,
    *,
    label: str = "",
    protocols: set[str] | None = None,
    networks: tuple[str, ...] = (),
) -> tuple[AppPassword, str]:
    protocols = {p.value for p in Protocol} if protocols is None else protocols
    # The auth policy tells a mailbox's live passwords apart by a short prefix of their
    # lookup key (passwords.policy_key): draw again in the rare case it is taken.
    taken = {
        key[: passwords.POLICY_KEY_HEX]
        for key in AppPassword.objects.live()
        .filter(mailbox=mailbox)
        .values_list("lookup_key", flat=True)
    }
    text = passwords.generate()
    while passwords.policy_key(text) in taken:
        text = passwords.generate()
    app_password = AppPassword.objects.create(
        mailbox=mailbox,
        label=label,
        allow_imap=Protocol.IMAP in protocols,
        allow_pop3=Protocol.POP3 in protocols,
        allow_smtp=Protocol.SMTP in protocols,
        allowed_networks=list(networks),
        password_hash=passwords.dovecot_hash(text),
        lookup_key=passwords.lookup_key(text),
    )
    return app_password, text


@transaction.atomic
def enable_access(mailbox: Mailbox, *, actor: Actor, ip: str | None = None) -> str | None:
    """Switch access on and return the new password's text, to be shown once.

    Returns None when access was already on (a double submit): no second password.
    """
    access = _locked_access(mailbox)
    if access.enabled:
        return None
    if access.requires_password_change:
        raise AccessError(
            _("Change your web password first: your password may have been stolen."),
            code="password_change_required",
        )
    now = timezone.now()
    app_password, text = _create_password(mailbox)
    access.enabled = True
    access.enabled_at = now
    access.last_activity_at = now
    access.block_reason = ""
    access.blocked_at = None
    access.expiry_warned_at = None
    access.save()
    # A notice of a block is settled once access is on again: the panel stops showing it.
    Notice.objects.filter(mailbox=mailbox, kind=NoticeKind.BLOCKED, read_at__isnull=True).update(
        read_at=now
    )
    audit.record(mailbox, AuditAction.ACCESS_ENABLED, actor, ip=ip)
    audit.record(
        mailbox,
        AuditAction.PASSWORD_CREATED,
        actor,
        ip=ip,
        detail={"app_password": app_password.pk},
    )
    _access_changed(mailbox.pk)
    return text


def fence_error_message(error: fences.FenceError) -> str:
    """What the owner is told about a fence that is not a list of networks."""
    if not error.value:
        return ngettext_lazy(
            "List at most %(count)d network.",
            "List at most %(count)d networks.",
            fences.MAX_NETWORKS,
        ) % {"count": fences.MAX_NETWORKS}
    return _(
        "“%(value)s” is not an IP address or network range. Write them like 192.0.2.10, "
        "198.51.100.0/24 or 2001:db8::/64."
    ) % {"value": error.value}


@transaction.atomic
def create_app_password(
    mailbox: Mailbox,
    *,
    label: str,
    protocols: set[str],
    networks: Sequence[str] = (),
    actor: Actor,
    ip: str | None = None,
) -> tuple[AppPassword, str]:
    """Another password while access is on (one per device); returns it and its text, shown once.

    Up to ``APP_PASSWORDS_PER_MAILBOX`` live ones, the first included. Switching access off
    or a block still ends them all. ``networks``: the fence (addresses or CIDR ranges it may
    be used from; empty, anywhere), stored normalized.
    """
    try:
        fence = fences.parse_networks(networks)
    except fences.FenceError as error:
        raise AccessError(fence_error_message(error), code="networks") from None
    access = _locked_access(mailbox)
    if not access.enabled:
        raise AccessError(
            _("Switch external access on first: passwords work only while it is on."),
            code="access_off",
        )
    label = label.strip()
    if not label:
        raise AccessError(_("Give the password a name, e.g. the device's."), code="label")
    protocols = protocols & {p.value for p in Protocol}
    if not protocols:
        raise AccessError(_("Choose at least one protocol."), code="protocols")
    cap = settings.APP_PASSWORDS_PER_MAILBOX
    if AppPassword.objects.live().filter(mailbox=mailbox).count() >= cap:
        raise AccessError(
            ngettext_lazy(
                "You already have %(cap)d mail-program password, the most a mailbox may have. "
                "Revoke one you no longer use, then add the new one.",
                "You already have %(cap)d mail-program passwords, the most a mailbox may have. "
                "Revoke one you no longer use, then add the new one.",
                "cap",
            )
            % {"cap": cap},
            code="cap",
        )
    app_password, text = _create_password(mailbox, label=label, protocols=protocols, networks=fence)
    audit.record(
        mailbox,
        AuditAction.PASSWORD_CREATED,
        actor,
        ip=ip,
        detail={
            "app_password": app_password.pk,
            "label": label,
            "protocols": sorted(protocols),
            # Only a fenced password says so: the record of an unfenced one is as before.
            **({"networks": list(fence)} if fence else {}),
        },
    )
    _access_changed(mailbox.pk)
    return app_password, text


@transaction.atomic
def revoke_app_password(
    mailbox: Mailbox, app_password_id: int, *, actor: Actor, ip: str | None = None
) -> bool:
    """End one password; the mailbox's others keep working. False if it was not live."""
    _locked_access(mailbox)
    app_password = (
        AppPassword.objects.live()
        .filter(mailbox=mailbox, pk=app_password_id)
        .only("pk", "label")
        .first()
    )
    if app_password is None:
        return False
    AppPassword.objects.filter(pk=app_password.pk).update(revoked_at=timezone.now())
    audit.record(
        mailbox,
        AuditAction.PASSWORD_REVOKED,
        actor,
        ip=ip,
        detail={"app_password": app_password.pk, "label": app_password.label},
    )
    _access_changed(mailbox.pk)
    _end_sessions([mailbox.pk])
    return True


@transaction.atomic
def disable_access(
    mailbox: Mailbox, *, actor: Actor, ip: str | None = None, justification: str = ""
) -> bool:
    """Switch access off; every app password stops working at once."""
    access = _locked_access(mailbox)
    now = timezone.now()
    revoked = _revoke_live_passwords(mailbox, now)
    if not access.enabled and not revoked:
        return False
    access.enabled = False
    access.disabled_at = now
    access.save()
    audit.record(
        mailbox,
        AuditAction.ACCESS_DISABLED,
        actor,
        ip=ip,
        justification=justification,
        detail={"revoked": revoked},
    )
    _access_changed(mailbox.pk)
    _end_sessions([mailbox.pk])
    return True


@transaction.atomic
def block_access(
    mailbox: Mailbox,
    reason: BlockReason,
    *,
    actor: Actor,
    detail: dict[str, Any] | None = None,
    ip: str | None = None,
    justification: str = "",
) -> Notice | None:
    """Switch access off for a reason, end every password and notify the owner once.

    Returns the notice, or None when the mailbox already stood blocked for this reason.
    """
    access = _locked_access(mailbox)
    if not access.enabled and access.block_reason == reason:
        return None
    now = timezone.now()
    revoked = _revoke_live_passwords(mailbox, now)
    if access.enabled:
        access.disabled_at = now
    access.enabled = False
    access.block_reason = reason
    access.blocked_at = now
    if reason == BlockReason.COMPROMISED:
        access.requires_password_change = True
    access.save()
    event = audit.record(
        mailbox,
        AuditAction.ACCESS_BLOCKED,
        actor,
        reason=reason,
        ip=ip,
        justification=justification,
        detail={"revoked": revoked, **(detail or {})},
    )
    notice = Notice.objects.create(
        mailbox=mailbox, kind=NoticeKind.BLOCKED, reason=reason, key=f"block:{event.pk}"
    )
    _access_changed(mailbox.pk)
    _end_sessions([mailbox.pk])
    _notices_created([notice.pk])
    transaction.on_commit(lambda: metrics.BLOCKS.labels(reason=str(reason)).inc())
    return notice


@transaction.atomic
def block_for_hourly_limit(
    mailbox: Mailbox,
    *,
    sent_last_hour: int,
    actor: Actor,
    blocks_before_compromised: int | None = None,
) -> BlockReason:
    """Block a mailbox that went over its hourly sending limit; the n-th such block within
    a day (``SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED``, 3) blocks it as compromised.

    A mail program that keeps hitting the limit after every unblock is rarely its owner's:
    a password used for spam looks so. The audit log is the record of earlier blocks, so the
    count survives a Redis restart; it is read under the access row's lock, so two policy
    processes blocking at once count each other.
    """
    repeats = blocks_before_compromised or settings.SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED
    _locked_access(mailbox)
    earlier = AuditEvent.objects.filter(
        mailbox=mailbox,
        action=AuditAction.ACCESS_BLOCKED,
        reason=BlockReason.HOURLY_LIMIT,
        created_at__gte=timezone.now() - HOURLY_BLOCKS_WINDOW,
    ).count()
    reason = BlockReason.COMPROMISED if earlier + 1 >= repeats else BlockReason.HOURLY_LIMIT
    block_access(
        mailbox,
        reason,
        actor=actor,
        detail={"sent_last_hour": sent_last_hour, "hourly_blocks_24h": earlier + 1},
    )
    return reason


def _notices_created(notice_ids: list[int]) -> None:
    def run() -> None:
        for hook in notice_created_hooks:
            hook(notice_ids)

    transaction.on_commit(run)


@transaction.atomic
def unblock_access(
    mailbox: Mailbox, *, actor: Actor, ip: str | None = None, justification: str = ""
) -> bool:
    """Lift a block (support). Access stays off: the owner switches it on for a new password."""
    access = _locked_access(mailbox)
    if not access.block_reason and not access.requires_password_change:
        return False
    previous = access.block_reason
    access.block_reason = ""
    access.blocked_at = None
    access.requires_password_change = False
    access.save()
    audit.record(
        mailbox,
        AuditAction.ACCESS_UNBLOCKED,
        actor,
        reason=previous,
        ip=ip,
        justification=justification,
    )
    _access_changed(mailbox.pk)
    return True


@transaction.atomic
def record_web_password_change(mailbox: Mailbox, *, actor: Actor, ip: str | None = None) -> None:
    """A new web password cures "compromised": access may be switched on again."""
    access = _locked_access(mailbox)
    if access.requires_password_change:
        access.requires_password_change = False
        access.save(update_fields=["requires_password_change"])
        _access_changed(mailbox.pk)
    audit.record(mailbox, AuditAction.WEB_PASSWORD_CHANGED, actor, ip=ip)


@transaction.atomic
def change_plan(
    mailbox: Mailbox,
    plan: Plan,
    *,
    actor: Actor,
    ip: str | None = None,
    justification: str = "",
) -> bool:
    locked = Mailbox.objects.select_for_update().get(pk=mailbox.pk)
    if locked.plan == plan:
        return False
    now = timezone.now()
    previous = locked.plan
    locked.plan = plan
    # An upgrade lifts the free limits at once for a mailbox in good standing, and within
    # two working days for the others (support may lift them sooner); a downgrade applies
    # the free limits at once.
    lift_at = None
    if plan == Plan.PLUS and not in_good_standing(locked, now):
        lift_at = limits_lift_at(now)
    locked.sending_limits_lift_at = lift_at
    locked.save(update_fields=["plan", "sending_limits_lift_at"])
    mailbox.plan, mailbox.sending_limits_lift_at = plan, lift_at
    detail = {"from": previous, "to": plan}
    if lift_at is not None:
        detail["sending_limits_lift_at"] = lift_at.isoformat()
    audit.record(
        mailbox,
        AuditAction.PLAN_CHANGED,
        actor,
        ip=ip,
        justification=justification,
        detail=detail,
    )
    _access_changed(mailbox.pk)
    return True


@transaction.atomic
def lift_sending_limits(
    mailbox: Mailbox, *, actor: Actor, ip: str | None = None, justification: str = ""
) -> bool:
    """Support lifts a Mail+ upgrade's free limits before its date; False if none are pending."""
    locked = Mailbox.objects.select_for_update().get(pk=mailbox.pk)
    pending = locked.sending_limits_lift_at
    if pending is None or pending <= timezone.now():
        return False
    locked.sending_limits_lift_at = None
    locked.save(update_fields=["sending_limits_lift_at"])
    mailbox.sending_limits_lift_at = None
    audit.record(
        mailbox,
        AuditAction.SENDING_LIMITS_LIFTED,
        actor,
        ip=ip,
        justification=justification,
        detail={"was_due": pending.isoformat()},
    )
    _access_changed(mailbox.pk)
    return True


@transaction.atomic
def change_status(mailbox: Mailbox, status: Status, *, actor: Actor) -> bool:
    locked = Mailbox.objects.select_for_update().get(pk=mailbox.pk)
    if locked.status == status:
        return False
    now = timezone.now()
    locked.status = status
    locked.status_changed_at = now
    locked.save(update_fields=["status", "status_changed_at"])
    mailbox.status, mailbox.status_changed_at = status, now
    audit.record(mailbox, AuditAction.STATUS_CHANGED, actor, detail={"to": status})
    _access_changed(mailbox.pk)
    return True


@dataclass(frozen=True)
class Use:
    """One successful login of a mail program, as the activity stream carries it."""

    mailbox_id: int
    protocol: Protocol
    ip: str | None
    when: datetime
    app_password_id: int | None = None
    client: str = ""


def record_use(
    mailbox_id: int,
    protocol: Protocol,
    ip: str | None,
    *,
    when: datetime | None = None,
    app_password_id: int | None = None,
    client: str = "",
) -> None:
    """One login's use (``record_uses``)."""
    record_uses([Use(mailbox_id, protocol, ip, when or timezone.now(), app_password_id, client)])


@transaction.atomic
def record_uses(uses: Sequence[Use]) -> None:
    """Mail programs logged in successfully: what the panel and the expiry jobs read.

    Not audited (a use is not a change). The auth policy never calls this on a login: it
    buffers the sign-in in the activity stream, and the ``compact_activity`` job applies a
    page of them here, so a provider's periodic checks do not cost PostgreSQL a write each.
    Pages may arrive out of order (a page retried after a crash), so only a use newer than
    the stored one moves a field.

    On PostgreSQL a page is four UPDATEs (one a protocol, one for the passwords) with the
    page's values as arrays: ``bulk_update``'s CASE expressions cost the job 30 ms of Python
    per use at a page of a thousand (benchmarks/README.md, issue 23). Elsewhere (SQLite, the
    embedded default) one UPDATE a use.
    """
    if not uses:
        return
    latest: dict[tuple[int, Protocol], Use] = {}
    by_password: dict[int, Use] = {}
    for use in uses:
        key = (use.mailbox_id, use.protocol)
        if key not in latest or latest[key].when < use.when:
            latest[key] = use
        if use.app_password_id is not None:
            known = by_password.get(use.app_password_id)
            if known is None or known.when < use.when:
                by_password[use.app_password_id] = use
    if connection.vendor == "postgresql":
        _record_uses_in_arrays(latest, by_password)
        return
    for (mailbox_id, protocol), use in latest.items():
        used_at = f"{protocol.value}_last_used_at"
        ExternalAccess.objects.filter(
            Q(**{f"{used_at}__isnull": True}) | Q(**{f"{used_at}__lt": use.when}),
            mailbox_id=mailbox_id,
        ).update(**{used_at: use.when, f"{protocol.value}_last_ip": use.ip})
        ExternalAccess.objects.filter(
            Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=use.when),
            mailbox_id=mailbox_id,
        ).update(last_activity_at=use.when)
    for password_id, use in by_password.items():
        # A password id from another mailbox's event changes nothing.
        AppPassword.objects.filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=use.when),
            pk=password_id,
            mailbox_id=use.mailbox_id,
        ).update(
            last_used_at=use.when,
            last_used_protocol=use.protocol,
            last_used_ip=use.ip,
            last_used_client=use.client,
        )


def _record_uses_in_arrays(
    latest: dict[tuple[int, Protocol], Use], by_password: dict[int, Use]
) -> None:
    """``record_uses`` on PostgreSQL: the newest use wins in SQL, one statement a protocol."""
    with connection.cursor() as cursor:
        for protocol in Protocol:
            page = [use for (_id, used), use in latest.items() if used == protocol]
            if not page:
                continue
            # Column names from the Protocol enum only; every value goes as a parameter.
            used_at, last_ip = f"{protocol.value}_last_used_at", f"{protocol.value}_last_ip"
            cursor.execute(
                f"UPDATE mailaccess_externalaccess AS a SET "  # noqa: S608
                f"{used_at} = CASE WHEN a.{used_at} IS NULL OR a.{used_at} < u.at "
                f"THEN u.at ELSE a.{used_at} END, "
                f"{last_ip} = CASE WHEN a.{used_at} IS NULL OR a.{used_at} < u.at "
                f"THEN u.ip::inet ELSE a.{last_ip} END, "
                "last_activity_at = GREATEST(a.last_activity_at, u.at) "
                "FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[]) AS u(mailbox_id, at, ip) "
                "WHERE a.mailbox_id = u.mailbox_id",
                [
                    [use.mailbox_id for use in page],
                    [use.when for use in page],
                    [use.ip for use in page],
                ],
            )
        if by_password:
            uses = list(by_password.items())
            cursor.execute(
                "UPDATE mailaccess_apppassword AS p SET last_used_at = u.at, "
                "last_used_protocol = u.protocol, last_used_ip = u.ip::inet, "
                "last_used_client = u.client "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[], %s::text[], "
                "%s::text[], %s::text[]) AS u(id, mailbox_id, at, protocol, ip, client) "
                # A password id from another mailbox's event changes nothing.
                "WHERE p.id = u.id AND p.mailbox_id = u.mailbox_id "
                "AND (p.last_used_at IS NULL OR p.last_used_at < u.at)",
                [
                    [password_id for password_id, _use in uses],
                    [use.mailbox_id for _id, use in uses],
                    [use.when for _id, use in uses],
                    [use.protocol.value for _id, use in uses],
                    [use.ip for _id, use in uses],
                    [use.client for _id, use in uses],
                ],
            )


# Bulk variants for the jobs. Each takes a bounded page of rows as a QuerySet (the caller
# slices it), locks them, and changes them all in a constant number of queries: one SELECT
# ... FOR UPDATE, one UPDATE per table and one INSERT per kind of row, however big the page.
# With ``skip_locked`` rows another transaction is changing right now are left out (a job's
# next run finds them again if they still qualify) instead of waiting for them.


def _revoke_live_passwords_many(mailbox_ids: list[int], now: datetime) -> dict[int, int]:
    """End the mailboxes' live passwords; how many each mailbox had.

    On PostgreSQL one UPDATE ... RETURNING both ends and counts them; elsewhere a count, then
    the UPDATE (SQLite's RETURNING is not worth a second dialect for the embedded default).
    """
    live = AppPassword.objects.live().filter(mailbox_id__in=mailbox_ids)
    if connection.vendor != "postgresql":
        revoked = dict(live.order_by().values_list("mailbox_id").annotate(count=Count("pk")))
        live.update(revoked_at=now)
        return revoked
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE mailaccess_apppassword SET revoked_at = %s "
            "WHERE revoked_at IS NULL AND mailbox_id = ANY(%s) RETURNING mailbox_id",
            [now, mailbox_ids],
        )
        return dict(collections.Counter(mailbox_id for (mailbox_id,) in cursor.fetchall()))


def _access_changed_many(mailbox_ids: Sequence[int]) -> None:
    # The table Dovecot's passdb reads, in this transaction: exact when the change commits.
    passdb.refresh(mailbox_ids)

    # One call per hook with the whole batch: a job's page of 1,000 blocks then costs the
    # auth-policy cache one query and one Redis pipeline, not 1,000 of each.
    def run() -> None:
        for hook in access_changed_hooks:
            hook(mailbox_ids)

    transaction.on_commit(run)


def _commit_without_waiting_for_the_disk() -> None:
    """A job's page on PostgreSQL: its COMMIT does not wait for the WAL to reach the disk.

    A page of a thousand blocks writes megabytes of WAL (at 10,000,000 mailboxes mostly whole
    index pages: the passwords' and the passdb table's keys are random); waiting for each
    page's flush left the job idle while the disk wrote, page after page. The WAL writer
    flushes it within a fraction of a second anyway (``wal_writer_delay``). A server crash in
    that fraction loses the last pages whole, as an interrupted run does: the next run finds
    them still due and blocks them again. Their after-commit effects already ran, and each
    is harmless for a mailbox whose block was lost: a state cache dropped (read again from the
    database), a notice task whose notice does not exist (it sends nothing), sessions ended
    that log in again. Only this transaction is affected (SET LOCAL); an action on one
    mailbox commits as before.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _locked_with_address(
    accesses: QuerySet[ExternalAccess], skip_locked: bool, *fields: str
) -> QuerySet[ExternalAccess, tuple[Any, ...]]:
    """Lock a page of access rows and read each mailbox's address with them.

    The address comes from a subquery, not a join: joined, PostgreSQL merge-scans the mailbox
    table from its first row for every page, and a job over a million mailboxes slows down
    page by page.
    """
    return (
        accesses.select_for_update(skip_locked=skip_locked, of=("self",))
        .annotate(
            address=Subquery(Mailbox.objects.filter(pk=OuterRef("mailbox_id")).values("address"))
        )
        .values_list("mailbox_id", "address", *fields)
    )


@transaction.atomic
def block_access_many(
    accesses: QuerySet[ExternalAccess],
    reason: BlockReason,
    *,
    actor: Actor,
    skip_locked: bool = False,
) -> list[int]:
    """``block_access`` for every row of a page: the same audit rows and one notice per block.

    Returns the ids of the mailboxes blocked; rows already blocked for this reason stay as
    they are.
    """
    rows = [
        (mailbox_id, address)
        for mailbox_id, address, enabled, block_reason in _locked_with_address(
            accesses, skip_locked, "enabled", "block_reason"
        )
        if enabled or block_reason != reason
    ]
    if not rows:
        return []
    _commit_without_waiting_for_the_disk()
    ids = [mailbox_id for mailbox_id, _address in rows]
    now = timezone.now()
    revoked = _revoke_live_passwords_many(ids, now)
    ExternalAccess.objects.filter(pk__in=ids).update(
        enabled=False,
        block_reason=reason,
        blocked_at=now,
        disabled_at=Case(When(enabled=True, then=Value(now)), default=F("disabled_at")),
        **({"requires_password_change": True} if reason == BlockReason.COMPROMISED else {}),
    )
    events = audit.record_many(
        rows,
        AuditAction.ACCESS_BLOCKED,
        actor,
        now,
        reason=reason,
        details=[{"revoked": revoked.get(mailbox_id, 0)} for mailbox_id in ids],
    )
    notices = insert_rows(
        Notice,
        per_row={"mailbox_id": ids, "key": [f"block:{event}" for event in events]},
        same={"kind": NoticeKind.BLOCKED, "reason": reason, "created_at": now},
    )
    _access_changed_many(ids)
    _end_sessions(ids)
    _notices_created(notices)
    transaction.on_commit(lambda: metrics.BLOCKS.labels(reason=str(reason)).inc(len(ids)))
    return ids


@transaction.atomic
def warn_expiry_many(
    accesses: QuerySet[ExternalAccess], *, actor: Actor, skip_locked: bool = False
) -> list[int]:
    """Tell each owner that their idle access is about to expire: once per idle stretch.

    The notice key names the last activity it warns about, so the same stretch can never be
    warned about twice even if ``expiry_warned_at`` were lost.
    """
    rows = [
        (mailbox_id, address, last)
        for mailbox_id, address, last in _locked_with_address(
            accesses, skip_locked, "last_activity_at"
        )
        if last is not None
    ]
    if not rows:
        return []
    ids = [mailbox_id for mailbox_id, _address, _last in rows]
    now = timezone.now()
    ExternalAccess.objects.filter(pk__in=ids).update(expiry_warned_at=now)
    audit.record_many(
        [(mailbox_id, address) for mailbox_id, address, _last in rows],
        AuditAction.EXPIRY_WARNED,
        actor,
        now,
        details=[{"expires_at": (last + IDLE_EXPIRY).isoformat()} for _id, _address, last in rows],
    )
    notices = insert_rows(
        Notice,
        per_row={
            "mailbox_id": ids,
            "key": [f"expiry:{mailbox_id}:{last.timestamp():.6f}" for mailbox_id, _a, last in rows],
        },
        same={"kind": NoticeKind.EXPIRY_WARNING, "created_at": now},
    )
    _notices_created(notices)
    return ids


@transaction.atomic
def mark_inactive_many(
    mailboxes: QuerySet[Mailbox], *, actor: Actor, skip_locked: bool = False
) -> list[int]:
    """``change_status`` to inactive for every active mailbox of a page."""
    rows = [
        (mailbox_id, address)
        for mailbox_id, address, status in mailboxes.select_for_update(
            skip_locked=skip_locked, of=("self",)
        ).values_list("pk", "address", "status")
        if status == Status.ACTIVE
    ]
    if not rows:
        return []
    ids = [mailbox_id for mailbox_id, _address in rows]
    now = timezone.now()
    Mailbox.objects.filter(pk__in=ids).update(status=Status.INACTIVE, status_changed_at=now)
    audit.record_many(
        rows,
        AuditAction.STATUS_CHANGED,
        actor,
        now,
        details=[{"to": Status.INACTIVE.value}] * len(rows),
    )
    _access_changed_many(ids)
    return ids


@transaction.atomic
def deliver_notice(notice_id: int, send: Callable[[Notice], object]) -> bool:
    """Hand a notice to ``send`` (the mailer) unless it was e-mailed already.

    The guard is in the database: the conditional UPDATE claims the notice and holds its row
    lock while ``send`` runs, so a retried or redelivered task, or two workers at once, find
    ``emailed_at`` set (the second waits for the first to commit) and send nothing. If
    ``send`` raises, the claim rolls back and a retry may send it. The one window left is a
    crash between the mail server accepting the message and this commit.
    """
    claimed = Notice.objects.filter(pk=notice_id, emailed_at__isnull=True).update(
        emailed_at=timezone.now()
    )
    if not claimed:
        return False
    notice = Notice.objects.select_related("mailbox__external_access").get(pk=notice_id)
    send(notice)

    def sent() -> None:
        metrics.NOTICES_SENT.labels(kind=notice.kind).inc()
        logger.info(
            Event(
                "notice.sent",
                {"mailbox": notice.mailbox.address, "kind": notice.kind, "reason": notice.reason},
            )
        )

    transaction.on_commit(sent)
    return True


def mark_notice_read(mailbox: Mailbox, notice_id: int) -> bool:
    """The owner dismissed a notice in the panel. False if it is not one of theirs.

    Not audited: reading a notice changes no access.
    """
    notices = Notice.objects.filter(pk=notice_id, mailbox=mailbox)
    notices.filter(read_at__isnull=True).update(read_at=timezone.now())
    return notices.exists()


@transaction.atomic
def alert_new_programs(alerts: Sequence[dict[str, Any]]) -> list[int]:
    """ "A new mail program signed in" (``activity.py`` decided which): a notice each, shown in
    the panel and e-mailed after commit. ``key`` makes each exactly-once, so a page the job
    takes in twice makes no second notice. Not audited: nothing about access changed."""
    from mailaccess.models import NewProgramAlert

    existing = set(
        Notice.objects.filter(key__in=[alert["key"] for alert in alerts]).values_list(
            "key", flat=True
        )
    )
    created: list[int] = []
    for alert in alerts:
        if alert["key"] in existing:
            continue
        notice = Notice.objects.create(
            mailbox_id=alert["mailbox_id"], kind=NoticeKind.NEW_PROGRAM, key=alert["key"]
        )
        NewProgramAlert.objects.create(
            mailbox_id=alert["mailbox_id"],
            app_password_id=alert["app_password_id"],
            notice=notice,
            signed_in_at=alert["signed_in_at"],
            protocol=alert["protocol"],
            ip=alert["ip"],
            client=alert["client"],
        )
        created.append(notice.pk)
    if created:
        _notices_created(created)
    return created


@transaction.atomic
def end_password_not_me(
    mailbox: Mailbox, alert_id: int, *, actor: Actor, ip: str | None = None
) -> bool:
    """ "This was not me": end the password of a new-program alert and its open sessions.

    The link works once: the alert is claimed by a conditional UPDATE under the access row's
    lock, so a second click (or two at once) finds it used and changes nothing. False then.
    """
    from mailaccess.models import NewProgramAlert

    _locked_access(mailbox)
    now = timezone.now()
    claimed = NewProgramAlert.objects.filter(
        pk=alert_id, mailbox=mailbox, used_at__isnull=True
    ).update(used_at=now)
    if not claimed:
        return False
    alert = NewProgramAlert.objects.select_related("app_password").get(pk=alert_id)
    password = alert.app_password
    revoked = AppPassword.objects.live().filter(pk=password.pk).update(revoked_at=now)
    Notice.objects.filter(pk=alert.notice_id, read_at__isnull=True).update(read_at=now)
    audit.record(
        mailbox,
        AuditAction.NOT_ME,
        actor,
        ip=ip,
        detail={
            "app_password": password.pk,
            "label": password.label,
            "revoked": revoked,
            "client_ip": alert.ip,
            "protocol": alert.protocol,
        },
    )
    _access_changed(mailbox.pk)
    _end_sessions([mailbox.pk])
    return True
