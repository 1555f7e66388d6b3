"""Dovecot's auth policy (``auth_policy_server_url``): what it asks, the rules, what we answer.

Pure functions only: no Redis, no database, no clock. ``auth_policy_app.py`` feeds them what
the Redis script read and sends back what they decide, so every rule is unit-tested on its own.

A successful login costs three requests: ``allow`` before the password is checked, ``allow``
again after it was right, and ``report`` (success true). A failed one costs two: ``allow`` and
``report`` (success false). Both ``allow`` bodies are identical, so the two cannot be told
apart; that is why ``allow`` only reads counters and ``report`` alone writes them: a password
guesser, who never gets past the passdb, can neither use up the owner's checks nor trip the
faulty-program block.

What counts as a *check* (the help page: "no more often than every five minutes"): the
successful IMAP or POP3 logins of one program of a mailbox within ``check_window`` seconds of
the first belong to one check, up to ``connections_per_check`` of them. So Thunderbird opening
five connections at once is one check, and IDLE, which keeps one connection open, costs
nothing until it reconnects. Checks are paid from a token bucket per program, one more token
every ``check_interval`` seconds. SMTP logins are sendings, not checks: the SMTP policy daemon
limits those.

Which program (``check_program``): the device password sent (its ``password_key``, in all
three requests of a login), and the name from its IMAP ID where it sent one (one password
shared by two programs). Such a bucket holds ``program_check_burst`` tokens: one check ahead
of the pace (a person pressing "Get mail" right after an automatic check), so a program set to
check every minute is refused from its second early check on. Only a request without a
password key (a Dovecot not configured as in deploy/) is counted per client network (an IPv4
address or an IPv6 /64) and IMAP ID, with ``check_burst`` tokens: programs it cannot tell
apart share that bucket, so it must hold several. Counting per network alone made two
programs behind one home router, each on time, share one allowance and one of them refused
after half an hour.

Which of a mailbox's passwords (one per device) a request is about. Dovecot is configured
(deploy/dovecot/dovecot.conf, ``auth_policy_request_attributes``) to send two more attributes,
and what arrives was checked against Dovecot 2.3.19:

- ``app_password``, the passdb's extra field ``%{passdb:app_password}``: the id of the
  password that matched. Empty in the first ``allow`` (the passdb has not run yet) and in the
  ``report`` of a failed login; set in the second ``allow`` and the ``report`` of a success.
  It names the password exactly and carries nothing derived from it: each use is recorded
  against it (time, protocol, client IP, program).
- ``password_key``, ``%0.4{sha256:password}``: the first 16 bits of the SHA-256 of whatever
  password was sent, present in every request. Needed because a password scoped to IMAP must
  be refused by SMTP AUTH *with a message*: the passdb view has no SMTP row for it (so it
  stays shut even when this service is down), the check fails, and no second ``allow`` ever
  comes; only the first ``allow`` can answer with a message, and the passdb has told it
  nothing yet. The cached state holds the same 16 bits of each live password's lookup key,
  which ``actions._create_password`` keeps distinct within a mailbox, so a match names one
  password. Why 16 bits and not the whole hash: the request also carries what people mistype,
  such as their web password, and an unsalted SHA-256 of that, in transit or in a log, could be
  guessed back; 16 bits leave any guess 65,536-fold ambiguous. A wrong password that happens
  to share the prefix of a password without this protocol (16 bits against each of at most
  ``APP_PASSWORDS_PER_MAILBOX`` passwords) gets the scope message where it would have got
  a plain failure: nothing is let in by it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext, ngettext

from mailaccess import fences
from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, BlockReason, Protocol

# Dovecot sends %s, the service name. Postfix's SMTP AUTH arrives through Dovecot SASL as
# "smtp"; Dovecot's own submission service says "submission". Both are SMTP to the user.
PROTOCOLS: dict[str, Protocol] = {
    "imap": Protocol.IMAP,
    "pop3": Protocol.POP3,
    "smtp": Protocol.SMTP,
    "submission": Protocol.SMTP,
}
CHECKING_PROTOCOLS = frozenset({Protocol.IMAP, Protocol.POP3})
MAX_BODY_BYTES = 16 * 1024


class Command(StrEnum):
    ALLOW = "allow"
    REPORT = "report"


class RequestError(ValueError):
    """A request no correctly configured Dovecot sends; answered, never a 500."""


@dataclass(frozen=True)
class LoginRequest:
    command: Command
    login: str
    protocol: Protocol | None
    service: str
    network: str | None  # the client's IPv4 address or IPv6 /64, for counting
    remote: str | None  # the client's address as sent, for the panel
    pwhash: str
    session_id: str
    success: bool = False
    policy_reject: bool = False
    app_password_id: int | None = None  # the password that matched (after the check only)
    password_key: str = ""  # 16 bits of the sent password's SHA-256 (every request)
    client: str = ""  # the program's name from its IMAP ID


# IMAP ID parameters as Dovecot passes them on: "name" "Thunderbird" "version" "115.0".
_ID_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(NIL)|([^\s()"]+)', re.IGNORECASE)
CLIENT_MAX_LENGTH = 128


def client_name(device_id: str) -> str:
    """The program's name (and version) from IMAP ID parameters; "" when it gave none."""
    return _client_name(device_id[:1024])


