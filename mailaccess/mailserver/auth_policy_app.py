"""The Dovecot auth-policy endpoint's requests and answers, whatever serves them over HTTP.

``auth_policy_http.py`` (production: ``manage.py auth_policy_server``) and ``asgi.py`` (any
ASGI server) both hand a parsed request to ``AuthPolicyApp.respond`` and write what it returns.

``POST /auth-policy?command=allow|report`` with the ``X-API-Key`` header
(``AUTH_POLICY_API_KEY``). Wrong or missing key: 401 and nothing recorded. Malformed JSON,
missing fields and unknown users get a well-formed ``{"status": 0, "msg": ""}`` (the passdb
still checks the password). When Redis or PostgreSQL is down the answer is a 503, so Dovecot's
``auth_policy_reject_on_fail`` decides, as the operators chose in ``deploy/``.

``GET /healthz`` (alive), ``GET /readyz`` (Redis and PostgreSQL answer) and ``GET /metrics``
(Prometheus, bearer ``METRICS_TOKEN``) are looked at only after a request missed the policy
path, so they cost the hot path nothing.

A request is a header check, a JSON parse and one Redis round trip (``auth_policy_store.py``).
A cache miss is one more query, on the event loop (``state_reader.py``; on SQLite the ORM in a
thread); a block runs the ORM in one of a few threads of the app's own pool, whose database
connections ``aclose`` closes; a login's use goes to the activity stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from accounts.models import Mailbox
from audit.models import Actor
from common import health, metrics
from common.logging import Throttle, log_event, short_id
from mailaccess import actions, activity
from mailaccess.mailserver import auth_policy, state_reader
from mailaccess.mailserver import state as state_cache
from mailaccess.mailserver.auth_policy import (
    LoginLimits,
    LoginRequest,
    MailboxState,
    RequestError,
)
from mailaccess.mailserver.auth_policy_store import Miss, PolicyStore
from mailaccess.mailserver.database_threads import DatabaseThreads
from mailaccess.mailserver.readiness import policy_server_readiness
from mailaccess.mailserver.redis_cluster import open_pipeline
from mailaccess.mailserver.redis_pipeline import RedisPipeline
from mailaccess.mailserver.state_reader import StateReader
from mailaccess.models import BlockReason

logger = logging.getLogger("mailaccess.auth_policy")
# Every answer is one log line, but a plain "allow" at DEBUG: at thousands of logins a second
# INFO would be mostly noise, and Dovecot logs each login itself. Refusals, delays, failed
# passwords, recorded uses and blocks are INFO and up.
QUIET_RESULTS = frozenset({"allow", "unknown", "success", "none"})
# A stranger's login name reaches this endpoint: what one can cause on every request (a bad
# request, an unexpected error) is logged a line a second at most per process, with the
# number left out; the metrics count every one.
_BAD_REQUEST_LOG = Throttle()
_ERROR_LOG = Throttle()
_DATABASE_ERROR_LOG = Throttle()

PATH = b"/auth-policy"
JSON = b"application/json"
ALLOWED = json.dumps({"status": 0, "msg": ""}).encode()
# The ORM's threads: a cache miss or a block at a time is the common case;
# four let a burst of misses (a restart of Redis) proceed without one slow query holding all.
DB_THREADS = 4

T = TypeVar("T")
# (status, body, content type, extra headers): what the HTTP side writes.
Response = tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]
OK_ALLOWED: Response = (200, ALLOWED, JSON, ())
UNAVAILABLE: Response = (503, ALLOWED, JSON, ())


def _block_faulty(state: MailboxState, request: LoginRequest, limit: int) -> None:
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
    """The endpoint's logic. ``clock`` and ``client`` are seams for tests."""

    def __init__(
        self,
        *,
        client: RedisPipeline | None = None,
        clock: Callable[[], float] = time.time,
        limits: LoginLimits | None = None,
    ) -> None:
        self._client = client
        self._store: PolicyStore | None = None
        self._executor: DatabaseThreads | None = None
        # None: not decided yet; False: not PostgreSQL (the threads read instead).
        self._reader: StateReader | Literal[False] | None = None
        self.clock = clock
        self.limits = limits or LoginLimits.from_settings()
        self.api_key = settings.AUTH_POLICY_API_KEY.encode()
        self._redis_error_logged_at = -1.0
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    @property
    def store(self) -> PolicyStore:
        if self._store is None:
            client = self._client or open_pipeline(
                settings.MAILSERVER_REDIS_URL,
                timeout=settings.MAILSERVER_REDIS_TIMEOUT,
                decode=True,
            )
            self._store = PolicyStore(client, self.limits)
        return self._store

    @property
    def database(self) -> DatabaseThreads:
        if self._executor is None:
            self._executor = DatabaseThreads(DB_THREADS, "auth-policy-db")
        return self._executor

    async def _in_thread(self, function: Callable[..., T], *args: Any, finish: bool = False) -> T:
        """The ORM in the app's threads, waited for ``MAILSERVER_DATABASE_WAIT`` at most
        (``database_threads.py``): past that, TimeoutError, and the request is a 503."""
        return await self.database.call(function, *args, finish=finish)

    # -- life cycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Load the Lua scripts; Redis away is logged, not fatal (each request retries)."""
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

    async def aclose(self) -> None:
        """The Redis connection, and the pool's threads with their database connections."""
        await self.store.client.aclose()
        reader, self._reader = self._reader, None
        if reader:
            await reader.aclose()
        executor, self._executor = self._executor, None
        if executor is not None:
            # Shutting down waits for the threads: not on the event loop.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)

    # -- one request ---------------------------------------------------------------------

    async def respond(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        api_key: bytes | None,
        authorization: bytes | None,
        body: bytes | None,
    ) -> Response:
        """The answer to one HTTP request; ``body`` None: it was larger than allowed."""
        if path != PATH:
            return await self._other(method, path, authorization)
        if method != b"POST":
            return 405, b'{"error": "POST only"}', JSON, ((b"allow", b"POST"),)
        if api_key is None or not self.api_key or not hmac.compare_digest(api_key, self.api_key):
            return 401, b'{"error": "API key required"}', JSON, ()
        try:
            if body is None:
                raise RequestError("body too large")
            command = auth_policy.parse_command(query)
            request = auth_policy.parse_login_request(command, body)
            mode = auth_policy.store_mode(request)
        except RequestError as error:
            return self._bad_request(str(error))
        started = time.perf_counter()
        protocol = request.protocol.value if request.protocol else "other"
        try:
            reply, result = await self.handle(request, mode)
        except UnicodeEncodeError:
            # A lone surrogate (only a \u escape makes one) in a field other than the login
            # cannot be encoded for Redis. Every command is encoded before anything is sent,
            # so this costs nothing and changes nothing: cheaper than scanning every body.
            return self._bad_request("a field holds a lone surrogate")
        except Exception as error:
            # Redis or PostgreSQL is away: let auth_policy_reject_on_fail decide.
            metrics.AUTH_POLICY_DECISIONS.labels(request.command.value, protocol, "error").inc()
            self._log_failure(request, error)
            return UNAVAILABLE
        self._account(request, protocol, result, reply["status"], time.perf_counter() - started)
        if reply["status"] == 0 and not reply["msg"]:
            return OK_ALLOWED  # nearly every answer: no JSON encoding
        return 200, json.dumps(reply, ensure_ascii=False).encode(), JSON, ()

    def _bad_request(self, reason: str) -> Response:
        """Answered as an unknown address is: the passdb decides (and finds no such user)."""
        metrics.AUTH_POLICY_DECISIONS.labels("unknown", "other", "bad_request").inc()
        if (left_out := _BAD_REQUEST_LOG.due()) is not None:
            log_event(
                logger, "auth_policy.bad_request", logging.WARNING, reason=reason, left_out=left_out
            )
        return OK_ALLOWED

    def _account(
        self, request: LoginRequest, protocol: str, result: str, status: int, seconds: float
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

    def _log_failure(self, request: LoginRequest, error: Exception) -> None:
        if isinstance(error, TimeoutError | DatabaseError):
            # PostgreSQL away or slow: every cache miss fails alike, a line a second says so.
            if (left_out := _DATABASE_ERROR_LOG.due()) is not None:
                log_event(
                    logger,
                    "auth_policy.database_error",
                    logging.ERROR,
                    error=type(error).__name__,
                    command=request.command.value,
                    left_out=left_out,
                )
            return
        if not isinstance(error, redis.RedisError):
            if (left_out := _ERROR_LOG.due()) is not None:
                log_event(
                    logger,
                    "auth_policy.error",
                    logging.ERROR,
                    exc_info=True,
                    mailbox=request.login,
                    command=request.command.value,
                    left_out=left_out,
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

    async def _other(self, method: bytes, path: bytes, authorization: bytes | None) -> Response:
        """Health, readiness and metrics: off the hot path, checked only after it missed."""
        if path not in (b"/healthz", b"/readyz", b"/metrics"):
            return 404, b'{"error": "not found"}', JSON, ()
        if method not in (b"GET", b"HEAD"):
            return 405, b'{"error": "GET only"}', JSON, ((b"allow", b"GET"),)
        if path == b"/healthz":
            return 200, health.health_body(True), JSON, ()
        if path == b"/readyz":
            ok, checks = await self.readiness()
            return 200 if ok else 503, health.health_body(ok, checks), JSON, ()
        if not metrics.authorized(authorization):
            return 403, b'{"error": "metrics token required"}', JSON, ()
        body, content_type = metrics.exposition()
        return 200, body, content_type.encode(), ()

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Redis (the connection decisions use) and PostgreSQL (cache misses, blocks)."""

        async def check_database(timeout: float) -> str:
            return await self.database.call(health.check_database, timeout, wait=timeout + 0.5)

        return await policy_server_readiness(
            self.store.client, check_database, service="auth_policy"
        )

    # -- the decisions: parse -> decide (pure) -> store -> answer, never back ------------

    async def _load(self, login: str) -> MailboxState | None:
        """The database's state of a mailbox, for the store to cache after a miss: on
        PostgreSQL one query on the event loop (``state_reader.py`` says why), on SQLite the
        ORM in the app's threads."""
        if self._reader is None:
            self._reader = StateReader(DB_THREADS) if state_reader.supported() else False
        if self._reader:
            return await self._reader.load(login)
        return await self._in_thread(state_cache.load, login)

    async def handle(self, request: LoginRequest, mode: str) -> tuple[dict[str, Any], str]:
        """The answer for Dovecot, and the result for the metrics and the log line;
        ``mode``: ``auth_policy.store_mode``."""
        now = self.clock()
        if mode == "allow":
            found, counters = await self.store.allow(request, now)
            if isinstance(found, Miss):
                # Only the mailbox's part is read again: the network's counters stand.
                network = counters
                loaded = await self._load(request.login)
                found, counters = await self.store.allow_after_load(request, now, found, loaded)
                counters = replace(
                    counters,
                    ip_failures=network.ip_failures,
                    ip_lock_seconds=network.ip_lock_seconds,
                )
            verdict = auth_policy.decide_allow(request, found, counters, self.limits, now)
            if verdict.status < 0:
                await activity.record(
                    self.store.client, activity.refusal_event(found, request, verdict, now)
                )
            language = auth_policy.answer_language(verdict, found, settings.LANGUAGE_CODE)
            reply = auth_policy.answer(verdict, language, self.limits)
            return reply, verdict.outcome.value
        return {"status": 0, "msg": ""}, await self._report(request, mode, now)

    async def _report(self, request: LoginRequest, effect: str, now: float) -> str:
        if effect == "none":
            return effect
        result = await self.store.report(request, effect, now)
        if isinstance(result, Miss):
            loaded = await self._load(request.login)
            result = await self.store.report_after_load(request, effect, now, result, loaded)
        if isinstance(result, Miss) or result.state is None:
            # Unknown login, or invalidated twice meanwhile: one report less is harmless.
            return effect
        # A use is recorded at most once a minute per password, protocol and network
        # (AUTH_POLICY_USE_RECORD_INTERVAL): a program opens several connections per check.
        # Recorded means buffered in the activity stream, not written: the compaction job
        # writes the last uses of a page of them at once (activity.py), so a provider's
        # periodic checks cost PostgreSQL nothing per login. A login without a client
        # address is no mail program's: it is the operator's `doveadm auth test`
        # (deploy/README.md, "Check it"), which must not show up in the panel as the
        # owner's last use.
        if result.record_use and request.protocol is not None and request.remote is not None:
            await activity.record(
                self.store.client, activity.sign_in_event(result.state, request, now)
            )
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
            # Never dropped: the script reports a faulty program once.
            await self._in_thread(
                _block_faulty,
                result.state,
                request,
                self.limits.faulty_connections_per_hour,
                finish=True,
            )
        return effect
