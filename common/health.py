"""Liveness, readiness and metrics for the web portal (and the checks the other services share).

- ``/healthz``: the process answers. No database, no Redis: a restart cures nothing that a
  dead database causes, so liveness must not fail with it.
- ``/readyz``: PostgreSQL answers ``SELECT 1`` and Redis answers ``PING``, each within
  ``HEALTH_CHECK_TIMEOUT`` seconds; 503 otherwise, naming the failed check (never a URL, which
  may carry a password). On the embedded default (no ``REDIS_URL``) Redis is not required.
- ``/metrics``: Prometheus, with the bearer token ``METRICS_TOKEN`` (``common/metrics.py``).

Served by a middleware at the top of the stack: before the HTTPS redirect (the load balancer
and systemd probe plain HTTP on loopback), before the host check (they ask for 127.0.0.1,
which production's ALLOWED_HOSTS rightly does not list), and without sessions, languages or
CSRF, so a probe costs next to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse

from common import metrics
from common.redis_urls import REDIS_ERRORS, client_from_url

Checks = dict[str, str]


def check_database(timeout: float) -> str:
    """ "ok", or the error's class name."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # LOCAL: the setting ends with this transaction, so the connection, which
                # is reused by the next request, keeps no timeout of ours.
                cursor.execute("SET LOCAL statement_timeout = %s", [int(timeout * 1000)])
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        return type(error).__name__
    return "ok"


def check_redis(url: str, timeout: float, service: str) -> str:
    client = client_from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except REDIS_ERRORS as error:
        metrics.REDIS_ERRORS.labels(service=service).inc()
        return type(error).__name__
    finally:
        client.close()
    return "ok"


def portal_redis_urls() -> dict[str, str]:
    """The Redis servers the portal needs: its cache and the policies' (it invalidates there).

    None on the embedded default: without ``REDIS_URL`` the cache is in memory and a failed
    invalidation only logs (the policy's cached state expires on its own).
    """
    if not settings.REDIS_URL:
        return {}
    urls = {"redis": settings.REDIS_URL}
    if settings.MAILSERVER_REDIS_URL != settings.REDIS_URL:
        urls["mailserver_redis"] = settings.MAILSERVER_REDIS_URL
    return urls


def readiness() -> tuple[bool, Checks]:
    timeout = settings.HEALTH_CHECK_TIMEOUT
    checks = {"database": check_database(timeout)}
    for name, url in portal_redis_urls().items():
        checks[name] = check_redis(url, timeout, "web")
    return all(result == "ok" for result in checks.values()), checks


def health_body(ok: bool, checks: Checks | None = None) -> bytes:
    body: dict[str, object] = {"status": "ok" if ok else "unavailable"}
    if checks is not None:
        body["checks"] = checks
    return json.dumps(body).encode()


def _json(ok: bool, checks: Checks | None = None) -> HttpResponse:
    response = HttpResponse(
        health_body(ok, checks), status=200 if ok else 503, content_type="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def metrics_response(request: HttpRequest) -> HttpResponse:
    if not metrics.authorized(request.headers.get("Authorization")):
        return HttpResponse(status=403)
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def health_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path == "/healthz":
            return _json(True)
        if path == "/readyz":
            return _json(*readiness())
        if path == "/metrics":
            return metrics_response(request)
        return get_response(request)

    return middleware
