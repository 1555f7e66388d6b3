"""The mail servers' state in Redis as the rest of the portal sees it: key names, the portal's
Redis client, and read-only questions about a mailbox's counters.

The policy servers write these keys (``mailserver/smtp_policy.py`` with the scripts of
``mailserver/sending_counters.py``, ``mailserver/auth_policy_store.py``); they take the key
names from here, and the web side (the panel, ``access_story``, the access actions'
invalidation) reads through here only, never through the servers' modules.

Every key of one mailbox is ``mp:{address}:kind``: the ``{...}`` hash tag puts them in one
Redis Cluster slot, so a Lua script may touch several of them and the counters can shard
across a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.conf import settings

from common import redis_urls

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def mailbox_key(kind: str, mailbox: str) -> str:
    return f"mp:{{{mailbox}}}:{kind}"


# -- the sending limits (SMTP policy) ---------------------------------------------------------


def sent_key(address: str) -> str:
    """Sorted set: the messages sent through SMTP in the last hour, scored by time (ms)."""
    return mailbox_key("smtp-sent", address)


def hourly_blocked_key(address: str) -> str:
    return mailbox_key("smtp-hour-blocked", address)


def last_sent_key(address: str) -> str:
    return mailbox_key("smtp-last-sent", address)


def bounces_key(address: str) -> str:
    """Sorted set: the distinct messages of the last hour that bounced, by when sent (ms)."""
    return mailbox_key("bounces", address)


def bounce_reported_key(address: str) -> str:
    return mailbox_key("bounces-reported", address)


# -- the auth policy --------------------------------------------------------------------------


def state_key(login: str) -> str:
    """Hash: the database's view of the mailbox, cached (``mailserver/state.py``)."""
    return mailbox_key("state", login)


def generation_key(login: str) -> str:
    return mailbox_key("gen", login)


def failures_key(login: str) -> str:
    """Sorted set: the distinct wrong passwords, by when (seconds)."""
    return mailbox_key("fails", login)


def network_failures_key(network: str) -> str:
    """Sorted set: the distinct (login, wrong password) pairs from one client network."""
    return mailbox_key("fails", f"net:{network}")


def networks_key(login: str) -> str:
    """Sorted set: networks that logged in successfully, by last time (seconds)."""
    return mailbox_key("nets", login)


def connections_key(login: str) -> str:
    """Hash ``level``, ``ts``: successful connections, a leaky bucket drained per hour."""
    return mailbox_key("conns", login)


def check_key(login: str, protocol: str, program: str) -> str:
    """Hash ``tokens``, ``ts``, ``start``, ``conns``: one mail program's check bucket
    (``auth_policy.check_program``: its password's key, or its network)."""
    return mailbox_key(f"check:{protocol}:{program}", login)


def used_key(login: str, protocol: str, network: str, password: int | str) -> str:
    """When the last use of one password (its id or key) was written to the database."""
    return mailbox_key(f"used:{protocol}:{network}:{password}", login)


# -- reading ------------------------------------------------------------------------------


@cache
def sync_client() -> redis_urls.Client:
    """The portal's client (web, jobs, access-change hooks): one connection pool per process
    (per node of a cluster), shared by every request, so a decision costs no TCP handshake.
    Replies decoded."""
    return redis_urls.client_from_url(
        settings.MAILSERVER_REDIS_URL,
        socket_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        socket_connect_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        decode_responses=True,
    )


@dataclass(frozen=True)
class Usage:
    last_minute: int
    last_hour: int


def read_usage(address: str, now_ms: int, client: redis_urls.Client | None = None) -> Usage:
    """Messages sent through SMTP in the last minute and hour (read-only)."""
    pipe = (client or sync_client()).pipeline(transaction=False)
    key = sent_key(address)
    pipe.zcount(key, f"({now_ms - MINUTE_MS}", "+inf")
    pipe.zcount(key, f"({now_ms - HOUR_MS}", "+inf")
    minute, hour = pipe.execute()
    return Usage(int(minute), int(hour))


def bounces_last_hour(address: str, now_ms: int, client: redis_urls.Client | None = None) -> int:
    """Bounces of the mailbox's own messages in the last hour, each message once."""
    return int((client or sync_client()).zcount(bounces_key(address), now_ms - HOUR_MS, "+inf"))
