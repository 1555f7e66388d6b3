"""Celery tasks: thin. Each calls a job or the mailer and retries with back-off when the error
passes by itself (a lost database, SMTP or Redis connection).

Every task is idempotent, so acks_late (settings) may run one twice after a worker dies: the
jobs take only rows still due, and a notice is e-mailed only while ``emailed_at`` is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from smtplib import SMTPRecipientsRefused
from typing import TypedDict

import redis
from celery import shared_task
from django.conf import settings
from django.core.mail import get_connection
from django.db import InterfaceError, OperationalError

from accounts.models import Mailbox
from common.logging import log_event
from mailaccess import jobs, notices, sessions
from mailaccess.mailserver import state

logger = logging.getLogger(__name__)

# OSError covers SMTP (smtplib.SMTPException is one) and socket errors.
TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Redis Cluster none of whose nodes answered (common/redis_urls.py).
    redis.exceptions.RedisClusterException,
)


class RetryOptions(TypedDict):
    """Celery's retry options, each named: a plain dict would leave ``shared_task`` untyped."""

    acks_late: bool
    autoretry_for: Sequence[type[BaseException]]
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool
    max_retries: int


RETRIED: RetryOptions = {
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 10,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 8,
}


@shared_task(**RETRIED)
def block_inactive_access() -> int:
    return jobs.run("block_inactive_access")


@shared_task(**RETRIED)
def block_idle_access() -> int:
    return jobs.run("block_idle_access")


@shared_task(**RETRIED)
def warn_expiring_access() -> int:
    return jobs.run("warn_expiring_access")


@shared_task(**RETRIED)
def mark_inactive_mailboxes() -> int:
    return jobs.run("mark_inactive_mailboxes")


@shared_task(**RETRIED)
def lift_due_sending_limits() -> int:
    return jobs.run("lift_due_sending_limits")


@shared_task(**RETRIED)
def prune_old_records() -> int:
    return jobs.run("prune_old_records")


@shared_task(**RETRIED)
def send_pending_notices() -> int:
    return jobs.run("send_pending_notices")


@shared_task(**RETRIED)
def compact_activity() -> int:
    return jobs.run("compact_activity")


@shared_task(**RETRIED)
def send_notices(notice_ids: list[int]) -> int:
    """E-mail these notices over one SMTP connection; those sent already are skipped."""
    sent = 0
    with get_connection() as connection:
        for notice_id in notice_ids:
            try:
                sent += notices.send_notice(notice_id, connection=connection)
            except SMTPRecipientsRefused:
                # Permanent for this address: retrying the task would not help the others.
                log_event(logger, "notice.refused", logging.WARNING, notice=notice_id)
    return sent


# Notices per task: one SMTP connection serves them all, and a retry repeats few.
NOTICES_PER_TASK = 100


def queue_notices(notice_ids: Sequence[int]) -> None:
    """Queue the e-mails of new notices (runs after commit). Never raises.

    Without a broker the task runs here and now (eager mode). If the broker cannot be
    reached, the notices stay unsent and the ``send_pending_notices`` job queues them again:
    the block itself has committed and must not fail because of its notice.
    """
    for start in range(0, len(notice_ids), NOTICES_PER_TASK):
        chunk = list(notice_ids[start : start + NOTICES_PER_TASK])
        try:
            send_notices.delay(chunk)
        except Exception:
            # The sweep job (send_pending_notices) queues them again.
            log_event(
                logger,
                "notice.not_queued",
                logging.ERROR,
                exc_info=True,
                notices=" ".join(map(str, chunk)),
            )


def _address_chunks(mailbox_ids: Sequence[int]) -> Iterator[list[str]]:
    """The mailboxes' addresses, as many per doveadm call as one call takes."""
    addresses = list(Mailbox.objects.filter(pk__in=mailbox_ids).values_list("address", flat=True))
    for start in range(0, len(addresses), sessions.ADDRESSES_PER_CALL):
        yield addresses[start : start + sessions.ADDRESSES_PER_CALL]


KICK_RETRIES: RetryOptions = {
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 12,
}


@shared_task(**KICK_RETRIES)
def end_sessions_of(url: str, mailbox_ids: list[int]) -> None:
    """Kick these mailboxes' IMAP and POP3 sessions on one Dovecot, as many addresses per
    request as one takes; retried until it answers (DoveadmError is an OSError). A kick twice
    ends nothing more, so a retry simply runs the whole change again."""
    for addresses in _address_chunks(mailbox_ids):
        sessions.kick(url, addresses)


@shared_task(**KICK_RETRIES)
def end_sessions(url: str, addresses: list[str]) -> None:
    """``end_sessions_of`` by addresses: what was queued before it, still run after an upgrade."""
    sessions.kick(url, addresses)


def queue_end_sessions(mailbox_ids: Sequence[int]) -> None:
    """End these mailboxes' sessions on every Dovecot server (runs after commit). Never raises.

    One task per server for the whole change, taking the ids: a job's batch of a thousand
    blocks queues one message per server and reads no address in the job's process.
    """
    urls = settings.DOVEADM_API_URL
    if not urls or not mailbox_ids:
        return
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # No worker: once, bounded by the timeout, instead of eager retries that would hold
        # the request for minutes.
        for chunk in _address_chunks(mailbox_ids):
            for url in urls:
                try:
                    sessions.kick(url, chunk)
                except Exception as error:
                    _not_done("sessions.not_ended", url, ",".join(chunk[:5]), error)
        return
    for url in urls:
        try:
            end_sessions_of.delay(url, list(mailbox_ids))
        except Exception as error:
            _not_done("sessions.not_ended", url, _ids(mailbox_ids), error)


