"""The Dovecot auth-policy endpoint: ``uvicorn mailaccess.mailserver.asgi:application``.

Why a bare ASGI callable under uvicorn and not a Django view: every login costs three
requests, and the target is 2,000 logins (6,000 requests) a second on two cores with a p99
under 10 ms. A synchronous Django view holds a worker thread for each Redis round trip and
runs the whole middleware and URL stack per request; here one event loop per process keeps
hundreds of requests waiting on Redis at once, and a request is a header check, a JSON parse
and one Redis round trip (see auth_policy_redis.py). Django is still set up (settings,
translations, the ORM), but the ORM runs only on a cache miss, a throttled last-use write or
a block, each in a thread through ``sync_to_async``. Run ``--workers N`` (one per core) with
uvloop and httptools.

``GET /healthz`` (alive), ``GET /readyz`` (Redis and PostgreSQL answer) and ``GET /metrics``
(Prometheus, bearer ``METRICS_TOKEN``) are looked at only after a request missed the policy
path, so they cost the hot path nothing.

``POST /auth-policy?command=allow|report`` with the ``X-API-Key`` header
(``AUTH_POLICY_API_KEY``). Wrong or missing key: 401 and nothing recorded. Malformed JSON,
missing fields and unknown users get a well-formed ``{"status": 0, "msg": ""}`` (the passdb
still checks the password). When Redis or PostgreSQL is down the answer is a 503, so Dovecot's
``auth_policy_reject_on_fail`` decides, as the operators chose in ``deploy/``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailportal.settings")
django.setup()

import redis  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import close_old_connections  # noqa: E402

from accounts.models import Mailbox  # noqa: E402
from mailaccess import actions  # noqa: E402
from mailaccess.mailserver import auth_policy  # noqa: E402
from mailaccess.mailserver import state as state_cache  # noqa: E402
from mailaccess.mailserver.auth_policy import (  # noqa: E402
    Command,
    Counters,
    Limits,
    MailboxState,
    PolicyRequest,
    RequestError,
    Verdict,
)
from mailaccess.mailserver.auth_policy_redis import MultiplexedRedis  # noqa: E402
from mailaccess.mailserver.auth_policy_store import Miss, PolicyStore  # noqa: E402
from mailaccess.models import Actor, BlockReason  # noqa: E402
from mailportal import health, metrics  # noqa: E402
from mailportal.logging import log_event, short_id  # noqa: E402

logger = logging.getLogger("mailaccess.auth_policy")
# Every answer is one log line, but a plain "allow" at DEBUG: at thousands of logins a second
# INFO would be mostly noise, and Dovecot logs each login itself. Refusals, delays, failed
# passwords, recorded uses and blocks are INFO and up.
QUIET_RESULTS = frozenset({"allow", "unknown", "success", "none"})

PATH = "/auth-policy"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ALLOWED = json.dumps({"status": 0, "msg": ""}).encode()


def _record_use(state: MailboxState, request: PolicyRequest, when: float) -> None:
    close_old_connections()
    assert request.protocol is not None
    password = state.password_for(request)
    actions.record_use(
        state.mailbox_id,
        request.protocol,
        request.remote,
        when=datetime.fromtimestamp(when, UTC),
        app_password_id=password.id if password else None,
        client=request.client,
    )


def _block_faulty(state: MailboxState, request: PolicyRequest, limit: int) -> None:
    close_old_connections()
    mailbox = Mailbox.objects.filter(pk=state.mailbox_id).first()
    if mailbox is None:
        return
    actions.block_access(
        mailbox,
        BlockReason.FAULTY_PROGRAM,
        actor=Actor.system("auth policy"),
        detail={
            "protocol": request.service,
            "client_ip": request.remote,
            "connections_per_hour": limit,
        },
    )


class AuthPolicyApp:
    """The ASGI application. ``clock`` and ``client`` are seams for tests."""

    def __init__(
        self,
        *,
        client: MultiplexedRedis | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
    ) -> None:
        self._client = client
        self._store: PolicyStore | None = None
        self.clock = clock
        self.limits = limits or Limits.from_settings()
        self.api_key = settings.AUTH_POLICY_API_KEY.encode()
        self._redis_error_logged_at = -1.0
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    @property
    def store(self) -> PolicyStore:
        if self._store is None:
            client = self._client or MultiplexedRedis(
                settings.MAILSERVER_REDIS_URL, settings.MAILSERVER_REDIS_TIMEOUT
            )
            self._store = PolicyStore(client, self.limits)
        return self._store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != PATH:
            await self._other(scope, send)
            return
        if scope["method"] != "POST":
            await self._send(send, 405, b'{"error": "POST only"}', [(b"allow", b"POST")])
            return
        if not self._authorized(scope):
            await self._send(send, 401, b'{"error": "API key required"}')
            return
        body = await self._body(receive)
        try:
            if body is None:
                raise RequestError("body too large")
            command = auth_policy.parse_command(scope.get("query_string", b""))
            request = auth_policy.parse_request(command, body)
        except RequestError as error:
            metrics.AUTH_POLICY_DECISIONS.labels("unknown", "other", "bad_request").inc()
            log_event(logger, "auth_policy.bad_request", logging.WARNING, reason=str(error))
            await self._send(send, 200, ALLOWED)
            return
        started = time.perf_counter()
        protocol = request.protocol.value if request.protocol else "other"
        try:
            reply, result = await self.handle(request)
        except Exception as error:
            # Redis or PostgreSQL is away: let auth_policy_reject_on_fail decide.
            metrics.AUTH_POLICY_DECISIONS.labels(request.command.value, protocol, "error").inc()
            self._log_failure(request, error)
            await self._send(send, 503, b'{"status": 0, "msg": ""}')
            return
        self._account(request, protocol, result, reply["status"], time.perf_counter() - started)
        if reply["status"] == 0 and not reply["msg"]:
            await self._send(send, 200, ALLOWED)  # nearly every answer: no JSON encoding
        else:
            await self._send(send, 200, json.dumps(reply, ensure_ascii=False).encode())

    def _account(
        self, request: PolicyRequest, protocol: str, result: str, status: int, seconds: float
    ) -> None:
        """The metrics and the log line of an answer: a few microseconds per request.

        prometheus-client's ``labels()`` takes a lock and builds a key on every call, which
        costs more than the increment itself: the children are kept here per label set.
        """
        command = request.command.value
        children = self._children.get((command, protocol, result))
        if children is None:
            children = (
                metrics.AUTH_POLICY_DECISIONS.labels(command, protocol, result),
                metrics.AUTH_POLICY_SECONDS.labels(command),
            )
            self._children[(command, protocol, result)] = children
        children[0].inc()
        children[1].observe(seconds)
        level = logging.DEBUG if result in QUIET_RESULTS else logging.INFO
        if logger.isEnabledFor(level):
            log_event(
                logger,
                f"auth_policy.{command}",
                level,
                mailbox=request.login,
                protocol=request.service,
                client_ip=request.remote,
                result=result,
                status=status,
                session_prefix=short_id(request.session_id),
            )

    def _log_failure(self, request: PolicyRequest, error: Exception) -> None:
        if not isinstance(error, redis.RedisError):
            log_event(
                logger,
                "auth_policy.error",
                logging.ERROR,
                exc_info=True,
                mailbox=request.login,
                command=request.command.value,
            )
            return
        metrics.REDIS_ERRORS.labels(service="auth_policy").inc()
        # Redis down fails every request: one line a second per process says so well enough,
        # and the metric counts them all.
        now = time.monotonic()
        if now - self._redis_error_logged_at >= 1:
            self._redis_error_logged_at = now
            log_event(
                logger,
                "auth_policy.redis_error",
                logging.ERROR,
                error=type(error).__name__,
                command=request.command.value,
            )

    async def _other(self, scope: Scope, send: Send) -> None:
        """Health, readiness and metrics: off the hot path, checked only after it missed."""
        path = scope["path"]
        if path not in ("/healthz", "/readyz", "/metrics"):
            await self._send(send, 404, b'{"error": "not found"}')
            return
        if scope["method"] not in ("GET", "HEAD"):
            await self._send(send, 405, b'{"error": "GET only"}', [(b"allow", b"GET")])
            return
        if path == "/healthz":
            await self._send(send, 200, health.health_body(True))
        elif path == "/readyz":
            ok, checks = await self.readiness()
            await self._send(send, 200 if ok else 503, health.health_body(ok, checks))
        elif metrics.authorized(dict(scope["headers"]).get(b"authorization")):
            body, content_type = metrics.exposition()
            await self._send(send, 200, body, [], content_type.encode())
        else:
            await self._send(send, 403, b'{"error": "metrics token required"}')

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Redis (the connection decisions use) and PostgreSQL (cache misses, blocks)."""
        timeout = settings.HEALTH_CHECK_TIMEOUT
        checks = {"redis": "ok", "database": "ok"}
        try:
            [pong] = await asyncio.wait_for(self.store.client.execute([("PING",)]), timeout)
            if isinstance(pong, Exception):
                raise pong
        except (redis.RedisError, TimeoutError) as error:
            metrics.REDIS_ERRORS.labels(service="auth_policy").inc()
            checks["redis"] = type(error).__name__
        try:
            checks["database"] = await asyncio.wait_for(
                sync_to_async(health.check_database, thread_sensitive=False)(timeout),
                timeout + 0.5,
            )
        except TimeoutError:
            checks["database"] = "TimeoutError"
        return all(value == "ok" for value in checks.values()), checks

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                return bool(self.api_key) and hmac.compare_digest(value, self.api_key)
        return False

    async def _body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > auth_policy.MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _send(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        content_type: bytes = b"application/json",
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.store.load_scripts()
                except redis.RedisError as error:
                    metrics.REDIS_ERRORS.labels(service="auth_policy").inc()
                    log_event(
                        logger,
                        "auth_policy.redis_error",
                        logging.WARNING,
                        error=type(error).__name__,
                        command="startup",
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _state(self, login: str, miss: Miss) -> MailboxState | None:
        state = await sync_to_async(state_cache.load, thread_sensitive=False)(login)
        await self.store.store_state(login, miss.generation, state)
        return state

    async def handle(self, request: PolicyRequest) -> tuple[dict[str, Any], str]:
        """The answer for Dovecot, and the result for the metrics and the log line."""
        now = self.clock()
        if request.command == Command.ALLOW:
            verdict, language = await self._allow(request, now)
            return auth_policy.answer(verdict, language, self.limits), verdict.outcome.value
        return {"status": 0, "msg": ""}, await self._report(request, now)

    async def _allow(self, request: PolicyRequest, now: float) -> tuple[Verdict, str]:
        found, counters = await self.store.allow(request, now)
        if isinstance(found, Miss):
            ip_failures, ip_lock_seconds = counters.ip_failures, counters.ip_lock_seconds
            loaded = await self._state(request.login, found)
            found, counters = await self.store.allow(request, now, with_network=False)
            if isinstance(found, Miss):
                # Invalidated again while loading: decide on what the database just said.
                found, counters = loaded, Counters()
            counters = replace(counters, ip_failures=ip_failures, ip_lock_seconds=ip_lock_seconds)
        verdict = auth_policy.decide_allow(request, found, counters, self.limits, now)
        return verdict, found.language if found else settings.LANGUAGE_CODE

    async def _report(self, request: PolicyRequest, now: float) -> str:
        effect = auth_policy.report_effects(request)
        if effect == "none":
            return effect
        result = await self.store.report(request, effect, now)
        if isinstance(result, Miss):
            await self._state(request.login, result)
            result = await self.store.report(request, effect, now, with_network=False)
        if isinstance(result, Miss) or result.state is None:
            # Unknown login, or invalidated twice meanwhile: one report less is harmless.
            return effect
        # Last use is written at most once a minute per password, protocol and network
        # (AUTH_POLICY_USE_RECORD_INTERVAL): a program opens several connections per check,
        # and an UPDATE per login would make PostgreSQL the bottleneck at thousands of
        # logins a second, for a figure the panel shows to the minute and expiry counts in
        # months.
        if result.record_use and request.protocol is not None:
            await sync_to_async(_record_use, thread_sensitive=False)(result.state, request, now)
            log_event(
                logger,
                "auth_policy.use_recorded",
                mailbox=request.login,
                protocol=request.protocol.value,
                client_ip=request.remote,
            )
        if result.faulty:
            log_event(
                logger,
                "auth_policy.faulty_program",
                logging.WARNING,
                mailbox=request.login,
                protocol=request.service,
                client_ip=request.remote,
                connections_per_hour=self.limits.faulty_connections_per_hour,
            )
            await sync_to_async(_block_faulty, thread_sensitive=False)(
                result.state, request, self.limits.faulty_connections_per_hour
            )
        return effect


application = AuthPolicyApp()
