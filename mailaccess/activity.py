"""Each password's activity: recent sign-ins and refusals, and "A new mail program signed in".

The auth policy answers thousands of logins a second and must not write the database for
each. So it only *buffers* (``record``): one ``XADD`` to a Redis stream for a refusal, and
for a successful login at most once a minute per password, protocol and network
(``AUTH_POLICY_USE_RECORD_INTERVAL``): the policy's own Redis script already folds a
program's many connections into that one event. The stream is also how a login's *last use*
reaches the database (``actions.record_uses``): the panel's "last used" and the idle-expiry
job read it after the next compaction, a minute later at most.

The ``compact_activity`` job (every minute, ``compact``) reads the stream in pages, folds
the events into ``PasswordActivity`` rows (one row per password, protocol, network, program
and, for a refusal, its reason: a known program from a known network adds to its row's count
instead of adding a row), keeps each mailbox's history bounded (``HISTORY_ROWS`` rows, the
panel shows those of the last ``HISTORY_DAYS``), and finds the sign-ins of a password from a
network or program not seen for it in the last 30 days (``is_new_program``): those get a
notice and an e-mail (``actions.alert_new_programs``), at most one per password an hour, and
never for a mailbox's first sign-in ever.

Stream entries are deleted once their page committed. A crash between the commit and the
delete counts that page twice when the job runs again: a count off by a little, never an
event lost, and the alerts are keyed so no notice is made twice.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.core import signing
from django.db import connection, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from accounts.models import Mailbox
from common.logging import Throttle, log_event
from mailaccess import actions
from mailaccess.models import (
    ActivityKind,
    AppPassword,
    NewProgramAlert,
    Notice,
    NoticeKind,
    PasswordActivity,
    Protocol,
    RefusalReason,
)

if TYPE_CHECKING:
    from common.redis_urls import Client
    from mailaccess.mailserver.auth_policy import LoginRequest, MailboxState, Verdict
    from mailaccess.mailserver.redis_pipeline import RedisPipeline

logger = logging.getLogger(__name__)
_RECORD_ERROR_LOG = Throttle()

# One stream for all mailboxes (its own Redis Cluster slot): the job reads it in order.
STREAM_KEY = "mp:{activity}:events"
LOCK_KEY = "mp:{activity}:lock"
# A flood of refused guesses must not grow Redis without end: past this, the oldest go. The
# sign-ins in it are also the last uses the expiry jobs read, so it must hold what arrives
# between two runs of the job with room to spare: a million mailboxes checking every five
# minutes add about 200,000 a minute; a million entries take about 120 MB of Redis.
STREAM_MAX_LENGTH = 1_000_000
PAGE_SIZE = 1000
LOCK_SECONDS = 300

HISTORY_DAYS = 30
HISTORY_ROWS = 50
SEEN_DAYS = 30
ALERT_EVERY = timedelta(hours=1)
# "This was not me" works this long after the e-mail was written, and once.
NOT_ME_MAX_AGE = timedelta(days=7)
NOT_ME_SALT = "mailaccess.activity.not_me"

# The auth policy's refusals the owner is told about (auth_policy.Outcome's values).
REFUSALS = frozenset(reason.value for reason in RefusalReason)


@dataclass(frozen=True)
class Event:
    """One buffered event, as the stream carries it."""

    kind: str
    mailbox_id: int
    app_password_id: int | None
    protocol: str
    network: str
    ip: str | None
    client: str
    when: float
    reason: str = ""
    retry_at: float | None = None

    def encode(self) -> str:
        return json.dumps(
            [
                self.kind,
                self.mailbox_id,
                self.app_password_id,
                self.protocol,
                self.network,
                self.ip,
                self.client,
                self.when,
                self.reason,
                self.retry_at,
            ],
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Event | None:
        """None for anything this version cannot read (the job drops it)."""
        try:
            kind, mailbox, password, protocol, network, ip, client, when, reason, retry = (
                json.loads(text)
            )
            event = cls(
                str(kind),
                int(mailbox),
                None if password is None else int(password),
                str(protocol),
                str(network),
                None if ip is None else str(ip),
                str(client)[:128],
                float(when),
                str(reason),
                None if retry is None else float(retry),
            )
        except (ValueError, TypeError):
            return None
        if event.kind not in ActivityKind.values or event.protocol not in Protocol.values:
            return None
        if event.kind == ActivityKind.REFUSED and event.reason not in REFUSALS:
            return None
        return event


# -- the auth policy's side: buffering -------------------------------------------------------


def sign_in_event(state: MailboxState, request: LoginRequest, now: float) -> Event | None:
    """A successful login's event. One whose password the policy cannot name (a Dovecot not
    configured to send it, deploy/dovecot) still carries the mailbox's last use, which the
    expiry jobs must see; it just makes no row in the password's history."""
    if request.protocol is None:
        return None
    password = state.password_for(request)
    return Event(
        ActivityKind.SIGN_IN,
        state.mailbox_id,
        password.id if password else None,
        request.protocol.value,
        request.network or "",
        request.remote,
        request.client,
        now,
    )


