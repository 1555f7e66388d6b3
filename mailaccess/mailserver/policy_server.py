"""The asyncio server around ``SmtpPolicy``: sockets, timeouts, graceful shutdown.

Postfix keeps a policy connection open and sends request after request on it (until
``smtpd_policy_service_max_idle``, 300 s, or ``..._max_ttl``, 1000 s), so a connection here
lives as long as Postfix wants and answers requests in order; a client may also send several
requests without waiting (pipelining), and gets the answers in the order it asked.

Each connection is a bare ``asyncio.Protocol``: requests are parsed in ``data_received`` and
answered from the policy's callbacks, with no task, stream reader or timer per connection or
request. One watchdog a second does what per-request timers would: it answers a request that
waited ``request_timeout`` with the fallback, cuts off a half-sent request after the same
time and an idle connection after ``idle_timeout``, and publishes the metrics counted since
its last round (prometheus_client takes a lock per update: per request, that cost more than
parsing the request).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from common import metrics
from common.health_http import parse_listen
from common.logging import Throttle, log_event
from mailaccess.mailserver import bounce_tags
from mailaccess.mailserver.postfix_policy import (
    PostfixRequest,
    ProtocolError,
    RequestParser,
    format_reply,
)
from mailaccess.mailserver.smtp_policy import SmtpPolicy, now_ms

log = logging.getLogger(__name__)
# Label values are a closed set whatever a client sends (see common/metrics.py).
STAGES = frozenset({"connect", "helo", "mail", "rcpt", "data", "end-of-message", "vrfy", "etrn"})
RESULTS = frozenset({"dunno", "ok", "defer_if_permit", "defer", "reject", "hold", "discard"})


async def serve(
    spec: str,
    protocol: Callable[[], asyncio.Protocol],
    *,
    unix_mode: int = 0o660,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Serve ``protocol`` on ``host:port`` or ``unix:/path`` (``parse_listen``).

    ``reuse_port``: several processes listen on one TCP port (SO_REUSEPORT) and the kernel
    spreads the connections between them.
    """
    loop = asyncio.get_running_loop()
    kind, where, port = parse_listen(spec, unix=True)
    if kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(where).st_mode):
                os.unlink(where)  # left over from a daemon that did not stop cleanly
        server = await loop.create_unix_server(protocol, path=where)
        os.chmod(where, unix_mode)
        return server
    return await loop.create_server(
        protocol, host=where, port=port, reuse_address=True, reuse_port=reuse_port or None
    )


async def serve_sender_tags(
    spec: str, unix_mode: int = 0o660, *, reuse_port: bool = False
) -> asyncio.Server:
    """The socketmap table of signed envelope senders (``bounce_tags.SenderTagMap``). It needs
    neither Redis nor the database: only ``SECRET_KEY``."""
    return await serve(
        spec,
        lambda: bounce_tags.SenderTagMap(now_ms),
        unix_mode=unix_mode,
        reuse_port=reuse_port,
    )


READ_CHUNK = 64 * 1024
# A client that sends requests faster than they are answered stops being read at this many
# unanswered requests, until the answers catch up.
MAX_IN_FLIGHT = 256

_REPLIES: dict[str, bytes] = {}
_ERROR_LOG = Throttle()


def reply_bytes(action: str) -> bytes:
    """The encoded reply, rendered once per distinct action (nearly all are DUNNO)."""
    encoded = _REPLIES.get(action)
    if encoded is None:
        encoded = format_reply(action)
        if len(_REPLIES) < 4096:
            _REPLIES[action] = encoded
    return encoded


class _Pending:
    """A request not answered yet; ``answer`` is the callback the policy calls."""

    __slots__ = ("action", "connection", "request", "started")

    def __init__(self, connection: _PolicyConnection, request: PostfixRequest, started: float):
        self.connection = connection
        self.request = request
        self.started = started
        self.action: str | None = None

    def answer(self, action: str, result: str | None = None) -> None:
        if self.action is not None:
            return  # already answered with the fallback by the watchdog
        self.action = action
        connection = self.connection
        connection.server.account(self.request, action, self.started, result)
        waiting = connection.waiting
        if waiting and waiting[0] is self:
            connection.release()


