"""The policy servers' Redis client: one pipelined connection per process, shared by every
request of that process. Both servers use it (the SMTP policy daemon and the auth policy).

Why not redis-py's asyncio client: it takes a pooled connection for every command, writes and
reads it on its own and parses the reply in Python, tens of microseconds of Python per
command. Measured on a two-core machine, 32 concurrent tasks made about 1,300 PINGs a second
through it against 11,500 through a bare asyncio socket; the policy servers ask Redis once or
twice per request, thousands of times a second. Here commands of all requests that arrive in
one event-loop turn leave in one ``transport.write``, hiredis (C) parses the replies, and each
reply goes to its caller in order: Redis answers a connection's commands in the order they
were sent, so the n-th reply belongs to the n-th command still waiting. One batch is in flight
at a time: while Redis answers it the next one grows, so under load a batch holds dozens of
commands (a write and a read per loop turn were half the daemon's system calls). A pipeline
is not a transaction: each script runs atomically by itself, and others may run between them.

The timeout policy: a command not answered within ``timeout`` of being asked fails, and so
does every command queued with or after it, and the connection is dropped; the next command
connects again (lazily, within ``timeout`` too). Keeping a silent connection would leave its
late replies to be matched to the wrong commands, and keeping timed-out commands queued behind
a Redis that never answers would only grow the queue: a hung Redis must cost each caller one
timeout, not pile up. Callers then answer as their service is configured (the SMTP daemon per
``SMTP_POLICY_ON_REDIS_ERROR``, the auth policy with an error Dovecot acts on).

Errors are redis-py's public exception classes (``redis.exceptions``): ``ConnectionError``
(unreachable, connection lost), ``TimeoutError`` (no answer in time), ``ResponseError`` (a
command refused; ``NoScriptError`` in a batch for a script Redis does not know), so a caller
that also uses redis-py's synchronous client catches both with ``redis.RedisError``.

The URL is read here, once: ``redis[s]://[[user]:password@]host[:port][/db]`` or
``unix:///path?db=N``, with the TLS settings of a ``rediss://`` URL in redis-py's query
parameters (the web reads the same URL with redis-py). Not redis-py's ``parse_url``: it is an
internal of its asyncio module, and this parser is a dozen lines.

Packing: ``pack_command``/``pack_parts`` (hiredis, C) are the only RESP packers; the hot paths
keep the parts of their commands that never change packed once and join them with
``join_command``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Callback = Callable[[Any], None]


# -- Redis's protocol (RESP) ------------------------------------------------------------------


def pack_command(*parts: Any) -> bytes:
    """One command in Redis's protocol (bytes, str, int or float parts; hiredis, C).

    A lone surrogate in a str raises UnicodeEncodeError here, where a caller can catch it.
    """
    return bytes(hiredis.pack_command(cast(Any, parts)))


def pack_parts(*parts: Any) -> bytes:
    """Parts of a command without the count in front: to keep packed, and join later."""
    packed = pack_command(*parts)
    return packed[packed.index(b"\r\n") + 2 :]


def join_command(count: int, *packed: bytes) -> bytes:
    """One command of ``count`` parts from ``pack_parts`` pieces."""
    return b"*%d\r\n%s" % (count, b"".join(packed))


class Script:
    """A Lua script sent by its SHA1 (EVALSHA); sent with its body (EVAL) when Redis has
    forgotten it (a restart, SCRIPT FLUSH)."""

    __slots__ = ("body", "packed_eval", "packed_evalsha", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
        self.packed_evalsha = pack_parts("EVALSHA", self.sha)
        self.packed_eval = pack_parts("EVAL", body)


# -- the URL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where Redis is and what to send first: ``path`` (a unix socket) or ``host``/``port``,
    and AUTH/SELECT already packed."""

    path: str | None
    host: str
    port: int
    setup: tuple[bytes, ...]
    tls: ssl.SSLContext | None


