"""The Dovecot auth-policy endpoint's HTTP/1.1 server: ``manage.py auth_policy_server``.

Why this serving stack: every login costs Dovecot three requests (``allow`` before auth,
``allow`` after it, ``report``), and the target is 2,000 logins (6,000 requests) a second on
two cores with a request p99 under 10 ms. A synchronous Django view holds a worker thread
for each Redis round trip and runs the whole middleware and URL stack per request, so the
endpoint is asynchronous: one event loop per process keeps hundreds of requests waiting on
Redis at once, and a request is a header check, a JSON parse and one Redis round trip
(``auth_policy_app.py``). It first ran as an ASGI app under uvicorn (uvloop, httptools),
where uvicorn's own HTTP handling (an ASGI scope and message dicts, flow control and two
``send`` calls per answer) was a large share of a request's CPU time, and the target was met
only on some runs while other work shared the two cores. The only client is Dovecot's HTTP
client on loopback, sending small POSTs over keep-alive connections, so this server does
just what that needs on top of httptools' parser (llhttp, in C) and uvloop: keep-alive,
pipelined requests answered in order, one ``transport.write`` per answer, bounded heads
and bodies, idle and stall timeouts on one timer per connection, and a graceful stop.
Measured with ``benchmarks/auth_policy.py`` on one machine within minutes, the same app cost
39-48 µs of server CPU per request here against 56-63 µs under uvicorn, and served about a
third more logins per second at a lower p99. ``asgi.py`` still serves the app under any ASGI server
(``--server uvicorn`` in the benchmark compares the two).

Several processes share one port with ``SO_REUSEPORT`` (``--processes``, one a core), the
kernel spreading Dovecot's connections between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from email.utils import formatdate
from typing import Any

import httptools

from common.logging import Throttle, log_event
from mailaccess.mailserver.auth_policy import MAX_BODY_BYTES
from mailaccess.mailserver.auth_policy_app import OK_ALLOWED, AuthPolicyApp, Response

log = logging.getLogger("mailaccess.auth_policy")

MAX_HEAD_BYTES = 16 * 1024
# Dovecot's HTTP client closes idle connections itself (after a few seconds by default); 65 s
# outlives a load balancer's usual 60 s, so a balancer never writes to a connection that this
# side just closed.
IDLE_TIMEOUT = 65.0
# A request is one small write from Dovecot: one that takes longer than this to arrive, or
# an answer the client does not read for this long, is a stuck or hostile peer.
STALL_TIMEOUT = 10.0
# After the last answer, how long to read and drop what the client still sends before closing:
# closing a socket with unread bytes sends a reset, which may destroy the answer on its way.
LINGER = 2.0
# Pipelined requests waiting behind the one being answered; past this, stop reading.
MAX_QUEUED = 32
# An error that a request can cause may repeat on every request: a traceback a second at most.
_ERROR_LOG = Throttle()

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
# The request headers the app reads, by lower-case name.
_API_KEY, _AUTHORIZATION, _CONTENT_LENGTH, _EXPECT = range(4)
_WANTED = {
    b"x-api-key": _API_KEY,
    b"authorization": _AUTHORIZATION,
    b"content-length": _CONTENT_LENGTH,
    b"expect": _EXPECT,
}


class _Refuse(Exception):
    """Raised in a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Ignore(Exception):
    """Raised in a parser callback: a request after the last one; read nothing more."""


