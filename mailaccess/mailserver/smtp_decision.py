"""The SMTP policy daemon's decision, as pure functions: what a Postfix request asks us to
check, and what a cached mailbox, its plan's limits and the counters' reply mean for Postfix.

No Redis, no database, no clock: ``smtp_policy.py`` feeds these functions what it cached and
what Redis replied, and does what they say (count, defer, block), as ``auth_policy.py`` does
for Dovecot. So every rule is unit-tested without a server.

Product rules that change access (a block, "compromised") are not decided here: the daemon
asks ``mailaccess.actions`` for them, as every other caller does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from django.utils import translation
from django.utils.translation import gettext, ngettext

from accounts.models import Plan
from mailaccess import passdb
from mailaccess.mailserver import bounce_tags, sending_counters
from mailaccess.mailserver.postfix_policy import PostfixRequest, defer_if_permit, dunno, reject
from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, BlockReason
from mailaccess.sending_limits import DEFAULT_LIMITS, Limits

BOUNCE_SENDERS = {"", "<>", "mailer-daemon"}
DUNNO = dunno()


def is_bounce_sender(sender: str) -> bool:
    """Delivery reports come from the null sender; some old MTAs use MAILER-DAEMON@host."""
    return sender in BOUNCE_SENDERS or sender.partition("@")[0] == "mailer-daemon"


class Check(Enum):
    """What a request asks the daemon to check."""

    DATA = "data"  # a signed-in sender at DATA: a read-only check of the limits
    END_OF_MESSAGE = "end_of_message"  # the same check and the count, atomically
    BOUNCE = "bounce"  # a delivery report to a tagged envelope sender: count it


def what_to_check(request: PostfixRequest) -> tuple[Check, str] | None:
    """The check and whom it is about (the sender's login, or the bounce's recipient);
    None: nothing to check, the answer is DUNNO."""
    if request.request != "smtpd_access_policy":
        return None
    state = request.protocol_state
    address = request.sasl_username
    if address:
        if state == "DATA":
            return Check.DATA, address
        if state == "END-OF-MESSAGE":
            return Check.END_OF_MESSAGE, address
        return None
    if (
        # After DATA only: a RCPT costs a stranger nothing and proves nothing. A delivery
        # report goes to one address, the envelope sender of the message it reports;
        # Postfix names the recipient here only when the message has exactly one.
        state == "END-OF-MESSAGE"
        and request.policy_context != "submission"
        and is_bounce_sender(request.sender)
        and request.recipient.startswith(bounce_tags.PREFIX)
    ):
        return Check.BOUNCE, request.recipient
    return None


@dataclass(frozen=True, slots=True)
class Sender:
    """What the daemon needs of a mailbox, cached; ``lift_at`` in epoch milliseconds."""

    mailbox_id: int
    address: str
    plan: str
    lift_at: int | None
    language: str
    # The mailbox's Redis keys, packed once (``sending_counters.packed_send_keys``), and the
    # start of its DATA check (``sending_counters.packed_hour_count_prefix``).
    packed_keys: bytes
    packed_hour_count: bytes
    # Why the mailbox may not send: its block reason, "access_off", or "" (access on).
    refused: str = ""

    def sending_plan(self, now_ms: int) -> str:
        """Mirror of ``Mailbox.sending_plan`` on the cached copy."""
        if self.lift_at is not None and self.lift_at > now_ms:
            return Plan.FREE.value
        return self.plan


def refusal_reason(enabled: bool, block_reason: str | None) -> str:
    """``Sender.refused`` of a mailbox's access row."""
    return block_reason or ("" if enabled else passdb.ACCESS_OFF_CODE)


@lru_cache(maxsize=256)
def refusal(refused: str, language: str) -> str:
    """The REJECT for a blocked or switched-off sender, its reason in the owner's language:
    the same one line IMAP, POP3 and SMTP AUTH show."""
    with translation.override(language):
        if refused == passdb.ACCESS_OFF_CODE:
            return reject(str(ACCESS_OFF_SERVER_MESSAGE))
        return reject(str(BlockReason(refused).server_message))


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """A plan's limits as a check uses them, worked out once per plan."""

    limits: Limits
    # Per minute and per hour in Redis's protocol (``sending_counters.packed_limits``).
    packed: bytes
    # Fewer messages than this in the last hour are within every limit (the last minute's
    # messages are among them); 0 for a plan without limits, which is never checked.
    within_below: int

    @classmethod
    def of(cls, limits: Limits) -> PlanLimits:
        return cls(
            limits,
            sending_counters.packed_limits(limits.per_minute, limits.per_hour),
            min((limit for limit in (limits.per_minute, limits.per_hour) if limit), default=0),
        )