class _PolicyConnection(asyncio.Protocol):
    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        # Requests in the order received, while any of them is unanswered.
        self.waiting: deque[_Pending] = deque()
        # Bytes arrived since the watchdog's last round.
        self.active = True
        self.last_active = 0.0
        # When the request now arriving began (perf_counter; 0: none is half-received). A
        # request has this long in total, however slowly its bytes trickle in.
        self.partial_since = 0.0
        # Finish what was received, then close (protocol error, shutdown).
        self.finishing = False
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        if self.server.stopping:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.finishing:
            return
        try:
            requests = self.parser.feed(data)
        except ProtocolError as error:
            # Garbage, perhaps after whole requests in the same read: answer those first.
            if error.requests:
                self.received(error.requests)
            if not self.finishing:
                self.protocol_error(error)
            return
        if not requests:
            if not self.partial_since:
                self.partial_since = time.perf_counter()
            return
        if self.partial_since:
            self.partial_since = 0.0
        self.received(requests)

    def received(self, requests: list[PostfixRequest]) -> None:
        """Check whole requests; write the answers known at once, in order."""
        server = self.server
        check = server.policy.check
        account = server.account
        started = time.perf_counter()
        waiting = self.waiting
        out: list[bytes] = []
        for request in requests:
            pending = _Pending(self, request, started)
            try:
                action = check(request, pending.answer)
            except ProtocolError as error:
                # A repeated attribute, found when the policy first read it.
                if out:
                    self.write(b"".join(out))
                self.protocol_error(error)
                return
            except Exception:
                # Whatever a request could trigger, it could trigger on every request: a
                # traceback a second at most.
                if (left_out := _ERROR_LOG.due()) is not None:
                    log_event(
                        log, "smtp_policy.error", logging.ERROR, exc_info=True, left_out=left_out
                    )
                action = server.policy.fallback_action()
                account(request, action, started, "error")
                pending.action = action
            else:
                if action is not None:
                    account(request, action, started, None)
                    pending.action = action
            if not waiting and pending.action is not None:
                out.append(reply_bytes(pending.action))
            else:
                waiting.append(pending)
        if out:
            self.write(b"".join(out) if len(out) > 1 else out[0])
        if waiting:
            if waiting[0].action is not None:
                self.release()
            elif len(waiting) >= MAX_IN_FLIGHT and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        elif server.stopping and not self.parser.pending:
            self.close()

    def protocol_error(self, error: ProtocolError) -> None:
        """Garbage: the stream cannot be trusted any more. Answer what came before it."""
        log_event(log, "smtp_policy.protocol_error", logging.WARNING, error=str(error))
        self.finishing = True
        if not self.waiting:
            self.close()

    def release(self) -> None:
        """Write the answers now due, in order."""
        waiting = self.waiting
        out = []
        while waiting and waiting[0].action is not None:
            out.append(reply_bytes(waiting.popleft().action))  # type: ignore[arg-type]
        if out:
            self.write(b"".join(out))
        if waiting:
            return
        if self.finishing or (self.server.stopping and not self.parser.pending):
            self.close()
        elif self.read_paused and not self.write_paused:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # A client that does not read its answers: stop reading its requests until it does,
    # instead of buffering answers without end.
    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.read_paused and len(self.waiting) < MAX_IN_FLIGHT and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()


def _stage(protocol_state: str) -> str:
    stage = protocol_state.lower()
    return stage if stage in STAGES else "other"


def _result(action: str) -> str:
    result = action.partition(" ")[0].lower()
    return result if result in RESULTS else "other"