def refusal_event(
    state: MailboxState | None, request: LoginRequest, verdict: Verdict, now: float
) -> Event | None:
    """A refusal of an existing mailbox's login worth telling its owner, or None.

    An unknown address records nothing (nobody to tell), and neither does a switched-off
    or blocked mailbox before its password was verified: the policy answers those as it
    answers an unknown address (auth_policy.decide_allow), and so does this.
    """
    if state is None or request.protocol is None or verdict.outcome.value not in REFUSALS:
        return None
    password = state.password_for(request)
    return Event(
        ActivityKind.REFUSED,
        state.mailbox_id,
        password.id if password else request.app_password_id,
        request.protocol.value,
        request.network or "",
        request.remote,
        request.client,
        now,
        reason=verdict.outcome.value,
        retry_at=verdict.retry_at,
    )


async def record(client: RedisPipeline, event: Event | None) -> None:
    """Buffer one event (the auth policy's event loop): one Redis command, no database."""
    if event is None:
        return
    try:
        await client.execute(
            "XADD", STREAM_KEY, "MAXLEN", "~", STREAM_MAX_LENGTH, "*", "e", event.encode()
        )
    except (RedisError, OSError, TimeoutError) as error:
        # The history is a courtesy to the owner; the decision it records stands. Raised, the
        # error would fail the request, and Dovecot's answer to a failed policy request lets
        # the login in (auth_policy_reject_on_fail = no): a refusal must never become that.
        if (left_out := _RECORD_ERROR_LOG.due()) is not None:
            log_event(
                logger,
                "activity.record_failed",
                logging.WARNING,
                error=type(error).__name__,
                left_out=left_out,
            )


# -- pure rules --------------------------------------------------------------------------------


def is_new_program(seen: Iterable[tuple[str, str]], network: str, client: str) -> bool:
    """Whether a sign-in comes from a network or a program not among ``seen``: the
    (network, program) pairs of the password's sign-ins in the last 30 days.

    A program that sends no IMAP ID (POP3, SMTP, some phones) is told apart by its network
    only: an empty name is no new program.
    """
    networks, clients = set(), set()
    for seen_network, seen_client in seen:
        networks.add(seen_network)
        clients.add(seen_client)
    return network not in networks or bool(client and client not in clients)


def alert_due(
    *, new: bool, signed_in_before: bool, last_alert: datetime | None, when: datetime
) -> bool:
    """Whether a sign-in earns "A new mail program signed in": a new program, not the
    mailbox's first sign-in ever, and no alert for this password within the hour."""
    if not new or not signed_in_before:
        return False
    return last_alert is None or when - last_alert >= ALERT_EVERY


@dataclass
class _Fold:
    """Events of one row's key within a page."""

    first: Event
    last: Event
    count: int = 1


@dataclass
class _Alert:
    mailbox_id: int
    app_password_id: int
    event: Event
    key: str


@dataclass
class _Page:
    folds: dict[tuple[Any, ...], _Fold] = field(default_factory=dict)


def _key(event: Event) -> tuple[Any, ...]:
    return (
        event.mailbox_id,
        event.app_password_id,
        event.kind,
        event.reason,
        event.protocol,
        event.network,
        event.client,
    )


def _row_key(row: PasswordActivity) -> tuple[Any, ...]:
    return (
        row.mailbox_id,
        row.app_password_id,
        row.kind,
        row.reason,
        row.protocol,
        row.network,
        row.client,
    )


