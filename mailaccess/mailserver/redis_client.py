"""The synchronous Redis client of the web app, the jobs and the access-change hooks: one
connection pool per process, shared by every request of that process.

A client per request (as some policy daemons do) costs a TCP handshake per decision; the
pool keeps connections open across requests. The policy servers keep their own single
pipelined connection (auth_policy_redis.py, redis_pipeline.py).
"""

from __future__ import annotations

from functools import cache

import redis
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
