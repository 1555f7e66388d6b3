"""One Redis connection pool per process, shared by every request of that process.

A client per request (as some policy daemons do) costs a TCP handshake per decision; the
pool keeps connections open across requests.
"""

from __future__ import annotations

from functools import cache

import redis
import redis.asyncio
from django.conf import settings


def mailbox_key(kind: str, mailbox: str) -> str:
    """A Redis key for one mailbox's counters.

    The ``{...}`` hash tag puts every key of one mailbox in the same Redis Cluster slot, so
    a Lua script may touch several of them and the counters can shard across a cluster.
    """
    return f"mp:{{{mailbox}}}:{kind}"


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(
        settings.MAILSERVER_REDIS_URL,
        socket_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        socket_connect_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        decode_responses=True,
    )


@cache
def async_client() -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        settings.MAILSERVER_REDIS_URL,
        socket_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        socket_connect_timeout=settings.MAILSERVER_REDIS_TIMEOUT,
        decode_responses=True,
    )