def _time(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def _at(when: float | None) -> datetime | None:
    return None if when is None else _time(when)


# -- the job's side: folding -------------------------------------------------------------------


def fold(events: Sequence[tuple[str, Event]], now: datetime | None = None) -> int:
    """Store one page of events (stream id, event): fold, alert, prune. Returns the number
    of events taken in."""
    now = now or timezone.now()
    page = _Page()
    for _id, event in sorted(events, key=lambda item: item[1].when):
        key = _key(event)
        folded = page.folds.get(key)
        if folded is None:
            page.folds[key] = _Fold(event, event)
        else:
            folded.last, folded.count = event, folded.count + 1
    if not page.folds:
        return 0
    with transaction.atomic():
        _store(page, now)
    return len(events)


def _store(page: _Page, now: datetime) -> None:
    mailbox_ids = {key[0] for key in page.folds}
    passwords = dict(
        AppPassword.objects.filter(mailbox_id__in=mailbox_ids).values_list("pk", "mailbox_id")
    )
    # Events of a mailbox or password deleted meanwhile are dropped.
    folds = [
        folded
        for key, folded in page.folds.items()
        if key[1] is None or passwords.get(key[1]) == key[0]
    ]
    mailbox_ids = set(
        Mailbox.objects.filter(pk__in={folded.first.mailbox_id for folded in folds}).values_list(
            "pk", flat=True
        )
    )
    folds = [folded for folded in folds if folded.first.mailbox_id in mailbox_ids]
    since = now - timedelta(days=SEEN_DAYS)
    rows = list(
        PasswordActivity.objects.filter(mailbox_id__in=mailbox_ids).order_by("last_at", "pk")
    )
    existing: dict[tuple[Any, ...], PasswordActivity] = {}
    seen: dict[int, set[tuple[str, str]]] = {}
    signed_in_before: set[int] = set()
    for row in rows:
        if row.kind == ActivityKind.SIGN_IN:
            signed_in_before.add(row.mailbox_id)
            if row.last_at >= since and row.app_password_id is not None:
                seen.setdefault(row.app_password_id, set()).add((row.network, row.client))
        if row.last_at >= since:
            existing[_row_key(row)] = row
    last_alerts: dict[int, datetime] = {}
    for password_id, when in NewProgramAlert.objects.filter(
        app_password__mailbox_id__in=mailbox_ids, signed_in_at__gte=now - 2 * ALERT_EVERY
    ).values_list("app_password_id", "signed_in_at"):
        last_alerts[password_id] = max(when, last_alerts.get(password_id, when))

    changed: list[PasswordActivity] = []
    created: list[PasswordActivity] = []
    alerts: list[_Alert] = []
    for folded in sorted(folds, key=lambda item: item.first.when):
        first, last = folded.first, folded.last
        if first.kind == ActivityKind.SIGN_IN and first.app_password_id is None:
            continue  # a last use only (``sign_in_event``), recorded below
        if first.kind == ActivityKind.SIGN_IN and first.app_password_id is not None:
            password_seen = seen.setdefault(first.app_password_id, set())
            when = _time(first.when)
            if alert_due(
                new=is_new_program(password_seen, first.network, first.client),
                signed_in_before=first.mailbox_id in signed_in_before,
                last_alert=last_alerts.get(first.app_password_id),
                when=when,
            ):
                alerts.append(
                    _Alert(
                        first.mailbox_id,
                        first.app_password_id,
                        first,
                        f"new_program:{first.app_password_id}:{first.when:.3f}",
                    )
                )
                last_alerts[first.app_password_id] = when
            password_seen.add((first.network, first.client))
            signed_in_before.add(first.mailbox_id)
        found = existing.get(_key(first))
        if found is not None:
            found.last_at = max(found.last_at, _time(last.when))
            found.count += folded.count
            found.ip = last.ip
            found.retry_at = _at(last.retry_at)
            changed.append(found)
            continue
        row = PasswordActivity(
            mailbox_id=first.mailbox_id,
            app_password_id=first.app_password_id,
            kind=first.kind,
            reason=first.reason,
            protocol=first.protocol,
            network=first.network,
            ip=last.ip,
            client=first.client,
            first_at=_time(first.when),
            last_at=_time(last.when),
            count=folded.count,
            retry_at=_at(last.retry_at),
        )
        existing[_key(first)] = row
        created.append(row)
    _update_rows([row for row in changed if row.pk is not None])
    PasswordActivity.objects.bulk_create(created)
    # Each sign-in is also the password's and the protocol's last use: the auth policy writes
    # no database row per login, this page's newest use per key lands here in two UPDATEs.
    actions.record_uses(
        [
            actions.Use(
                folded.last.mailbox_id,
                Protocol(folded.last.protocol),
                folded.last.ip,
                _time(folded.last.when),
                folded.last.app_password_id,
                folded.last.client,
            )
            for folded in folds
            if folded.first.kind == ActivityKind.SIGN_IN
        ]
    )
    _prune(mailbox_ids, now)
    if alerts:
        actions.alert_new_programs(
            [
                {
                    "mailbox_id": alert.mailbox_id,
                    "app_password_id": alert.app_password_id,
                    "key": alert.key,
                    "signed_in_at": _time(alert.event.when),
                    "protocol": alert.event.protocol,
                    "ip": alert.event.ip,
                    "client": alert.event.client,
                }
                for alert in alerts
            ]
        )


def _update_rows(rows: list[PasswordActivity]) -> None:
    """The page's changed history rows. On PostgreSQL one UPDATE from arrays: the CASE
    expressions of ``bulk_update`` cost more Python than the rest of the page together at a
    thousand rows (benchmarks/README.md, issue 23); elsewhere ``bulk_update``."""
    if connection.vendor != "postgresql":
        PasswordActivity.objects.bulk_update(rows, ["last_at", "count", "ip", "retry_at"])
        return
    if not rows:
        return
    unique = {row.pk: row for row in rows}  # a row folded twice in a page: its last state
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {PasswordActivity._meta.db_table} AS r SET last_at = u.last_at, "  # noqa: S608
            "count = u.count, ip = u.ip::inet, retry_at = u.retry_at "
            "FROM unnest(%s::bigint[], %s::timestamptz[], %s::integer[], %s::text[], "
            "%s::timestamptz[]) AS u(id, last_at, count, ip, retry_at) WHERE r.id = u.id",
            [
                list(unique),
                [row.last_at for row in unique.values()],
                [row.count for row in unique.values()],
                [row.ip for row in unique.values()],
                [row.retry_at for row in unique.values()],
            ],
        )