class _Metrics:
    """Checks counted in the process and published to prometheus_client once a second.

    Counted by (protocol state, action, result) as they come; labels are worked out when
    publishing, once per distinct key rather than once per check.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str | None], int] = {}
        self.bounds = list(metrics.SMTP_POLICY_SECONDS.upper_bounds)
        self.buckets = [0] * len(self.bounds)
        self.seconds = 0.0
        self.children: dict[tuple[str, str], Any] = {}

    def publish(self) -> None:
        for (state, action, result), count in self.counts.items():
            labels = (_stage(state), result or _result(action))
            child = self.children.get(labels)
            if child is None:
                child = self.children[labels] = metrics.SMTP_POLICY_CHECKS.labels(*labels)
            child.inc(count)
        self.counts.clear()
        if self.seconds or any(self.buckets):
            metrics.SMTP_POLICY_SECONDS.add(self.buckets, self.seconds)
            self.buckets = [0] * len(self.bounds)
            self.seconds = 0.0


class PolicyServer:
    WATCH_INTERVAL = 1.0

    def __init__(
        self,
        policy: SmtpPolicy,
        *,
        request_timeout: float,
        idle_timeout: float,
        shutdown_grace: float = 5.0,
        unix_mode: int = 0o660,
    ) -> None:
        self.policy = policy
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.shutdown_grace = shutdown_grace
        self.unix_mode = unix_mode
        self.connections: set[_PolicyConnection] = set()
        self.stopping = False
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._metrics = _Metrics()
        self._log_dunno = log.isEnabledFor(logging.DEBUG)
        self._log_others = log.isEnabledFor(logging.INFO)

    # -- life cycle ------------------------------------------------------------------------

    async def listen(self, spec: str, *, reuse_port: bool = False) -> str:
        """Start listening (``serve``); returns the bound address (the real port for port 0)."""
        server = await serve(
            spec, lambda: _PolicyConnection(self), unix_mode=self.unix_mode, reuse_port=reuse_port
        )
        kind, where, _ = parse_listen(spec, unix=True)
        if kind == "unix":
            self._unix_paths.append(where)
            bound = f"unix:{where}"
        else:
            sockname = server.sockets[0].getsockname()
            bound = f"{sockname[0]}:{sockname[1]}"
        self._servers.append(server)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.WATCH_INTERVAL, self._watch)
        log.info("SMTP policy daemon listening on %s", bound)
        return bound

    def request_stop(self) -> None:
        """SIGTERM: stop accepting, finish the requests being answered, then exit."""
        if not self.stopping:
            log.info("stopping: %d connections open", len(self.connections))
            self.stopping = True
            # Kept: the loop holds tasks only weakly.
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _watch(self) -> None:
        """Once a second: overdue answers, overdue and idle connections, the metrics."""
        self._watchdog = asyncio.get_running_loop().call_later(self.WATCH_INTERVAL, self._watch)
        now = time.perf_counter()
        self._log_dunno = log.isEnabledFor(logging.DEBUG)
        self._log_others = log.isEnabledFor(logging.INFO)
        for connection in list(self.connections):
            waiting = connection.waiting
            if waiting and waiting[0].started + self.request_timeout <= now:
                # Postfix's own default on a silent daemon is a 451 for every message.
                log_event(log, "smtp_policy.timeout", logging.ERROR, seconds=self.request_timeout)
                fallback = self.policy.fallback_action()
                for pending in list(waiting):
                    if pending.action is None and pending.started + self.request_timeout <= now:
                        pending.answer(fallback, "timeout")
                connection.release()
            if connection.active:
                connection.active = False
                connection.last_active = now
                idle = False
            else:
                idle = now - connection.last_active >= self.idle_timeout
            if waiting:
                continue
            if connection.parser.pending:
                # A partial request must complete within the request timeout from its first
                # byte (not from its latest: a byte a second would hold the slot for ever).
                # One that began in a read which also completed requests is timed from here.
                if not connection.partial_since:
                    connection.partial_since = now
                elif now - connection.partial_since >= self.request_timeout:
                    connection.close()
            elif idle:
                connection.close()
        self._metrics.publish()

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            if not connection.waiting and not connection.parser.pending:
                connection.close()
        deadline = time.monotonic() + self.shutdown_grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.shutdown_grace):
                await self.policy.wait_for_background()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._metrics.publish()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._stopped.set()
        log.info("stopped")

    # -- metrics and the decision's log line ---------------------------------------------------

    def account(
        self, request: PostfixRequest, action: str, started: float, result: str | None
    ) -> None:
        """The metrics and, unless it is a DUNNO with DEBUG off, the log line of an answer."""
        seconds = time.perf_counter() - started
        counted = self._metrics
        key = (request.protocol_state, action, result)
        counts = counted.counts
        counts[key] = counts.get(key, 0) + 1
        counted.buckets[bisect.bisect_left(counted.bounds, seconds)] += 1
        counted.seconds += seconds
        if action == "DUNNO" and result is None:
            if not self._log_dunno:
                return
        elif not self._log_others:
            # Timeouts and errors log their own line at ERROR; the decision line is INFO.
            return
        result = result or _result(action)
        # "dunno" (no opinion) is nearly every answer: DEBUG, like the auth policy's "allow".
        log_event(
            log,
            "smtp_policy.decision",
            logging.DEBUG if result == "dunno" else logging.INFO,
            mailbox=request.sasl_username or request.first("recipient").strip().lower() or None,
            stage=_stage(request.protocol_state),
            result=result,
            # ``first``: a repeat of an attribute that only this line reads must not fail
            # the answer (``get`` would raise on it).
            client_ip=request.first("client_address") or None,
            sender=request.first("sender").strip().lower() or None,
            recipients=request.first("recipient_count") or None,
            instance=request.first("instance") or None,
        )
