"""SMTP sending limits on the web side: the Mail+ lifting date, the lifting job, the panel.

The policy daemon enforces the limits (``mailaccess/mailserver/smtp_policy.py``); this module
holds what the portal and the Celery jobs need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays
from django.utils import timezone

from accounts.models import Mailbox, Plan
from audit.models import AuditAction, AuditEvent
from common import metrics
from common.logging import log_event
from common.redis_urls import REDIS_ERRORS
from mailaccess import counters
from mailaccess.models import BlockReason, ExternalAccess, SendingLimit

log = logging.getLogger(__name__)

# Working days are those of the provider's staff in Riga, whatever the server's zone.
RIGA = ZoneInfo("Europe/Riga")
# "Lifting the limit can take up to two working days for a new Mail+ user."
LIFT_WORKING_DAYS = 2


@dataclass(frozen=True, slots=True)
class Limits:
    per_minute: int | None
    per_hour: int | None

    @property
    def unlimited(self) -> bool:
        return not self.per_minute and not self.per_hour


# The published limits, for a plan whose row is missing: deleting a row must not make the
# free plan unlimited. Support lifts a limit by emptying its fields instead.
DEFAULT_LIMITS = {Plan.FREE.value: Limits(5, 15), Plan.PLUS.value: Limits(None, None)}


def plan_limits() -> dict[str, Limits]:
    """The sending limits of every plan, from the database (one small query)."""
    table = dict(DEFAULT_LIMITS)
    for plan, per_minute, per_hour in SendingLimit.objects.values_list(
        "plan", "per_minute", "per_hour"
    ):
        table[plan] = Limits(per_minute, per_hour)
    return table


@cache
def _latvian_holidays() -> holidays.HolidayBase:
    # The library adds each year on first use and is maintained as the law changes
    # (including days off moved to a Saturday, which it lists as holidays).
    return holidays.country_holidays("LV")


def is_working_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _latvian_holidays()


def end_of_working_days(moment: datetime, days: int) -> datetime:
    """Midnight (Riga) ending the ``days``-th working day after the day of ``moment``.

    A Saturday working day (when Latvia moves a day off) is not counted: the date promised
    can only come a day late, never early.
    """
    day = timezone.localtime(moment, RIGA).date()
    left = days
    while left:
        day += timedelta(days=1)
        if is_working_day(day):
            left -= 1
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=RIGA)


def limits_lift_at(upgraded_at: datetime) -> datetime:
    return end_of_working_days(upgraded_at, LIFT_WORKING_DAYS)


# "Up to two working days": the wait exists so that a stolen or spamming mailbox cannot buy
# its way past the free limits. A mailbox that has given no sign of either gets Mail+ at once.
GOOD_STANDING_DAYS = 30
# Blocks that say something went wrong with the mailbox's sending or its password. Idle and
# inactive blocks only say access went unused, which is no reason to make an owner wait.
MISUSE_BLOCKS = (
    BlockReason.HOURLY_LIMIT,
    BlockReason.COMPROMISED,
    BlockReason.FAULTY_PROGRAM,
    BlockReason.SUPPORT,
)


def in_good_standing(mailbox: Mailbox, now: datetime) -> bool:
    """No misuse block in the last 30 days and no stolen password waiting to be changed.

    Reads the audit trail (one indexed query on the mailbox's recent events): with
    AUDIT_RETENTION_DAYS below 30 older blocks are forgotten sooner, so keep it above.
    """
    if ExternalAccess.objects.filter(mailbox=mailbox, requires_password_change=True).exists():
        return False
    return not AuditEvent.objects.filter(
        mailbox=mailbox,
        action=AuditAction.ACCESS_BLOCKED,
        reason__in=MISUSE_BLOCKS,
        created_at__gte=now - timedelta(days=GOOD_STANDING_DAYS),
    ).exists()


def lift_day(lift_at: datetime) -> date:
    """The last working day the lifting may take, for the panel ("by 20 November")."""
    return timezone.localtime(lift_at, RIGA).date() - timedelta(days=1)


def lift_due_sending_limits(now: datetime | None = None) -> int:
    """Lift the free limits of every Mail+ mailbox whose date has come; returns how many.

    One UPDATE for all of them, for a Celery beat job (hourly is plenty). Not audited per
    mailbox: the plan change that set the date was, and its detail records the date.
    """
    now = now or timezone.now()
    return Mailbox.objects.filter(sending_limits_lift_at__lte=now).update(
        sending_limits_lift_at=None
    )


@dataclass(frozen=True)
class SendingPanel:
    """What the panel shows about sending limits; None usage when Redis did not answer."""

    per_minute: int | None
    per_hour: int | None
    last_minute: int | None
    last_hour: int | None
    lift_day: date | None
    # The lifting waits because of a recent misuse block (the panel says so), not by default.
    waits_for_standing: bool = False


def sending_panel(mailbox: Mailbox) -> SendingPanel | None:
    """Usage against the limits that apply now; None when no limit applies (Mail+)."""
    now = timezone.now()
    limits = plan_limits()[mailbox.sending_plan(now)]
    if limits.unlimited:
        return None
    last_minute = last_hour = None
    try:
        usage = counters.read_usage(mailbox.address, int(now.timestamp() * 1000))
        last_minute, last_hour = usage.last_minute, usage.last_hour
    except REDIS_ERRORS as error:
        metrics.REDIS_ERRORS.labels(service="web").inc()
        log_event(
            log,
            "sending_limits.usage_unavailable",
            logging.WARNING,
            mailbox=mailbox.address,
            error=type(error).__name__,
        )
    pending = mailbox.sending_limits_lift_at
    waiting = pending is not None and pending > now
    return SendingPanel(
        per_minute=limits.per_minute,
        per_hour=limits.per_hour,
        last_minute=last_minute,
        last_hour=last_hour,
        lift_day=lift_day(pending) if pending is not None and waiting else None,
        waits_for_standing=waiting and not in_good_standing(mailbox, now),
    )