def parse_url(url: str) -> Address:
    """Raises ValueError naming what is wrong, never the URL itself (it may hold a password)."""
    parts = urlsplit(url)
    setup: list[bytes] = []
    if parts.password is not None or parts.username:
        password = unquote(parts.password or "")
        if parts.username:
            setup.append(pack_command("AUTH", unquote(parts.username), password))
        else:
            setup.append(pack_command("AUTH", password))
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        db = query.get("db", ["0"])[0]
        path: str | None = parts.path
        host, port = "", 0
    elif parts.scheme in ("redis", "rediss"):
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
        path = None
        try:
            host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        except ValueError as error:
            raise ValueError("Redis URL: the port is not a number") from error
    else:
        raise ValueError(
            f"Redis URL with {parts.scheme}://: expected redis://, rediss:// or unix:// "
            "(or redis+cluster://, rediss+cluster:// for a cluster)"
        )
    if not db.isdigit():
        raise ValueError("Redis URL: the database must be a number")
    if int(db):
        setup.append(pack_command("SELECT", int(db)))
    return Address(path, host, port, tuple(setup), tls_context(url))


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS settings of a ``rediss://`` URL, in redis-py's query parameters (the portal
    reads the same URL with redis-py): ``ssl_ca_certs`` (the CA file; the system's CAs by
    default), ``ssl_cert_reqs`` (``required``, the default, or ``none``; to a client
    ``optional`` means ``required``), ``ssl_certfile`` and ``ssl_keyfile`` (a client
    certificate, for a Redis with ``tls-auth-clients yes``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("rediss", "rediss+cluster"):
        return None
    # Errors name the parameter, not the URL: the URL may hold Redis's password.
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    requirement = query.get("ssl_cert_reqs", "required").lower()
    if requirement not in ("required", "optional", "none"):
        raise ValueError("Redis URL: ssl_cert_reqs must be required or none")
    try:
        context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
        if "ssl_certfile" in query:
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"Redis URL: cannot load its TLS files ({error})") from error
    if requirement == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- the connection ---------------------------------------------------------------------------

# A script command after EVAL/EVALSHA and the script: (script, parts after it, those parts).
_Retry = tuple[Script, int, bytes]
# What waits for a reply: its callback, what it takes to send it again as EVAL after NOSCRIPT,
# and for a batch the number of replies it takes (0: one reply, not in a list).
_Waiting = tuple[Callback, _Retry | None, int]


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


class _Connection(asyncio.Protocol):
    def __init__(self, owner: RedisPipeline) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=ResponseError, encoding=owner.encoding)
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
                    raise RedisConnectionError("a reply nobody asked for")
                callback, retry, count = waiting[0]
                if count:
                    batch = owner._batch
                    batch.append(reply)
                    if len(batch) < count:
                        continue
                    owner._batch = []
                    reply = batch
                waiting.popleft()
                owner._sent -= 1
                if retry is not None and _is_noscript(reply):
                    # Redis restarted or flushed its scripts: EVAL loads it again.
                    script, parts, tail = retry
                    owner._send(join_command(parts + 2, script.packed_eval, tail), callback)
                    continue
                _deliver(callback, reply)
        except (hiredis.ProtocolError, RedisConnectionError) as error:
            owner._lost(self, RedisConnectionError(f"Redis protocol error: {error}"))
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
        self.owner._lost(self, RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))


def _noscript_errors(replies: list[Any]) -> list[Any]:
    """A batch's replies, NOSCRIPT as ``NoScriptError`` (the caller loads its scripts)."""
    if any(_is_noscript(reply) for reply in replies):
        return [NoScriptError(str(reply)) if _is_noscript(reply) else reply for reply in replies]
    return replies


