"""Redis URLs, one Redis or a Redis Cluster, and redis-py clients for them.

The accepted forms (``REDIS_URL``, ``MAILSERVER_REDIS_URL``):
- one Redis: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS, with
  redis-py's ``ssl_*`` query parameters) or ``unix:///path?db=N``;
- a Redis Cluster: ``redis+cluster://[[user]:password@]host:port[,host:port...][/]``, or
  ``rediss+cluster://...`` for TLS (the same ``ssl_*`` parameters). The nodes named are where
  the clients start: they learn the others from the cluster itself (CLUSTER SLOTS), so naming
  two or three masters is enough and survives one of them being down. A cluster has only
  database 0.

redis-py's own ``RedisCluster.from_url`` takes ``redis://host:port`` of one node, which reads
the same as one Redis; the ``+cluster`` scheme says which one is meant, so a single Redis is
never mistaken for a cluster or the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# What the portal's code holds: a client of one Redis or of a cluster (same commands).
Client = redis.Redis | RedisCluster
# What a failed Redis raises: redis-py's cluster client raises RedisClusterException, which is
# no RedisError, when it cannot reach any node to read the slot map (at its first command, or
# again after a failover). Callers that carry on without Redis catch both.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and str(url).partition("://")[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterUrl:
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    # The last value of each query parameter (redis-py's ssl_* names).
    query: dict[str, str]


def parse_cluster_url(url: str) -> ClusterUrl:
    """Raises ValueError naming what is wrong, never the URL itself (it may hold a password)."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("Redis Cluster URL: expected redis+cluster:// or rediss+cluster://")
    location, _, query_text = rest.partition("?")
    netloc, _, path = location.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster URL: a cluster has only database 0")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = credentials.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
        if not colon:
            # redis://secret@host means a password alone, as redis-py reads it.
            username, password = None, unquote(user_text)
    nodes = []
    for node in hosts.split(","):
        host, colon, port = node.strip().rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ValueError("Redis Cluster URL: every node must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    query = {name: values[-1] for name, values in parse_qs(query_text).items()}
    return ClusterUrl(tuple(nodes), username, password, scheme.lower() == "rediss+cluster", query)


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """redis-py's cluster client for a ``redis+cluster://`` URL; ``options`` as for
    ``RedisCluster`` (timeouts, ``decode_responses``)."""
    parsed = parse_cluster_url(url)
    if parsed.tls:
        options["ssl"] = True
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if name in parsed.query:
                options[name] = parsed.query[name]
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in parsed.nodes
        ],
        username=parsed.username,
        password=parsed.password,
        **options,
    )


def client_from_url(url: str, **options: Any) -> Client:
    """A client of one Redis (``redis.Redis.from_url``) or of a cluster, by the URL's form."""
    if is_cluster_url(url):
        return cluster_client(url, **options)
    return redis.Redis.from_url(url, **options)


def subscription_urls(url: str) -> list[str]:
    """Where to SUBSCRIBE for what is PUBLISHed through ``url``: the URL itself, or for a
    cluster each node it names as a one-Redis URL (a cluster forwards every PUBLISH to every
    node, so one node's subscription hears all of it)."""
    if not is_cluster_url(url):
        return [url]
    parsed = parse_cluster_url(url)
    credentials = ""
    if parsed.username or parsed.password is not None:
        credentials = f"{quote(parsed.username or '', safe='')}:"
        credentials += f"{quote(parsed.password or '', safe='')}@"
    scheme = "rediss" if parsed.tls else "redis"
    query = f"?{urlencode(parsed.query)}" if parsed.query else ""
    return [
        f"{scheme}://{credentials}{f'[{host}]' if ':' in host else host}:{port}/0{query}"
        for host, port in parsed.nodes
    ]
