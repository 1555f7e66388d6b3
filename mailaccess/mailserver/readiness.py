"""``/readyz`` of both policy servers: one check, so the two answer alike.

Redis is asked through the server's own pipelined connection and PostgreSQL through the
server's own database threads, not through fresh connections: what must be ready is what the
decisions use (a pool whose threads are all stuck behind a lock answers "TimeoutError").
The portal's own readiness (``common.health.readiness``) is synchronous and checks the web's
connections instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from django.conf import settings
from redis.exceptions import RedisError

from common import metrics
from mailaccess.mailserver.redis_pipeline import RedisPipeline

Checks = dict[str, str]


async def policy_server_readiness(
    client: RedisPipeline,
    check_database: Callable[[float], Awaitable[str]],
    *,
    service: str,
) -> tuple[bool, Checks]:
    """``check_database(timeout)`` runs ``common.health.check_database`` on the server's
    threads and raises TimeoutError when they do not answer within the timeout."""
    timeout = settings.HEALTH_CHECK_TIMEOUT
    checks = {"redis": "ok", "database": "ok"}
    try:
        await asyncio.wait_for(client.execute("PING"), timeout)
    except (RedisError, OSError, TimeoutError) as error:
        metrics.REDIS_ERRORS.labels(service=service).inc()
        checks["redis"] = type(error).__name__
    try:
        checks["database"] = await check_database(timeout)
    except TimeoutError:
        checks["database"] = "TimeoutError"
    return all(value == "ok" for value in checks.values()), checks