class _Request:
    __slots__ = ("api_key", "authorization", "body", "in_head", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.api_key: bytes | None = None
        self.authorization: bytes | None = None
        self.body: list[bytes] = []
        self.keep_alive = True
        self.in_head = True


def _render(status: int, body: bytes, content_type: bytes, extra: Any, close: bool) -> bytes:
    """Status line, headers and body as one ``bytes``: one write, one send."""
    _Cached.refresh()
    lines = [
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ndate: %s\r\n"
        % (status, _REASONS.get(status, b""), content_type, len(body), _Cached.date)
    ]
    lines.extend(b"%s: %s\r\n" % pair for pair in extra)
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class _Cached:
    """The Date header, and the answer to nearly every request, made once a second."""

    second = -1
    date = b""
    allowed = b""

    @classmethod
    def refresh(cls) -> None:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.date = formatdate(now, usegmt=True).encode()
            cls.allowed = _render(*OK_ALLOWED, close=False)


def _allowed() -> bytes:
    _Cached.refresh()
    return _Cached.allowed


class _Connection(asyncio.Protocol):
    """One client connection: the parser's callbacks, the queue of requests, the timer."""

    def __init__(self, server: AuthPolicyHttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.request: _Request | None = None  # being parsed
        self.queue: deque[_Request | bytes] = deque()  # parsed, waiting; bytes: a refusal
        self.busy = False  # a request is being answered
        # The task answering (the loop holds tasks only weakly).
        self.task: asyncio.Task[None] | None = None
        self.last = False  # no requests after the current ones: close when answered
        self.head_bytes = 0
        self.body_bytes = 0
        self.began_now = False
        self.activity = 0.0  # loop time of the last bytes in or answer out
        self.message_started = 0.0
        self.reading_paused = False
        self.lingering = False
        self.writing_paused_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    # -- the transport -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.activity = self.loop.time()
        self._arm(self.activity + self.server.idle_timeout)
        if self.server.stopping:
            self.last = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.server.connection_closed()

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more of its requests meanwhile.
        self.writing_paused_at = self.loop.time()
        self._arm(self.writing_paused_at + self.server.stall_timeout)
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused_at = None
        if len(self.queue) < MAX_QUEUED:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.last and self.request is None:
            return  # bytes after the last request: not read
        self.activity = self.loop.time()
        self.began_now = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refuse):
                self._refuse(cause.status)
            elif not isinstance(cause, _Ignore):
                self._refuse(400)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # llhttp refuses bytes after a "Connection: close" request itself: those are
            # dropped, like any after the last request. Anything else is not HTTP we speak
            # (upgrades to WebSocket or h2c included).
            if not (self.last and self.request is None):
                self._refuse(400)
            return
        request = self.request
        if request is not None:
            # A head that did not end in this chunk: its earlier chunks count in full (the
            # parser keeps a header it has not seen the end of, unbounded).
            if request.in_head and not self.began_now:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self._refuse(431)
                    return
            deadline = self.message_started + self.server.stall_timeout
            if self.timer_at > deadline:
                self._arm(deadline)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.last:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- timeouts: one timer per connection, moved only when it fires --------------------

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        server = self.server
        if self.lingering:
            deadline = self.timer_at
        elif self.writing_paused_at is not None:
            deadline = self.writing_paused_at + server.stall_timeout
        elif self.busy:
            # The app bounds its own time (Redis timeout); look again later.
            deadline = now + server.stall_timeout
        elif self.request is not None:
            deadline = self.message_started + server.stall_timeout
        else:
            deadline = self.activity + server.idle_timeout
        if now >= deadline:
            if self.transport is not None:
                self.transport.close()
            return
        self._arm(deadline)

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.last:
            raise _Ignore
        self.request = _Request()
        self.head_bytes = 0
        self.body_bytes = 0
        self.began_now = True
        self.message_started = self.activity

    def on_url(self, url: bytes) -> None:
        assert self.request is not None
        self.request.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Refuse(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Refuse(431)
        wanted = _WANTED.get(name.lower())
        if wanted is None:
            return
        request = self.request
        assert request is not None
        if wanted == _API_KEY:
            request.api_key = value
        elif wanted == _AUTHORIZATION:
            request.authorization = value
        elif wanted == _CONTENT_LENGTH:
            if not value.strip().isdigit() or int(value) > MAX_BODY_BYTES:
                raise _Refuse(413 if value.strip().isdigit() else 400)
        elif value.strip().lower() == b"100-continue" and not self.busy and not self.queue:
            # curl sends larger bodies only after this; Dovecot never asks.
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        request.in_head = False
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            raise _Refuse(413)  # chunked: no Content-Length said so beforehand
        assert self.request is not None
        self.request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        if not request.keep_alive or self.server.stopping:
            self.last = True
            self._pause_reading()
        if self.busy:
            self.queue.append(request)
            if len(self.queue) >= MAX_QUEUED:
                self._pause_reading()
        else:
            self.busy = True
            self.task = self.loop.create_task(self._answer(request))

    # -- answers -------------------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        """A request this server will not answer normally: say why, then close."""
        self.last = True
        self.request = None
        self._pause_reading()
        data = _render(status, b'{"error": "%s"}' % _REASONS[status], b"application/json", (), True)
        if self.busy:
            self.queue.append(data)  # after the answers to the requests before it
        elif self.transport is not None:
            self.transport.write(data)
            self._close()

    def _close(self) -> None:
        """Close after the last answer: send it and FIN, drop what still comes, then close."""
        transport = self.transport
        assert transport is not None
        self.last = True
        if self.lingering or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self._arm(self.loop.time() + LINGER)

    async def _answer(self, request: _Request) -> None:
        """Answer requests in the order they came, until none is waiting."""
        app = self.app
        while True:
            path, _, query = request.url.partition(b"?")
            body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
            try:
                response: Response = await app.respond(
                    request.method, path, query, request.api_key, request.authorization, body
                )
            except Exception:
                if (left_out := _ERROR_LOG.due()) is not None:
                    log_event(
                        log, "auth_policy.error", logging.ERROR, exc_info=True, left_out=left_out
                    )
                response = (500, b'{"error": "internal error"}', b"application/json", ())
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            close = self.last and not self.queue
            if response is OK_ALLOWED and not close and request.method == b"POST":
                data = _allowed()
            else:
                data = _render(*response, close=close)
                if request.method == b"HEAD":
                    data = data[: len(data) - len(response[1])]
            transport.write(data)
            self.activity = self.loop.time()
            if close:
                self._close()
                return
            if not self.queue:
                break
            waiting = self.queue.popleft()
            if isinstance(waiting, bytes):
                transport.write(waiting)
                self._close()
                return
            request = waiting
        self.busy = False
        if self.writing_paused_at is None:
            self._resume_reading()

    def stop(self) -> None:
        """Shutdown: close if idle; otherwise the answer being written is the last."""
        self.last = True
        if not self.busy and self.request is None and self.transport is not None:
            self._close()


class AuthPolicyHttpServer:
    def __init__(
        self,
        app: AuthPolicyApp,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.shutdown_grace = shutdown_grace
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._servers: list[asyncio.Server] = []
        self._drained = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> str:
        """Start listening; returns the bound address (the real port for port 0)."""
        server = await self.loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        bound = f"{sockname[0]}:{sockname[1]}"
        log.info("auth policy listening on %s", bound)
        return bound

    def request_stop(self) -> None:
        """SIGTERM: stop accepting, finish the requests being answered, then stop."""
        if not self.stopping:
            log.info("stopping: %d connections open", len(self.connections))
            self.stopping = True
            # Kept: the loop holds tasks only weakly.
            self._stopping = self.loop.create_task(self._stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def connection_closed(self) -> None:
        if self.stopping and not self.connections:
            self._drained.set()

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.stop()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.shutdown_grace):
                    await self._drained.wait()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await self.app.aclose()
        self._stopped.set()
        log.info("stopped")
