"""The asyncio server around ``SmtpPolicy``: sockets, timeouts, graceful shutdown.

Postfix keeps a policy connection open and sends request after request on it (until
``smtpd_policy_service_max_idle``, 300 s, or ``..._max_ttl``, 1000 s), so a connection here
lives as long as Postfix wants and answers requests in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from mailaccess.mailserver.postfix_policy import (
    PolicyRequest,
    ProtocolError,
    RequestParser,
    format_reply,
)
from mailaccess.mailserver.smtp_policy import SmtpPolicy
from mailportal import metrics
from mailportal.logging import log_event

log = logging.getLogger(__name__)
# Label values are a closed set whatever a client sends (see mailportal/metrics.py).
STAGES = frozenset({"connect", "helo", "mail", "rcpt", "data", "end-of-message", "vrfy", "etrn"})
RESULTS = frozenset({"dunno", "ok", "defer_if_permit", "defer", "reject", "hold", "discard"})

READ_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None] | None
    # True while waiting for bytes from Postfix: the only time it may be cut off.
    reading: bool = True
    # Between requests, nothing of a request has arrived yet (shutdown closes these).
    idle: bool = True
    # loop.time() after which a read gives up (see PolicyServer._watch_reads).
    read_deadline: float = 0.0
    served: int = field(default=0)


def parse_listen(spec: str) -> tuple[str, str, int]:
    """``unix:/path`` or ``host:port`` (``[::1]:port`` for IPv6) as (kind, where, port)."""
    if spec.startswith("unix:"):
        return "unix", spec[5:], 0
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {spec!r}: expected host:port or unix:/path")
    return "tcp", host.strip("[]") or "127.0.0.1", int(port)


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
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        # The counters' children by (stage, result): labels() takes a lock per call, and
        # this runs for every request Postfix sends.
        self._counted: dict[tuple[str, str], Any] = {}

    # -- life cycle ------------------------------------------------------------------------

    async def listen(self, spec: str, *, reuse_port: bool = False) -> str:
        """Start listening; returns the bound address (the real port for port 0).

        ``reuse_port``: several processes listen on one TCP port (SO_REUSEPORT) and the
        kernel spreads the connections between them.
        """
        kind, where, port = parse_listen(spec)
        if kind == "unix":
            path = where
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # left over from a daemon that did not stop cleanly
            server = await asyncio.start_unix_server(self._serve, path=path, limit=READ_CHUNK)
            os.chmod(path, self.unix_mode)
            self._unix_paths.append(path)
            bound = f"unix:{path}"
        else:
            server = await asyncio.start_server(
                self._serve,
                host=where,
                port=port,
                limit=READ_CHUNK,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
            sockname = server.sockets[0].getsockname()
            bound = f"{sockname[0]}:{sockname[1]}"
        self._servers.append(server)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_reads())
        log.info("SMTP policy daemon listening on %s", bound)
        return bound

    def request_stop(self) -> None:
        """SIGTERM: stop accepting, finish the requests being answered, then exit."""
        if not self._stopping:
            log.info("stopping: %d connections open", len(self._connections))
            self._stopping = True
            asyncio.get_running_loop().create_task(self._stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _watch_reads(self) -> None:
        """Close connections whose read is overdue, once a second.

        One timer for all connections instead of one per read: arming and cancelling a
        timer for every request cost more than a fifth of the daemon's time.
        """
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.WATCH_INTERVAL)
            now = loop.time()
            for connection in list(self._connections):
                if connection.reading and connection.read_deadline < now and connection.task:
                    connection.task.cancel()

    async def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            if connection.idle and connection.task is not None:
                connection.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.shutdown_grace):
                await self.policy.wait_for_background()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._stopped.set()
        log.info("stopped")

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(asyncio.current_task())
        self._connections.add(connection)
        parser = RequestParser()
        try:
            loop = asyncio.get_running_loop()
            while not self._stopping:
                connection.idle = not parser.pending
                # A partial request must complete promptly; between requests Postfix may
                # keep the connection idle for minutes.
                connection.read_deadline = loop.time() + (
                    self.request_timeout if parser.pending else self.idle_timeout
                )
                connection.reading = True
                data = await reader.read(READ_CHUNK)
                connection.reading = False
                if not data:
                    break
                connection.idle = False
                try:
                    requests = parser.feed(data)
                except ProtocolError as error:
                    log_event(log, "smtp_policy.protocol_error", logging.WARNING, error=str(error))
                    break
                for request in requests:
                    writer.write(format_reply(await self.answer(request)))
                    connection.served += 1
                if requests:
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(connection)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, request: PolicyRequest) -> str:
        """Always an answer, within ``request_timeout``: Postfix's own default on a silent
        daemon is a 451 for every message."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.request_timeout):
                action = await self.policy.decide(request)
        except TimeoutError:
            action, result = self.policy.fallback_action(), "timeout"
            log_event(log, "smtp_policy.timeout", logging.ERROR, seconds=self.request_timeout)
        except Exception:
            action, result = self.policy.fallback_action(), "error"
            log_event(log, "smtp_policy.error", logging.ERROR, exc_info=True)
        else:
            result = action.partition(" ")[0].lower()
            result = result if result in RESULTS else "other"
        self._account(request, result, time.perf_counter() - started)
        return action

    def _account(self, request: PolicyRequest, result: str, seconds: float) -> None:
        """The metrics and the one log line of a decision."""
        stage = request.protocol_state.lower()
        stage = stage if stage in STAGES else "other"
        counter = self._counted.get((stage, result))
        if counter is None:
            counter = metrics.SMTP_POLICY_CHECKS.labels(stage=stage, result=result)
            self._counted[(stage, result)] = counter
        counter.inc()
        metrics.SMTP_POLICY_SECONDS.observe(seconds)
        # "dunno" (no opinion) is nearly every answer: DEBUG, like the auth policy's "allow".
        log_event(
            log,
            "smtp_policy.decision",
            logging.DEBUG if result == "dunno" else logging.INFO,
            mailbox=request.sasl_username or request.recipient or None,
            stage=stage,
            result=result,
            client_ip=request.get("client_address") or None,
            sender=request.sender or None,
            recipients=request.get("recipient_count") or None,
            instance=request.instance or None,
        )