def _prune(mailbox_ids: Iterable[int], now: datetime) -> None:
    """Keep each mailbox's newest ``HISTORY_ROWS`` rows of the last ``HISTORY_DAYS``, and
    its newest sign-in whatever its age: it tells that the mailbox has signed in before.

    One statement for the page's mailboxes (window functions, in PostgreSQL and SQLite
    alike), not a query a mailbox: at a page of a thousand mailboxes those were a fifth of
    the job's time (benchmarks/README.md, issue 23).
    """
    ids = list(mailbox_ids)
    if not ids:
        return
    table = PasswordActivity._meta.db_table
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE id IN ("  # noqa: S608 (names from _meta, values bound)
            "SELECT id FROM (SELECT id, kind, last_at, "
            "row_number() OVER (PARTITION BY mailbox_id ORDER BY last_at DESC, id DESC) AS n, "
            "row_number() OVER (PARTITION BY mailbox_id, kind ORDER BY last_at DESC, id DESC) "
            f"AS k FROM {table} WHERE mailbox_id IN ({marks})) AS ranked "
            "WHERE NOT ((n <= %s AND last_at >= %s) OR (kind = %s AND k = 1)))",
            [
                *ids,
                HISTORY_ROWS,
                connection.ops.adapt_datetimefield_value(now - timedelta(days=HISTORY_DAYS)),
                ActivityKind.SIGN_IN.value,
            ],
        )


def compact(client: Client | None = None, *, page_size: int = PAGE_SIZE) -> int:
    """The job: take in what the auth policy buffered, page by page. Returns events taken.

    One run at a time (a Redis lock): two would both read the same page.
    """
    from mailaccess.counters import sync_client

    client = client or sync_client()
    token = secrets.token_hex(8)
    if not client.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
        return 0
    done = 0
    try:
        while True:
            # The sync client decodes responses (counters.sync_client).
            entries = cast(
                list[tuple[str, dict[str, str]]],
                client.xrange(STREAM_KEY, "-", "+", count=page_size),
            )
            if not entries:
                break
            events = []
            for entry_id, fields in entries:
                event = Event.decode(fields.get("e", ""))
                if event is not None:
                    events.append((entry_id, event))
            fold(events)
            client.xdel(STREAM_KEY, *[entry_id for entry_id, _fields in entries])
            done += len(entries)
            if len(entries) < page_size:
                break
    finally:
        if client.get(LOCK_KEY) == token:
            client.delete(LOCK_KEY)
    if done:
        log_event(logger, "activity.compacted", events=done)
    return done


