"""/readyz of both policy servers, as a load balancer reads it: ready only when Redis answers
through the server's own connection and PostgreSQL through the server's own threads, and
otherwise naming what failed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailaccess.mailserver.asgi import AuthPolicyApp
from mailaccess.mailserver.readiness import policy_server_readiness
from mailaccess.mailserver.redis_pipeline import RedisPipeline
from tests.conftest import needs_redis, redis_url_for_tests
from tests.policy_client import closed_port


async def database_ok(timeout: float) -> str:
    return "ok"


async def database_hung(timeout: float) -> str:
    raise TimeoutError


async def readiness_of(url: str, check_database: Any) -> tuple[bool, dict[str, str]]:
    client = RedisPipeline(url, timeout=0.5)
    try:
        return await policy_server_readiness(client, check_database, service="smtp_policy")
    finally:
        await client.aclose()


@needs_redis
def test_ready_when_redis_and_the_database_threads_answer(settings: Any) -> None:
    settings.HEALTH_CHECK_TIMEOUT = 1
    assert asyncio.run(readiness_of(redis_url_for_tests(), database_ok)) == (
        True,
        {"redis": "ok", "database": "ok"},
    )


def test_not_ready_names_what_failed(settings: Any) -> None:
    settings.HEALTH_CHECK_TIMEOUT = 0.5
    url = f"redis://127.0.0.1:{closed_port()}/0"
    assert asyncio.run(readiness_of(url, database_hung)) == (
        False,
        {"redis": "ConnectionError", "database": "TimeoutError"},
    )


@pytest.mark.django_db(transaction=True)
def test_the_auth_policy_reports_its_own_redis_and_database(settings: Any) -> None:
    settings.HEALTH_CHECK_TIMEOUT = 0.5

    async def check() -> tuple[bool, dict[str, str]]:
        app = AuthPolicyApp(
            client=RedisPipeline(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.5, decode=True)
        )
        try:
            return await app.readiness()
        finally:
            await app.aclose()

    assert asyncio.run(check()) == (False, {"redis": "ConnectionError", "database": "ok"})
