"""The health and metrics port of the services that do not speak HTTP (SMTP policy, Celery)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from common import health
from common.health_http import parse_listen, serve, serve_in_thread
from tests.policy_client import closed_port


async def stopped_redis_readiness() -> tuple[bool, dict[str, str]]:
    """Readiness against a Redis that is not running (a closed port)."""
    result = await asyncio.to_thread(
        health.check_redis, f"redis://127.0.0.1:{closed_port()}/11", 0.5, "smtp_policy"
    )
    return result == "ok", {"redis": result}


def test_it_answers_health_readiness_and_metrics_on_the_services_loop(settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-token-123"

    async def scenario() -> dict[str, httpx.Response]:
        server = await serve("127.0.0.1:0", stopped_redis_readiness)
        port = server.sockets[0].getsockname()[1]
        answers = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answers["healthz"] = await http.get("/healthz")
            answers["readyz"] = await http.get("/readyz")
            answers["metrics"] = await http.get("/metrics")
            answers["scrape"] = await http.get(
                "/metrics", headers={"Authorization": "Bearer scrape-token-123"}
            )
            answers["post"] = await http.post("/healthz")
            answers["other"] = await http.get("/")
        # Half a request and silence must not hold the listener: it is closed with a 400.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\n" + b"X" * 9000)
        answers["garbage"] = httpx.Response(int((await reader.read())[9:12]))
        writer.close()
        server.close()
        await server.wait_closed()
        return answers

    answers = asyncio.run(scenario())
    assert answers["healthz"].json() == {"status": "ok"}
    assert answers["readyz"].status_code == 503
    assert answers["readyz"].json()["checks"] == {"redis": "ConnectionError"}
    assert answers["metrics"].status_code == 403
    assert answers["scrape"].status_code == 200
    assert "mailportal_smtp_policy_checks_total" in answers["scrape"].text
    assert answers["post"].status_code == 405
    assert answers["other"].status_code == 404
    assert answers["garbage"].status_code == 400


def test_the_worker_thread_serves_metrics_with_the_token(settings: Any) -> None:
    settings.METRICS_TOKEN = "scrape-token-123"
    server = serve_in_thread("127.0.0.1:0")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/metrics").status_code == 403
        scrape = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-token-123"})
        assert scrape.status_code == 200
        assert "mailportal_job_runs_total" in scrape.text
    finally:
        server.shutdown()
        server.server_close()


def test_a_listen_address_needs_a_port() -> None:
    assert parse_listen("[::1]:10041") == ("tcp", "::1", 10041)
    assert parse_listen(":10041") == ("tcp", "127.0.0.1", 10041)
    with pytest.raises(ValueError, match="expected host:port"):
        parse_listen("localhost")