# -- the panel and the admin -------------------------------------------------------------------


@dataclass
class PasswordHistory:
    """One password's recent activity, for the panel."""

    app_password: AppPassword | None
    rows: list[PasswordActivity]


def history(mailbox_id: int, now: datetime | None = None) -> list[PasswordHistory]:
    """The panel's lists: each live password (the main one first), any ended password with
    activity in the window, then refusals no password was recognised for."""
    now = now or timezone.now()
    rows = list(
        PasswordActivity.objects.filter(
            mailbox_id=mailbox_id, last_at__gte=now - timedelta(days=HISTORY_DAYS)
        ).order_by("-last_at", "-pk")[:HISTORY_ROWS]
    )
    by_password: dict[int | None, list[PasswordActivity]] = {}
    for row in rows:
        by_password.setdefault(row.app_password_id, []).append(row)
    ended = [pk for pk in by_password if pk is not None]
    passwords = AppPassword.objects.filter(mailbox_id=mailbox_id).filter(
        Q(revoked_at__isnull=True) | Q(pk__in=ended)
    )
    lists = [
        PasswordHistory(password, by_password.get(password.pk, []))
        for password in sorted(passwords, key=lambda p: (not p.is_live, p.created_at, p.pk))
    ]
    if None in by_password:
        lists.append(PasswordHistory(None, by_password[None]))
    return lists


# -- "This was not me" -------------------------------------------------------------------------


def not_me_token(alert: NewProgramAlert) -> str:
    return signing.dumps({"a": alert.pk, "m": alert.mailbox_id}, salt=NOT_ME_SALT)


class LinkError(Exception):
    """Why a "This was not me" link cannot be used: ``code`` is expired, invalid or used."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def alert_of_link(token: str, mailbox_id: int) -> NewProgramAlert:
    """The alert a link names, for its owner only; LinkError otherwise.

    Another owner's link is "invalid", exactly as a forged one: it must tell nothing.
    """
    try:
        data = signing.loads(token, salt=NOT_ME_SALT, max_age=NOT_ME_MAX_AGE)
    except signing.SignatureExpired:
        raise LinkError("expired") from None
    except signing.BadSignature:
        raise LinkError("invalid") from None
    if not isinstance(data, dict) or data.get("m") != mailbox_id:
        raise LinkError("invalid")
    alert_id = data.get("a")
    if not isinstance(alert_id, int):
        raise LinkError("invalid")
    alert = (
        NewProgramAlert.objects.select_related("app_password")
        .filter(pk=alert_id, mailbox_id=mailbox_id)
        .first()
    )
    if alert is None:
        raise LinkError("invalid")
    if alert.used_at is not None:
        raise LinkError("used")
    return alert


def alert_lines(alert: NewProgramAlert) -> list[str]:
    """Which password, when, protocol, address, program: for the e-mail, in its language.

    Each a label and its value (dates never stand inside a sentence: locale/GLOSSARY.md).
    """
    when = formats.date_format(timezone.localtime(alert.signed_in_at), "DATETIME_FORMAT")
    lines = [
        _("Password: %(label)s") % {"label": alert.app_password.label or _("Mail programs")},
        _("Time: %(time)s") % {"time": when},
        _("Protocol: %(protocol)s") % {"protocol": alert.get_protocol_display()},
        _("Address: %(ip)s") % {"ip": alert.ip or "?"},
    ]
    if alert.client:
        lines.append(_("Program: %(client)s") % {"client": alert.client})
    return lines


def with_links(notices: Iterable[Notice]) -> list[Notice]:
    """The panel's notices, a "new mail program" one with its "This was not me" link."""
    shown = list(notices)
    for notice in shown:
        if notice.kind == NoticeKind.NEW_PROGRAM:
            alert = notice.new_program
            notice.not_me_url = reverse(  # type: ignore[attr-defined]
                "mailaccess:not_me", kwargs={"token": not_me_token(alert)}
            )
            notice.lines = alert_lines(alert)  # type: ignore[attr-defined]
    return shown
