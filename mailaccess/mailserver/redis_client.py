"""The synchronous Redis client of the web app, the jobs and the access-change hooks: one
connection pool per process, shared by every request of that process.

A client per request (as some policy daemons do) costs a TCP handshake per decision; the
pool keeps connections open across requests. The policy servers keep their own single
pipelined connection (auth_policy_redis.py, redis_pipeline.py), with the TLS settings
``tls_context`` reads from the same URL.
"""

from __future__ import annotations

import ssl
from functools import cache
from urllib.parse import parse_qs, urlsplit

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


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS settings of a ``rediss://`` URL, in redis-py's query parameters (the portal
    reads the same URL with redis-py): ``ssl_ca_certs`` (the CA file; the system's CAs by
    default), ``ssl_cert_reqs`` (``required``, the default, or ``none``; to a client
    ``optional`` means ``required``), ``ssl_certfile`` and ``ssl_keyfile`` (a client
    certificate, for a Redis with ``tls-auth-clients yes``)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    # Errors name the parameter, not the URL: the URL may hold Redis's password.
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    requirement = query.get("ssl_cert_reqs", "required").lower()
    if requirement not in ("required", "optional", "none"):
        raise ValueError("Redis URL: ssl_cert_reqs must be required or none")
    try:
        context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
        if "ssl_certfile" in query:
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"Redis URL: cannot load its TLS files ({error})") from error
    if requirement == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
