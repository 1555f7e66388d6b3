"""Health checks as a load balancer, systemd and ops use them: liveness, readiness, metrics.

"Redis stopped" is a real closed port: the connection is refused as by a stopped Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from mailaccess import counters
from tests.conftest import REDIS_URL_FOR_TESTS, needs_redis
from tests.policy_client import API_KEY, closed_port, request


def redis_errors(service: str) -> float:
    return REGISTRY.get_sample_value("mailportal_redis_errors_total", {"service": service}) or 0


@pytest.fixture
def production_like(settings: Any) -> None:
    """What production sets: HTTPS redirect on, only the public host names allowed."""
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["settings.inbox.lv"]


def test_liveness_answers_a_plain_http_probe_on_loopback(production_like: None) -> None:
    response = Client().get("/healthz", HTTP_HOST="127.0.0.1:8100")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_on_the_embedded_default_needs_only_the_database(
    db: None, settings: Any, production_like: None
) -> None:
    settings.REDIS_URL = ""
    response = Client().get("/readyz", HTTP_HOST="127.0.0.1:8100")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


@pytest.mark.e2e
@needs_redis
def test_readiness_checks_redis_when_the_portal_uses_it(db: None, settings: Any) -> None:
    assert REDIS_URL_FOR_TESTS
    settings.REDIS_URL = REDIS_URL_FOR_TESTS
    settings.MAILSERVER_REDIS_URL = REDIS_URL_FOR_TESTS
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readiness_fails_when_redis_is_stopped(db: None, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/11"
    settings.MAILSERVER_REDIS_URL = settings.REDIS_URL
    before = redis_errors("web")
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "redis": "ConnectionError"},
    }
    assert redis_errors("web") == before + 1
    # Liveness stays up: restarting the portal would not bring Redis back.
    assert Client().get("/healthz").status_code == 200


def test_readiness_names_the_mail_servers_redis_apart(db: None, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/11"
    settings.MAILSERVER_REDIS_URL = f"redis://:secret-in-url@127.0.0.1:{closed_port()}/12"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert set(response.json()["checks"]) == {"database", "redis", "mailserver_redis"}
    assert b"secret-in-url" not in response.content


def test_metrics_need_the_bearer_token(db: None, settings: Any, production_like: None) -> None:
    settings.METRICS_TOKEN = "scrape-token-123"
    client = Client()
    assert client.get("/metrics", HTTP_HOST="127.0.0.1").status_code == 403
    wrong = client.get("/metrics", HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 403
    response = client.get(
        "/metrics", HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION="Bearer scrape-token-123"
    )
    assert response.status_code == 200
    assert b"mailportal_access_blocks_total" in response.content


def test_without_a_token_nobody_may_scrape(db: None, settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


# The auth-policy service (its own HTTP server, manage.py auth_policy_server).


@pytest.fixture
def policy_settings(settings: Any) -> None:
    settings.AUTH_POLICY_API_KEY = API_KEY
    settings.METRICS_TOKEN = "scrape-token-123"
    counters.sync_client.cache_clear()


def test_the_policy_service_is_alive_without_redis(policy_settings: None) -> None:
    response = request(f"redis://127.0.0.1:{closed_port()}/11", "GET", "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_the_policy_service_is_not_ready_when_redis_is_stopped(
    policy_settings: None, transactional_db: None
) -> None:
    before = redis_errors("auth_policy")
    response = request(f"redis://127.0.0.1:{closed_port()}/11", "GET", "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"redis": "ConnectionError", "database": "ok"}
    assert redis_errors("auth_policy") == before + 1


@pytest.mark.e2e
@needs_redis
def test_the_policy_service_is_ready_with_redis_and_the_database(
    policy_settings: None, transactional_db: None
) -> None:
    assert REDIS_URL_FOR_TESTS
    response = request(REDIS_URL_FOR_TESTS, "GET", "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", "database": "ok"}}
    assert request(REDIS_URL_FOR_TESTS, "POST", "/readyz").status_code == 405


def test_the_policy_service_serves_metrics_with_the_token(policy_settings: None) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/11"
    assert request(url, "GET", "/metrics").status_code == 403
    response = request(url, "GET", "/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE mailportal_auth_policy_decision_seconds histogram" in response.text


def test_a_stopped_redis_makes_decisions_fail_over_to_dovecot(policy_settings: None) -> None:
    """503: Dovecot's auth_policy_reject_on_fail (no) lets the login go to the passdb."""
    url = f"redis://127.0.0.1:{closed_port()}/11"
    key = {"command": "allow", "protocol": "imap", "result": "error"}
    before = REGISTRY.get_sample_value("mailportal_auth_policy_decisions_total", key) or 0
    response = request(
        url,
        "POST",
        "/auth-policy?command=allow",
        body={"login": "alice@inbox.lv", "protocol": "imap", "remote": "192.0.2.1"},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 503
    assert REGISTRY.get_sample_value("mailportal_auth_policy_decisions_total", key) == before + 1