def _ids(mailbox_ids: Sequence[int]) -> str:
    """The first few ids of a change, for a log line (its addresses are not read here)."""
    return ",".join(map(str, mailbox_ids[:5]))


def _not_done(event: str, url: str, mailboxes: str, error: BaseException) -> None:
    log_event(
        logger,
        event,
        logging.ERROR,
        mailbox=mailboxes,
        server=url,
        error=type(error).__name__,
    )


# --- Dovecot's auth cache (deploy/dovecot/dovecot.conf: auth_cache_*) ------------------------
# Every access change flushes the mailbox's cached passdb replies on every Dovecot, first
# directly from the process that committed it (the web request, the worker running a job), with
# a short timeout: "refused within a second" cannot wait for a queue that may hold a job's
# thousands of kicks, and the embedded default has no worker at all. Only if that fails
# (Dovecot restarting, a network blip) does a Celery task retry it, so that the stale entry lives
# seconds rather than until its TTL; where no worker runs, the TTL is the bound.

# Seconds one direct flush may hold the commit's process: Dovecot answers on loopback or LAN in
# about a millisecond, so a second means it is not answering, and the task takes over.
FLUSH_TIMEOUT = 1.0
# A change of more mailboxes than one flush request takes is a job's batch (an action changes
# one mailbox): it is flushed by one task per server, taking the ids, so that the job does not
# wait for doveadm's answers nor read the addresses once more per batch. Those mailboxes were
# switched off by a job (idle, inactive), not because someone else has their password, and
# the auth policy refuses them at once anyway; the auth cache only answers while it is down.
DIRECT_FLUSH_MAX = sessions.ADDRESSES_PER_CALL

FLUSH_RETRIES: RetryOptions = {
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    # 1+2+4+...+60 s: about ten minutes of tries, the auth cache's TTL; after it the entry has
    # expired by itself and there is nothing left to flush.
    "max_retries": 14,
}


@shared_task(**FLUSH_RETRIES)
def flush_auth_cache(url: str, addresses: list[str]) -> None:
    """Remove these mailboxes' entries from one Dovecot's auth cache; retried until it answers.
    A flush twice removes nothing more: safe to run again."""
    sessions.flush_auth_cache(url, addresses)


@shared_task(**FLUSH_RETRIES)
def flush_auth_cache_of(url: str, mailbox_ids: list[int]) -> None:
    """``flush_auth_cache`` for a job's batch, by ids: the addresses are read here, as many
    per request as one takes; a retry flushes the whole batch again."""
    for addresses in _address_chunks(mailbox_ids):
        sessions.flush_auth_cache(url, addresses)


@shared_task(**RETRIED)
def invalidate_states(mailbox_ids: list[int]) -> None:
    """Forget the auth policy's cached states of these mailboxes; retried while Redis fails."""
    addresses = list(Mailbox.objects.filter(pk__in=mailbox_ids).values_list("address", flat=True))
    if addresses:
        state.invalidate_addresses(addresses)


def queue_invalidate_states(mailbox_ids: Sequence[int]) -> None:
    """After an access change's commit: forget the cached states now, and by a retried task
    where Redis failed, so a switch-off reaches the policy before the state's hour is up.
    Never raises."""
    if not mailbox_ids or state.invalidate(mailbox_ids):
        return
    if settings.CELERY_TASK_ALWAYS_EAGER:  # no worker: nothing would retry it
        return
    try:
        invalidate_states.delay(list(mailbox_ids))
    except Exception as error:
        log_event(
            logger,
            "auth_policy.invalidation_not_queued",
            logging.ERROR,
            mailboxes=len(mailbox_ids),
            error=type(error).__name__,
        )


def queue_flush_auth_cache(mailbox_ids: Sequence[int]) -> None:
    """After an access change's commit: flush these mailboxes' auth-cache entries on every
    Dovecot server, now, and by a retried task where that failed; a job's batch by one task
    per server (``DIRECT_FLUSH_MAX``). Never raises."""
    urls = settings.DOVEADM_API_URL
    if not urls or not mailbox_ids:
        return
    if len(mailbox_ids) > DIRECT_FLUSH_MAX and not settings.CELERY_TASK_ALWAYS_EAGER:
        for url in urls:
            try:
                flush_auth_cache_of.delay(url, list(mailbox_ids))
            except Exception as error:
                _not_done("auth_cache.not_flushed", url, _ids(mailbox_ids), error)
        return
    for chunk in _address_chunks(mailbox_ids):
        for url in urls:
            try:
                sessions.flush_auth_cache(url, chunk, timeout=FLUSH_TIMEOUT)
                continue
            except Exception as error:
                failure = error
            queued = False
            if not settings.CELERY_TASK_ALWAYS_EAGER:  # no worker: nothing would retry it
                try:
                    flush_auth_cache.delay(url, chunk)
                    queued = True
                except Exception as error:
                    failure = error
            log_event(
                logger,
                "auth_cache.flush_queued" if queued else "auth_cache.not_flushed",
                logging.WARNING if queued else logging.ERROR,
                mailbox=",".join(chunk[:5]),
                server=url,
                error=type(failure).__name__,
            )