def _deliver(callback: Callback, reply: Any) -> None:
    try:
        callback(reply)
    except Exception:
        # One caller's bug must not take the other callers' replies with it.
        log.exception("Redis reply callback failed")


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class RedisPipeline:
    """``call``/``evalsha`` with a callback (the SMTP daemon's fast path); ``execute`` and
    ``send_packed`` to await (the auth policy). ``decode``: replies as str, not bytes."""

    def __init__(self, url: str | Address, *, timeout: float, decode: bool = False) -> None:
        self.timeout = timeout
        self.encoding = "utf-8" if decode else None
        self.address = url if isinstance(url, Address) else parse_url(url)
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Commands sent and not answered (the first ``_sent``), then those not sent yet (the
        # ``_outgoing`` ones), in order; the replies so far of a batch being answered.
        self._waiting: deque[_Waiting] = deque()
        self._outgoing: list[bytes] = []
        self._sent = 0
        self._batch: list[Any] = []
        # When the oldest command of the batch in flight, and of the outgoing one, was asked.
        self._sent_asked_at = 0.0
        self._outgoing_asked_at = 0.0
        self._flush_scheduled = False
        self._deadline: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- commands ----------------------------------------------------------------------------

    def call(self, callback: Callback, *parts: Any) -> None:
        """Send a command; ``callback`` gets the reply or an exception (``ConnectionError`` or
        ``TimeoutError`` when Redis is unreachable or late, ``ResponseError`` when it refused
        the command)."""
        self._send(pack_command(*parts), callback)

    def call_packed(self, callback: Callback, command: bytes) -> None:
        """``call`` of a command already packed (``pack_command``, ``join_command``)."""
        self._send(command, callback)

    def evalsha(self, callback: Callback, script: Script, keys: list[Any], args: list[Any]) -> None:
        parts = [len(keys), *keys, *args]
        self.evalsha_packed(callback, script, len(parts), pack_parts(*parts))

    def evalsha_packed(self, callback: Callback, script: Script, parts: int, tail: bytes) -> None:
        """EVALSHA of ``parts`` already packed (``tail``: the key count, the keys, the
        arguments), for callers that keep the constant parts packed."""
        self._send(
            join_command(parts + 2, script.packed_evalsha, tail), callback, (script, parts, tail)
        )

    async def execute(self, *parts: Any) -> Any:
        """Await one command's reply; raises its error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(pack_command(*parts), lambda reply: _settle(future, reply))
        return await future

    async def send_packed(self, data: bytes, count: int) -> list[Any]:
        """Await the replies of ``count`` commands packed together in ``data``, in order; a
        refused command's reply is its exception (``NoScriptError`` for an unknown script),
        not raised. Raises when Redis is unreachable or late."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(data, lambda reply: _settle(future, reply), None, count)
        return _noscript_errors(await future)

    async def send_commands(self, commands: list[bytes]) -> list[Any]:
        """``send_packed`` of commands packed one by one (``pack_command``, ``join_command``);
        on a cluster each goes to its own slot's master (``redis_cluster.py``)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        data = b"".join(commands) if len(commands) > 1 else commands[0]
        self._send(data, lambda reply: _settle(future, reply), None, len(commands))
        return _noscript_errors(await future)

    async def script_load(self, script: str) -> str:
        return str(await self.execute("SCRIPT", "LOAD", script))

    def _send(
        self, command: bytes, callback: Callback, retry: _Retry | None = None, count: int = 0
    ) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(_deliver, callback, RedisConnectionError("the Redis client is closed"))
            return
        if not self._outgoing:
            self._outgoing_asked_at = loop.time()
        self._outgoing.append(command)
        self._waiting.append((callback, retry, count))
        if self._deadline is None:
            self._deadline = loop.call_later(self.timeout, self._check_deadline)
        if not self._flush_scheduled and not self._sent:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Everything asked since the last batch, in one write, once that batch is answered.

        One batch at a time: while Redis answers one, the next one grows. Under load that
        makes batches of dozens of commands; idle, a command leaves at once.
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
            self._sent_asked_at = self._outgoing_asked_at
            outgoing.clear()
            connection.transport.write(data)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.address
        try:
            async with asyncio.timeout(self.timeout):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _Connection(self), address.path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self), address.host, address.port, ssl=address.tls
                    )
        except (OSError, TimeoutError) as error:
            self._connecting = None
            # The error's text says why (refused, unreachable, a certificate not trusted).
            self._fail_all(
                RedisConnectionError(f"cannot connect to Redis: {type(error).__name__}: {error}")
            )
            return
        self._connecting = None
        if self._closed:
            assert protocol.transport is not None
            protocol.transport.close()
            return
        self._connection = protocol
        if address.setup:
            # AUTH and SELECT go first, even when the commands that asked for the connection
            # have failed meanwhile; their replies are checked like any other.
            if not self._outgoing:
                self._outgoing_asked_at = loop.time()
            self._outgoing[:0] = address.setup
            for _ in address.setup:
                self._waiting.appendleft((self._check_setup, None, 0))
            if self._deadline is None:
                self._deadline = loop.call_later(self.timeout, self._check_deadline)
        self._flush()

    def _check_setup(self, reply: Any) -> None:
        if isinstance(reply, Exception) and self._connection is not None:
            log.error("Redis refused AUTH or SELECT: %s", reply)
            self._lost(
                self._connection, RedisConnectionError(f"Redis refused AUTH or SELECT: {reply}")
            )

    def _check_deadline(self) -> None:
        """One timer at a time, for the oldest command waiting (not one per command)."""
        self._deadline = None
        if self._sent:
            asked_at = self._sent_asked_at
        elif self._outgoing:
            asked_at = self._outgoing_asked_at
        else:
            return
        assert self._loop is not None
        left = asked_at + self.timeout - self._loop.time()
        if left > 0:
            self._deadline = self._loop.call_later(left, self._check_deadline)
            return
        error = RedisTimeoutError(f"Redis did not answer within {self.timeout} s")
        if self._connection is not None:
            self._lost(self._connection, error)
        else:
            self._fail_all(error)

    def _lost(self, connection: _Connection, error: Exception) -> None:
        if self._connection is not connection:
            return
        self._connection = None
        if connection.transport is not None:
            connection.transport.abort()
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        self._outgoing.clear()
        self._sent = 0
        self._batch = []
        for callback, _, _ in waiting:
            _deliver(callback, error)

    async def aclose(self) -> None:
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            connection = self._connection
            self._connection = None
            if connection.transport is not None:
                connection.transport.close()
        self._fail_all(RedisConnectionError("the Redis client is closed"))
