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

``POST /auth-policy?command=allow|report`` with the ``X-API-Key`` header
(``AUTH_POLICY_API_KEY``). Wrong or missing key: 401 and nothing recorded. Malformed JSON,
missing fields and unknown users get a well-formed ``{"status": 0, "msg": ""}`` (the passdb
still checks the password). When Redis or PostgreSQL is down the answer is a 503, so Dovecot's
``auth_policy_reject_on_fail`` decides, as the operators chose in ``deploy/``.
"""

from __future__ import annotations

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

logger = logging.getLogger("mailaccess.auth_policy")

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
            await self._send(send, 404, b'{"error": "not found"}')
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
            logger.warning("auth policy: bad request (%s)", error)
            await self._send(send, 200, ALLOWED)
            return
        try:
            reply = await self.handle(request)
        except Exception:
            # Redis or PostgreSQL is away: let auth_policy_reject_on_fail decide.
            logger.exception("auth policy: no decision for %s", request.command)
            await self._send(send, 503, b'{"status": 0, "msg": ""}')
            return
        if reply["status"] == 0 and not reply["msg"]:
            await self._send(send, 200, ALLOWED)  # nearly every answer: no JSON encoding
        else:
            await self._send(send, 200, json.dumps(reply, ensure_ascii=False).encode())

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
    ) -> None:
        headers = [
            (b"content-type", b"application/json"),
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
                except redis.RedisError:
                    logger.warning("auth policy: Redis not reachable at start-up")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _state(self, login: str, miss: Miss) -> MailboxState | None:
        state = await sync_to_async(state_cache.load, thread_sensitive=False)(login)
        await self.store.store_state(login, miss.generation, state)
        return state

    async def handle(self, request: PolicyRequest) -> dict[str, Any]:
        now = self.clock()
        if request.command == Command.ALLOW:
            verdict, language = await self._allow(request, now)
            reply = auth_policy.answer(verdict, language, self.limits)
            if verdict.status != 0:
                logger.info(
                    "auth policy: %s %s from %s: %s",
                    request.service,
                    request.login,
                    request.remote,
                    verdict.outcome,
                )
            return reply
        await self._report(request, now)
        return {"status": 0, "msg": ""}

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

    async def _report(self, request: PolicyRequest, now: float) -> None:
        effect = auth_policy.report_effects(request)
        if effect == "none":
            return
        result = await self.store.report(request, effect, now)
        if isinstance(result, Miss):
            await self._state(request.login, result)
            result = await self.store.report(request, effect, now, with_network=False)
        if isinstance(result, Miss) or result.state is None:
            # Unknown login, or invalidated twice meanwhile: one report less is harmless.
            return
        # Last use is written at most once a minute per password, protocol and network
        # (AUTH_POLICY_USE_RECORD_INTERVAL): a program opens several connections per check,
        # and an UPDATE per login would make PostgreSQL the bottleneck at thousands of
        # logins a second, for a figure the panel shows to the minute and expiry counts in
        # months.
        if result.record_use and request.protocol is not None:
            await sync_to_async(_record_use, thread_sensitive=False)(result.state, request, now)
        if result.faulty:
            logger.warning(
                "auth policy: %s over %d connections an hour, blocking",
                request.login,
                self.limits.faulty_connections_per_hour,
            )
            await sync_to_async(_block_faulty, thread_sensitive=False)(
                result.state, request, self.limits.faulty_connections_per_hour
            )


application = AuthPolicyApp()