# Kept per ID string: a mailbox's program sends the same one at every login.
@lru_cache(maxsize=1024)
def _client_name(device_id: str) -> str:
    values: list[str | None] = []
    for quoted, nil, atom in _ID_TOKEN.findall(device_id):
        values.append(None if nil else re.sub(r"\\(.)", r"\1", quoted) if quoted else atom)
    fields = {
        str(key).lower(): value
        for key, value in zip(values[::2], values[1::2], strict=False)
        if key is not None and value
    }
    text = " ".join(part for part in (fields.get("name"), fields.get("version")) if part)
    # Shown in the panel and the admin: printable characters on one line only.
    text = "".join(char for char in text if char.isprintable())
    return " ".join(text.split())[:CLIENT_MAX_LENGTH]


def _id(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


# What Dovecot always sends, decided without parsing a query string.
_COMMANDS = {b"command=allow": Command.ALLOW, b"command=report": Command.REPORT}


def parse_command(query_string: bytes) -> Command:
    known = _COMMANDS.get(query_string)
    if known is not None:
        return known
    values = parse_qs(query_string.decode("latin-1")).get("command", [])
    if len(values) != 1:
        raise RequestError("command missing")
    try:
        return Command(values[0])
    except ValueError:
        raise RequestError("unknown command") from None


@lru_cache(maxsize=65536)
def check_program(request: LoginRequest) -> tuple[str, bool]:
    """The program whose check bucket a login is counted in, and whether that is one program
    (a device password) rather than a client network that may hold several.

    Built from what all three requests of a login carry alike, so the ``allow`` before the
    password check reads the very bucket the ``report`` of the success wrote. A wrong password
    names a bucket nobody fills, so a stranger cannot spend the owner's checks.
    """
    client = f"|{request.client}" if request.client else ""
    if request.password_key:
        return f"pw:{request.password_key}{client}", True
    return f"{request.network or ''}{client}", False


@lru_cache(maxsize=65536)
def client_network(remote: str) -> tuple[str | None, str | None]:
    """(network key, address) of a client: IPv6 counts per /64, what one subscriber holds.

    Cached: the three requests of a login come from one address, and parsing it with
    ``ipaddress`` cost as much as the rest of the request's parsing.
    """
    try:
        address = ipaddress.ip_address(remote.strip())
    except ValueError:
        return None, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, 64), strict=False)
        return str(network), str(address)
    return str(address), str(address)


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return value if isinstance(value, str) else ""


def _flag(data: dict[str, Any], key: str) -> bool:
    # Dovecot sends real booleans; a template attribute would arrive as a string.
    value = data.get(key, False)
    return value is True or (isinstance(value, str) and value.lower() in {"true", "yes", "1"})