# A plan the limits table does not name gets the free plan's published limits.
UNKNOWN_PLAN_LIMITS = PlanLimits.of(DEFAULT_LIMITS[Plan.FREE])


# A mail program over its limit retries again and again: the few distinct replies are
# rendered once (switching Django's language costs more than the whole Redis check).
@lru_cache(maxsize=1024)
def over_minute_reply(language: str, limit: int, seconds: int) -> str:
    with translation.override(language):
        return defer_if_permit(
            ngettext(
                "Sending limit of %(limit)s messages a minute reached. "
                "Try again in %(seconds)s second.",
                "Sending limit of %(limit)s messages a minute reached. "
                "Try again in %(seconds)s seconds.",
                seconds,
            )
            % {"limit": limit, "seconds": seconds}
        )


@lru_cache(maxsize=1024)
def over_hour_reply(language: str, limit: int, minutes: int) -> str:
    with translation.override(language):
        return defer_if_permit(
            ngettext(
                "Sending limit of %(limit)s messages an hour reached. "
                "Try again in %(minutes)s minute.",
                "Sending limit of %(limit)s messages an hour reached. "
                "Try again in %(minutes)s minutes.",
                minutes,
            )
            % {"limit": limit, "minutes": minutes}
        )


@lru_cache(maxsize=64)
def hourly_block_reply(language: str) -> str:
    with translation.override(language):
        return reject(str(BlockReason.HOURLY_LIMIT.server_message))


def fallback_action(on_redis_error: str) -> str:
    """The answer when the counters cannot be reached (setting SMTP_POLICY_ON_REDIS_ERROR).

    The default lets mail through: a mail program does not retry a 4xx by itself, so
    deferring would turn a Redis outage into every customer's outage, while a spammer
    gains minutes at most (Postfix's own anvil rate limits still apply).
    """
    if on_redis_error == "defer":
        return defer_if_permit(
            gettext("Sending is unavailable for a moment. Please try again in a few minutes.")
        )
    return DUNNO


def deferred_reply(sender: Sender, limits: Limits, retry_at: int, now_ms: int) -> str | None:
    """The answer to a mailbox remembered as deferred for its per-minute limit until
    ``retry_at``; None: the deferral is over (or the limit is gone), ask Redis.

    Until the retry time Redis has given, its answer cannot change: nothing is counted for a
    mailbox while it is over a limit.
    """
    if retry_at <= now_ms or not limits.per_minute:
        return None
    seconds = max(1, math.ceil((retry_at - now_ms) / 1000))
    return over_minute_reply(sender.language, limits.per_minute, seconds)


@dataclass(frozen=True, slots=True)
class OverLimit:
    """What the send script's refusal means: the answer, and what the daemon must do."""

    action: str
    # The per-minute deferral's end (epoch ms), to answer the retries without Redis.
    deferred_until: int | None = None
    # The first message over the hourly limit: block the mailbox (``actions``), having sent
    # this many in the hour.
    block_sent_last_hour: int | None = None


def over_limit(sender: Sender, limits: Limits, reply: Sequence[Any], now_ms: int) -> OverLimit:
    """The send script's reply other than 0: verdict, ms until a retry helps (and for a
    block, the messages of the hour)."""
    verdict = reply[0]
    wait_ms = int(reply[1])
    if verdict == b"minute":
        seconds = max(1, math.ceil(wait_ms / 1000))
        return OverLimit(
            over_minute_reply(sender.language, limits.per_minute or 0, seconds),
            deferred_until=now_ms + wait_ms,
        )
    if verdict == b"hour":
        minutes = max(1, math.ceil(wait_ms / 60_000))
        return OverLimit(over_hour_reply(sender.language, limits.per_hour or 0, minutes))
    # 'hour_block': the first message over the hourly limit in this window.
    return OverLimit(
        hourly_block_reply(sender.language),
        block_sent_last_hour=int(reply[2]),
    )


def bounce_flood(reply: Sequence[Any]) -> int | None:
    """The bounce script's reply: the bounces of the last hour when they make a flood (the
    mailbox is to be blocked as compromised), else None."""
    if reply[0] == b"block":
        return int(reply[1])
    return None
