"""One Redis connection per daemon process, shared by every check, pipelined.

redis-py's asyncio client costs tens of microseconds of Python per command (a pooled
connection to take and give back, a coroutine, a future, its own reply parser); the policy
daemon asks Redis once per check, thousands of times a second. Here commands of all Postfix
connections that arrive in one event-loop turn leave in one ``transport.write``, hiredis
parses the replies, and each reply goes to its caller's callback in order: Redis answers a
connection's commands in the order they were sent, so the n-th reply belongs to the n-th
command still waiting. A pipeline is not a transaction: each script runs atomically by
itself, and others may run between them.

When Redis does not answer within ``timeout`` every waiting command fails (the daemon then
answers per ``SMTP_POLICY_ON_REDIS_ERROR``) and the connection is dropped: replies that came
late would otherwise be matched to the wrong commands. The next command connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from mailaccess.mailserver.redis_client import tls_context

log = logging.getLogger(__name__)

Callback = Callable[[Any], None]
# A script command after EVAL/EVALSHA and the script: (script, parts after it, those parts).
_Retry = tuple["Script", int, bytes]


class RedisError(Exception):
    """Redis cannot be reached, did not answer in time, or refused a command."""


class Script:
    """A Lua script sent by its SHA1 (EVALSHA); loaded again when Redis has forgotten it."""

    __slots__ = ("body", "packed_eval", "packed_evalsha", "sha")

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body, usedforsecurity=False).hexdigest().encode()
        self.packed_evalsha = b"$7\r\nEVALSHA\r\n$40\r\n" + self.sha + b"\r\n"
        self.packed_eval = b"$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (len(self.body), self.body)


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b"%d" % value


def pack_parts(parts: Iterable[Any]) -> bytes:
    """Parts of a command in Redis's protocol (RESP), without the count in front."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in map(_encode, parts))


def pack_command(*parts: Any) -> bytes:
    """One command in Redis's protocol; redis-py's own packer costs several times more."""
    return b"*%d\r\n" % len(parts) + pack_parts(parts)


# A command waiting for its reply: its callback, and what it takes to send it again as EVAL
# for a NOSCRIPT reply.
_Waiting = tuple[Callback, _Retry | None]


class _Connection(asyncio.Protocol):
    def __init__(self, owner: RedisPipeline) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        waiting = owner._waiting
        try:
            while (reply := reader.gets()) is not False:
                if not owner._sent:
                    raise RedisError("a reply nobody asked for")
                owner._sent -= 1
                callback, retry = waiting.popleft()
                if (
                    isinstance(reply, hiredis.ReplyError)
                    and retry is not None
                    and str(reply).startswith("NOSCRIPT")
                ):
                    # Redis restarted or flushed its scripts: EVAL loads it again.
                    script, parts, tail = retry
                    command = b"*%d\r\n%s%s" % (parts + 2, script.packed_eval, tail)
                    owner._send(command, callback, None)
                    continue
                try:
                    callback(reply)
                except Exception:
                    # One caller's bug must not take the other callers' replies with it.
                    log.exception("Redis reply callback failed")
        except (hiredis.ProtocolError, RedisError) as error:
            owner._lost(self, RedisError(f"Redis protocol error: {error}"))
            return
        if not owner._sent and owner._outgoing and not owner._flush_scheduled:
            # The batch is answered: what was asked meanwhile leaves as one batch, after the
            # other events of this loop turn (requests on other connections) have added to
            # it. Writing at once woke Redis in the middle of the turn, and on a busy machine
            # Redis then took this core while the turn's other requests waited.
            owner._flush_scheduled = True
            assert owner._loop is not None
            owner._loop.call_soon(owner._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, RedisError(f"Redis connection lost: {exc or 'closed'}"))


def _deliver(callback: Callback, reply: Any) -> None:
    try:
        callback(reply)
    except Exception:
        # One caller's bug must not take the other callers' replies with it.
        log.exception("Redis reply callback failed")


