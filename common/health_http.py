"""A tiny HTTP listener for processes that do not speak HTTP: health and metrics only.

The SMTP policy daemon speaks Postfix's policy protocol, which has no health request; the
Celery worker speaks to Redis only. Each gets a small port of its own answering ``GET
/healthz``, ``GET /readyz`` and ``GET /metrics`` (bearer ``METRICS_TOKEN``), so curl, systemd,
a load balancer and Prometheus reach every service the same way.

``serve`` runs on the service's own asyncio loop: if that loop hangs, ``/healthz`` stops
answering too, which is exactly what a liveness probe must notice. ``serve_in_thread`` is for
Celery's worker, whose main process has no event loop of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import health, metrics

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
MAX_HEAD_BYTES = 8192
READ_TIMEOUT = 5.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def parse_listen(spec: str, *, unix: bool = False) -> tuple[str, str, int]:
    """A listen address of any of our servers as (kind, where, port): ``host:port``
    (``[::1]:port`` for IPv6; no host: 127.0.0.1) is ("tcp", host, port); where ``unix`` is
    allowed (the policy servers), ``unix:/path`` is ("unix", path, 0)."""
    if unix and spec.startswith("unix:"):
        return "unix", spec[5:], 0
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        expected = "host:port or unix:/path" if unix else "host:port"
        raise ValueError(f"listen address {spec!r}: expected {expected}")
    return "tcp", host.strip("[]") or "127.0.0.1", int(port)


def _answer(method: str, path: str, authorization: str | None) -> tuple[int, bytes, str] | None:
    """The answer, or None for ``/readyz``, which the caller checks its own way."""
    if path not in ("/healthz", "/readyz", "/metrics"):
        return 404, b'{"error": "not found"}', "application/json"
    if method not in ("GET", "HEAD"):
        return 405, b'{"error": "GET only"}', "application/json"
    if path == "/healthz":
        return 200, health.health_body(True), "application/json"
    if path == "/readyz":
        return None
    if not metrics.authorized(authorization):
        return 403, b'{"error": "metrics token required"}', "application/json"
    body, content_type = metrics.exposition()
    return 200, body, content_type


def _response(status: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def serve(spec: str, readiness: Readiness | None = None) -> asyncio.Server:
    """Listen on ``host:port`` on the running loop; one request per connection."""
    _, host, port = parse_listen(spec)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, *_ = [*lines[0].split(" "), "", ""]
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, sep, value in (line.partition(":") for line in lines[1:])
                if sep
            )
            answer = _answer(method, path.partition("?")[0], headers.get("authorization"))
            if answer is None:
                ok, checks = await readiness() if readiness else (True, None)
                answer = (200 if ok else 503), health.health_body(ok, checks), "application/json"
            status, body, content_type = answer
            writer.write(_response(status, b"" if method == "HEAD" else body, content_type))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.write(_response(400, b"", "text/plain"))
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)


def serve_in_thread(spec: str) -> ThreadingHTTPServer:
    """``/healthz`` and ``/metrics`` from a daemon thread (Celery's worker)."""
    _, host, port = parse_listen(spec)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            authorization = self.headers.get("Authorization")
            # No readiness here: the worker's real health is whether it consumes tasks
            # (`celery inspect ping`), and its job metrics say that over time.
            answer = _answer("GET", path, authorization)
            status, body, content_type = answer or (
                200,
                health.health_body(True),
                "application/json",
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every 15 s are not worth a log line each."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