def parse_login_request(command: Command, body: bytes) -> LoginRequest:
    """The JSON Dovecot POSTs. Only ``login`` is required; the rest degrade gracefully."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError("body too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: JSON nested thousands deep ("[" * 5000), which the parser gives up
        # on. Still just a malformed body, not a crash.
        raise RequestError("malformed JSON") from None
    if not isinstance(data, dict):
        raise RequestError("not a JSON object")
    login = _text(data, "login").strip().lower()
    if not login or len(login) > 254:
        raise RequestError("login missing")
    service = _text(data, "protocol").strip().lower()
    if not login.isprintable():
        # NUL, other control characters, lone surrogates: no address holds one, PostgreSQL
        # refuses NUL in text and a lone surrogate cannot even be encoded for Redis. A bad
        # request, answered as an unknown address is. (A lone surrogate in another field is
        # found when it is encoded for Redis: see ``AuthPolicyApp.respond``.)
        raise RequestError("login has control characters")
    network, remote = client_network(_text(data, "remote"))
    return LoginRequest(
        command=command,
        login=login,
        protocol=PROTOCOLS.get(service),
        service=service,
        network=network,
        remote=remote,
        pwhash=_text(data, "pwhash")[:64],
        session_id=_text(data, "session_id")[:64],
        success=_flag(data, "success"),
        policy_reject=_flag(data, "policy_reject"),
        app_password_id=_id(_text(data, "app_password").strip()),
        password_key=_text(data, "password_key").strip().lower()[:16],
        client=client_name(_text(data, "device_id")),
    )


@dataclass(frozen=True)
class LoginLimits:
    """The thresholds, from settings (defaults and why: ``mailportal/settings.py``)."""

    check_interval: int = 300
    check_burst: int = 6
    program_check_burst: int = 2
    check_window: int = 60
    connections_per_check: int = 10
    max_delay: int = 15
    faulty_connections_per_hour: int = 300
    mailbox_failures: int = 10
    ip_failures: int = 30
    failure_window: int = 900
    known_ip_days: int = 30
    use_record_interval: int = 60
    state_ttl: int = 3600

    @classmethod
    def from_settings(cls) -> LoginLimits:
        return cls(
            check_interval=settings.AUTH_POLICY_CHECK_INTERVAL,
            check_burst=settings.AUTH_POLICY_CHECK_BURST,
            program_check_burst=settings.AUTH_POLICY_PROGRAM_CHECK_BURST,
            check_window=settings.AUTH_POLICY_CHECK_WINDOW,
            connections_per_check=settings.AUTH_POLICY_CONNECTIONS_PER_CHECK,
            max_delay=settings.AUTH_POLICY_MAX_DELAY,
            faulty_connections_per_hour=settings.AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR,
            mailbox_failures=settings.AUTH_POLICY_MAILBOX_FAILURES,
            ip_failures=settings.AUTH_POLICY_IP_FAILURES,
            failure_window=settings.AUTH_POLICY_FAILURE_WINDOW,
            known_ip_days=settings.AUTH_POLICY_KNOWN_IP_DAYS,
            use_record_interval=settings.AUTH_POLICY_USE_RECORD_INTERVAL,
            state_ttl=settings.AUTH_POLICY_STATE_TTL,
        )


@dataclass(frozen=True)
class PasswordScope:
    """A live password as the policy knows it: its id, key prefix, allowed protocols and
    the networks it may be used from (normalized CIDR ranges; empty: anywhere)."""

    id: int
    key: str
    protocols: frozenset[Protocol]
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class MailboxState:
    """What the database says about a mailbox, as cached in Redis for the hot path."""

    mailbox_id: int
    enabled: bool
    block_reason: str
    plan: str
    language: str
    passwords: tuple[PasswordScope, ...] = ()

    def password_for(self, request: LoginRequest) -> PasswordScope | None:
        """The live password the request is about: by the passdb's id once the password was
        checked, before that by the key prefix (see the module's docstring)."""
        for password in self.passwords:
            if request.app_password_id is not None:
                if password.id == request.app_password_id:
                    return password
            elif request.password_key and password.key == request.password_key:
                return password
        return None


@dataclass(frozen=True)
class Counters:
    """What the Redis script read for one ``allow`` (see ``auth_policy_store.py``)."""

    check_open: bool = False  # a check of this program is under way and has room
    check_tokens: float = 0.0  # checks left in the program's bucket
    mailbox_failures: int = 0
    mailbox_lock_seconds: int = 0
    ip_failures: int = 0
    ip_lock_seconds: int = 0
    known_network: bool = False  # this network logged in to the mailbox successfully lately


class Outcome(StrEnum):
    ALLOW = "allow"
    UNKNOWN = "unknown"
    ACCESS_OFF = "access_off"
    BLOCKED = "blocked"
    TOO_OFTEN = "too_often"
    DELAYED = "delayed"
    GUESSING = "guessing"
    WRONG_PROTOCOL = "wrong_protocol"
    FENCED = "fenced"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    status: int = 0
    retry_at: float | None = None  # unix time, for "come back after"
    block_reason: str = ""
    protocol: str = ""  # WRONG_PROTOCOL: the protocol refused ...
    allowed: tuple[str, ...] = ()  # ... and those the password may use
    address: str = ""  # FENCED: the client's address, outside the password's networks


def decide_allow(
    request: LoginRequest,
    state: MailboxState | None,
    counters: Counters,
    limits: LoginLimits,
    now: float,
) -> Verdict:
    """Before auth (and again after it): refuse, delay or let the passdb decide.

    Who learns what (threats.md: a stranger must not learn whether an address exists, uses
    mail programs, or why it is blocked). ``app_password_id`` is set only in the ``allow``
    Dovecot sends *after* the passdb verified the password (``%{passdb:app_password}``; the
    passdb view names the matching password, live or the one most recently ended, see
    migration 0012): only then is a switched-off or blocked mailbox told why. Before that, and
    for any wrong password, such a mailbox is answered exactly as an unknown address: the
    same verdict, the same bytes, and the same way on to the passdb, whose one indexed lookup
    finds no row for either and checks no hash, so neither answer is faster.
    """
    if state is not None and not state.enabled:
        if request.app_password_id is not None:
            if state.block_reason:
                return Verdict(Outcome.BLOCKED, -1, block_reason=state.block_reason)
            return Verdict(Outcome.ACCESS_OFF, -1)
        state = None
    if not counters.known_network:
        # The owner's usual networks are exempt from both locks: a guesser elsewhere must
        # not lock them out. The lock's message may be told before the password is checked:
        # it names no mailbox state, and unknown addresses (and switched-off or blocked
        # mailboxes) collect failures and are locked by the very same counters
        # (auth_policy_store.py), so being locked says nothing about whether an address
        # exists, uses mail programs or is blocked.
        if counters.mailbox_failures >= limits.mailbox_failures:
            return Verdict(Outcome.GUESSING, -1, retry_at=now + counters.mailbox_lock_seconds)
        if counters.ip_failures >= limits.ip_failures:
            return Verdict(Outcome.GUESSING, -1, retry_at=now + counters.ip_lock_seconds)
    if state is None:
        # Unknown users go on to the passdb, which fails them like a wrong password: a
        # distinct answer here would tell a stranger which addresses exist.
        return Verdict(Outcome.UNKNOWN)
    password = state.password_for(request)
    if (
        password is not None
        and request.protocol is not None
        and request.protocol not in password.protocols
    ):
        # The passdb has no row for it either; this only says why (SMTP AUTH can learn it no
        # other way). See the module's docstring for when the password is known here.
        return Verdict(
            Outcome.WRONG_PROTOCOL,
            -1,
            protocol=request.protocol.label,
            allowed=tuple(p.label for p in Protocol if p in password.protocols),
        )
    if (
        password is not None
        and password.networks
        and request.app_password_id is not None
        and not fences.allows(password.networks, request.remote)
    ):
        # Only once the passdb verified the password (``app_password_id``): a guess, even
        # one sharing the key prefix, must not learn that the password is fenced, or where.
        # Covers SMTP AUTH too, which Postfix asks of Dovecot with the client's address.
        return Verdict(Outcome.FENCED, -1, address=request.remote or "")
    checking = request.protocol in CHECKING_PROTOCOLS and not counters.check_open
    if checking and counters.check_tokens < 1:
        wait = (1 - counters.check_tokens) * limits.check_interval
        if wait <= limits.max_delay:
            # A program just a little early is slowed to the allowed pace, not refused.
            return Verdict(Outcome.DELAYED, max(1, math.ceil(round(wait, 3))))
        return Verdict(Outcome.TOO_OFTEN, -1, retry_at=now + wait)
    return Verdict(Outcome.ALLOW)


# What only the mailbox itself may be told, in its language. Every other refusal (the
# guessing lock) may reach a stranger and is told in the site's language: the mailbox's
# language would tell that the address exists, and what language its owner reads.
_OWNER_OUTCOMES = frozenset(
    {
        Outcome.BLOCKED,
        Outcome.ACCESS_OFF,
        Outcome.TOO_OFTEN,
        Outcome.WRONG_PROTOCOL,
        Outcome.FENCED,
    }
)


def answer_language(verdict: Verdict, state: MailboxState | None, default: str) -> str:
    """The language of a verdict's message (see ``_OWNER_OUTCOMES``)."""
    if state is not None and verdict.outcome in _OWNER_OUTCOMES:
        return state.language
    return default


def _clock_time(when: float) -> str:
    return (
        datetime.fromtimestamp(math.ceil(when / 60) * 60, UTC)
        .astimezone(ZoneInfo(settings.TIME_ZONE))
        .strftime("%H:%M")
    )


def verdict_message(verdict: Verdict, language: str, limits: LoginLimits) -> str:
    """The one line the mail program shows, in the mailbox's language."""
    with translation.override(language):
        if verdict.outcome == Outcome.BLOCKED:
            return str(BlockReason(verdict.block_reason).server_message)
        if verdict.outcome == Outcome.ACCESS_OFF:
            return str(ACCESS_OFF_SERVER_MESSAGE)
        if verdict.outcome == Outcome.TOO_OFTEN and verdict.retry_at is not None:
            minutes = max(1, limits.check_interval // 60)
            return ngettext(
                "Mail is checked too often: at most once in %(minutes)d minute is allowed. "
                "Try again after %(time)s.",
                "Mail is checked too often: at most once in %(minutes)d minutes is allowed. "
                "Try again after %(time)s.",
                minutes,
            ) % {"minutes": minutes, "time": _clock_time(verdict.retry_at)}
        if verdict.outcome == Outcome.WRONG_PROTOCOL:
            return gettext(
                "This password is not for %(protocol)s, only for %(allowed)s. Add a password "
                "that allows %(protocol)s in Settings."
            ) % {"protocol": verdict.protocol, "allowed": ", ".join(verdict.allowed)}
        if verdict.outcome == Outcome.FENCED:
            return gettext("This password may not be used from this network (%(address)s).") % {
                "address": verdict.address or "?"
            }
        if verdict.outcome == Outcome.GUESSING and verdict.retry_at is not None:
            return gettext("Too many failed logins. Try again after %(time)s.") % {
                "time": _clock_time(verdict.retry_at)
            }
    return ""


def answer(verdict: Verdict, language: str, limits: LoginLimits) -> dict[str, Any]:
    """The JSON Dovecot reads: ``status`` (-1 refuse, 0 allow, N>0 delay N s) and ``msg``."""
    message = verdict_message(verdict, language, limits) if verdict.status < 0 else ""
    return {"status": verdict.status, "msg": message}


def report_effects(request: LoginRequest) -> str:
    """What a report changes: "success", "failure" (a wrong password) or "none".

    A login the policy refused never reached the passdb, so it tested no password: counting
    it would keep a lock going by itself.
    """
    if request.success:
        return "success"
    if request.policy_reject:
        return "none"
    return "failure"


def store_mode(request: LoginRequest) -> str:
    """What the store does for a request, decided before it is asked: "allow" (read the
    counters for a decision), or what a report changes (``report_effects``)."""
    if request.command == Command.ALLOW:
        return "allow"
    return report_effects(request)