class RedisPipeline:
    """``call``/``evalsha`` with a callback (the daemon's fast path), ``execute`` to await."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Commands sent and not answered (the first ``_sent``), then those not sent yet (the
        # ``_outgoing`` ones), in order.
        self._waiting: deque[_Waiting] = deque()
        self._outgoing: list[bytes] = []
        self._sent = 0
        self._batch_sent_at = 0.0
        self._flush_scheduled = False
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._path, self._address, self._setup = self.parse_url(url)
        self._tls = tls_context(url)

    @staticmethod
    def parse_url(url: str) -> tuple[str | None, tuple[str, int], list[bytes]]:
        """redis[s]://[user:password@]host:port/db or unix:///path?db=N."""
        parts = urlsplit(url)
        setup: list[bytes] = []
        if parts.password is not None or parts.username:
            password = unquote(parts.password or "")
            if parts.username:
                setup.append(pack_command(b"AUTH", unquote(parts.username), password))
            else:
                setup.append(pack_command(b"AUTH", password))
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            db = query.get("db", ["0"])[0]
            path: str | None = parts.path
            address = ("", 0)
        elif parts.scheme in ("redis", "rediss"):
            db = parts.path.strip("/") or query.get("db", ["0"])[0]
            path = None
            address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        else:
            # Not the URL itself: it may hold Redis's password.
            raise ValueError(
                f"Redis URL with {parts.scheme}://: expected redis://, rediss:// or unix://"
            )
        if db and db != "0":
            setup.append(pack_command(b"SELECT", int(db)))
        return path, address, setup

    # -- commands ----------------------------------------------------------------------------

    def call(self, callback: Callback, *parts: Any) -> None:
        """Send a command; ``callback`` gets the reply, or an exception (a ``RedisError`` when
        Redis is unreachable or late, a ``hiredis.ReplyError`` when it refused the command)."""
        self._send(pack_command(*parts), callback, None)

    def call_packed(self, callback: Callback, command: bytes) -> None:
        """``call`` of a command already packed in Redis's protocol (``pack_command``)."""
        self._send(command, callback, None)

    def evalsha(self, callback: Callback, script: Script, keys: list[Any], args: list[Any]) -> None:
        parts = [len(keys), *keys, *args]
        self.evalsha_packed(callback, script, len(parts), pack_parts(parts))

    def evalsha_packed(self, callback: Callback, script: Script, parts: int, tail: bytes) -> None:
        """EVALSHA of ``parts`` already packed in Redis's protocol (``tail``: the key count,
        the keys, the arguments), for callers that keep the constant parts packed."""
        self._send(
            b"*%d\r\n%s%s" % (parts + 2, script.packed_evalsha, tail),
            callback,
            (script, parts, tail),
        )

    async def execute(self, *parts: Any) -> Any:
        """Await one command's reply; raises its error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            if future.done():
                return
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

        self.call(done, *parts)
        return await future

    def _send(self, command: bytes, callback: Callback, retry: _Retry | None) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(_deliver, callback, RedisError("the Redis pipeline is closed"))
            return
        self._outgoing.append(command)
        self._waiting.append((callback, retry))
        if not self._flush_scheduled and not self._sent:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Everything asked since the last batch, in one write, once that batch is answered.

        One batch at a time: while Redis answers one, the next one grows. Under load that
        makes batches of dozens of commands (a write and a read for each batch were half the
        daemon's system calls with a batch per loop turn); idle, a command leaves at once.
        """
        self._flush_scheduled = False
        connection = self._connection
        if connection is None or connection.transport is None:
            if self._connecting is None and self._outgoing:
                assert self._loop is not None
                self._connecting = self._loop.create_task(self._connect())
            return
        if self._outgoing and not self._sent:
            outgoing = self._outgoing
            data = b"".join(outgoing) if len(outgoing) > 1 else outgoing[0]
            self._sent = len(outgoing)
            outgoing.clear()
            assert self._loop is not None
            self._batch_sent_at = self._loop.time()
            connection.transport.write(data)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _Connection(self), self._path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self), *self._address, ssl=self._tls
                    )
        except (OSError, TimeoutError) as error:
            self._connecting = None
            # The error's text says why (refused, unreachable, a certificate not trusted).
            self._fail_all(RedisError(f"cannot connect to Redis: {type(error).__name__}: {error}"))
            return
        self._connecting = None
        if self._closed:
            assert protocol.transport is not None
            protocol.transport.close()
            return
        self._connection = protocol
        if self._setup:
            # AUTH and SELECT go first; their replies are checked like any other.
            self._outgoing[:0] = self._setup
            for _ in self._setup:
                self._waiting.appendleft((self._check_setup, None))
        if self._watch is None:
            self._watch = loop.call_later(self.timeout / 4, self._watch_replies)
        self._flush()

    def _check_setup(self, reply: Any) -> None:
        if isinstance(reply, Exception) and self._connection is not None:
            log.error("Redis refused AUTH or SELECT: %s", reply)
            self._lost(self._connection, RedisError(f"Redis refused AUTH or SELECT: {reply}"))

    def _watch_replies(self) -> None:
        """A few times per timeout, not a timer per command: fail everything when the oldest
        command waits too long."""
        assert self._loop is not None
        self._watch = None
        if self._closed:
            return
        now = self._loop.time()
        if self._sent and now - self._batch_sent_at > self.timeout:
            if self._connection is not None:
                self._lost(self._connection, RedisError("Redis did not answer in time"))
            else:
                self._fail_all(RedisError("Redis did not answer in time"))
        if self._connection is not None or self._waiting:
            self._watch = self._loop.call_later(self.timeout / 4, self._watch_replies)

    def _lost(self, connection: _Connection, error: RedisError) -> None:
        if self._connection is not connection:
            return
        self._connection = None
        if connection.transport is not None:
            connection.transport.abort()
        self._fail_all(error)

    def _fail_all(self, error: RedisError) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        self._outgoing.clear()
        self._sent = 0
        for callback, _ in waiting:
            _deliver(callback, error)

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            connection = self._connection
            self._connection = None
            if connection.transport is not None:
                connection.transport.close()
        self._fail_all(RedisError("the Redis pipeline is closed"))
