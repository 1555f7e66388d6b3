"""The policy servers' Redis client on a Redis Cluster: ``RedisPipeline``'s calls, routed.

Every key of a mailbox carries its hash tag (``counters.mailbox_key``), so each command and
each script touches one slot, and a slot belongs to one master. This client keeps the slot map
(``CLUSTER SLOTS``) and one pipelined connection per master, each a ``RedisPipeline`` of its
own with everything that class does (one batch in flight, hiredis, its timeout policy: a late
command fails with all queued behind it on that connection, and the connection is dropped).
A command goes to the master of its key's slot (CRC16 of the hash tag, 16384 slots).

What a cluster adds:
- ``MOVED slot host:port`` (the slot has a new master): the map's entry is corrected at once,
  the command sent there again, and the whole map read again in the background.
- ``ASK slot host:port`` (the slot is being migrated and this key has moved already):
  ``ASKING`` and then the command on that node, adjacent on its connection; a script goes
  there as EVAL (its body), since the importing node may not know it by SHA1 yet.
- A node unreachable or late, or ``CLUSTERDOWN``/``TRYAGAIN``: the command fails as on one
  Redis (the callers give their fallback answer), and the map is read again, at most every
  ``REFRESH_INTERVAL`` seconds, from any node that answers. A master that dies is replaced by
  its replica after ``cluster-node-timeout`` and an election; until the map shows the new
  master, the commands of its slots fail. Nothing is sent twice after a connection is lost:
  a write whose reply was lost may have counted.
- Commands without a key: ``SCRIPT LOAD`` goes to every master (a script runs on the master
  of its keys), ``PING`` (readiness) to every master (a server that cannot reach one master
  cannot answer for its mailboxes), ``PUBLISH`` to any one (a cluster forwards it to every
  node, so a subscriber on any node hears it).

A redirect is a new command on the other node, with that node's timeout; after ``MAX_HOPS``
redirects the command fails. The single-Redis path is ``RedisPipeline`` itself, untouched:
``open_pipeline`` picks this class only for a ``redis+cluster://`` URL.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import random
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.redis_urls import is_cluster_url, parse_cluster_url
from mailaccess.mailserver.redis_pipeline import (
    Address,
    Callback,
    RedisPipeline,
    _deliver,
    _noscript_errors,
    _Retry,
    _settle,
    join_command,
    pack_command,
    parse_url,
    tls_context,
)

log = logging.getLogger(__name__)

SLOTS = 16384
# Redirects one command may follow (a slot moving twice while a command is in flight is rare).
MAX_HOPS = 5
# The map is read again at most this often, however many commands fail meanwhile.
REFRESH_INTERVAL = 0.2

ASKING = pack_command("ASKING")
# A node unreachable or late: what fails a whole batch, and makes the map be read again.
_LOST = (RedisConnectionError, RedisTimeoutError)
# Commands whose second part is not a key; routed as the module's docstring says.
_KEYLESS = frozenset({b"PING", b"SCRIPT", b"PUBLISH", b"CLUSTER", b"INFO", b"ASKING"})


def open_pipeline(url: str, *, timeout: float, decode: bool = False) -> RedisPipeline:
    """The policy servers' client for ``url``: one Redis, or a cluster."""
    if is_cluster_url(url):
        return ClusterPipeline(url, timeout=timeout, decode=decode)
    return RedisPipeline(url, timeout=timeout, decode=decode)


def check_url(url: str) -> None:
    """Raises ValueError when the URL cannot be used (at a server's start)."""
    if is_cluster_url(url):
        cluster_addresses(url)
    else:
        parse_url(url)


def cluster_addresses(url: str) -> tuple[tuple[str, ...], Callable[[str], Address]]:
    """The startup nodes (``host:port``) and how to make any node's ``Address`` (AUTH, TLS)."""
    parsed = parse_cluster_url(url)
    setup: tuple[bytes, ...] = ()
    if parsed.password is not None or parsed.username:
        if parsed.username:
            setup = (pack_command("AUTH", parsed.username, parsed.password or ""),)
        else:
            setup = (pack_command("AUTH", parsed.password or ""),)
    tls = tls_context(url)

    def address(node: str) -> Address:
        host, _, port = node.rpartition(":")
        return Address(None, host, int(port), setup, tls)

    return tuple(f"{host}:{port}" for host, port in parsed.nodes), address


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a key: CRC16 (XMODEM: ``crc_hqx``) of its hash tag, if any."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


def split_command(
    data: bytes, offset: int = 0, *, whole: bool = True
) -> tuple[int, bytes, bytes | None]:
    """One packed command at ``offset``: where it ends (with ``whole``; else where its key
    ends), its name (upper case) and its key (None for a command without one)."""
    line_end = data.index(b"\r\n", offset)
    count = int(data[offset + 1 : line_end])
    position = line_end + 2
    # A key is the second part, or an EVAL's fourth: the parts after it are read only to
    # find where the command ends.
    wanted = count if whole else min(count, 4)
    first: list[bytes] = []
    for index in range(wanted):
        line_end = data.index(b"\r\n", position)
        length = int(data[position + 1 : line_end])
        start = line_end + 2
        if index < 4:
            first.append(data[start : start + length])
        position = start + length + 2
    name = first[0].upper()
    key: bytes | None = None
    if name in (b"EVALSHA", b"EVAL"):
        if count > 3 and int(first[2]) > 0:
            key = first[3]
    elif name not in _KEYLESS and count > 1:
        key = first[1]
    return position, name, key


def _node_name(host: Any, port: Any, asked: str) -> str:
    host = host.decode() if isinstance(host, bytes) else str(host)
    if not host or host == "?":
        # An endpoint the node does not know: the host of the node that answered.
        host = asked.rpartition(":")[0]
    return f"{host}:{int(port)}"


def _ignore(reply: Any) -> None:
    """ASKING's reply (OK); a failure shows in the command's own reply right after it."""


class ClusterPipeline(RedisPipeline):
    """``RedisPipeline``'s interface on a Redis Cluster (see the module's docstring)."""

    def __init__(self, url: str, *, timeout: float, decode: bool = False) -> None:
        # Not RedisPipeline.__init__: this object has no connection of its own, only nodes.
        self.timeout = timeout
        self.decode = decode
        self.encoding = "utf-8" if decode else None
        self.startup, self._address = cluster_addresses(url)
        self._nodes: dict[str, RedisPipeline] = {}
        # The master of each slot, once read; None for a slot no master serves.
        self._slots: list[str | None] | None = None
        self._masters: tuple[str, ...] = ()
        # Commands asked before the first map is read: (slot, command, callback, retry).
        self._pending: list[tuple[int | None, bytes, Callback, _Retry | None]] = []
        self._map_waiters: list[asyncio.Future[None]] = []
        self._refreshing: asyncio.Task[None] | None = None
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._refreshed_at = -REFRESH_INTERVAL
        self._stale = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- routing -------------------------------------------------------------------------

    def _node(self, name: str) -> RedisPipeline:
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = RedisPipeline(
                self._address(name), timeout=self.timeout, decode=self.decode
            )
        return node

    def _send(
        self, command: bytes, callback: Callback, retry: _Retry | None = None, count: int = 0
    ) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(_deliver, callback, RedisConnectionError("the Redis client is closed"))
            return
        if count:
            self._send_batch(command, count, callback)
            return
        _, _, key = split_command(command, whole=False)
        self._route(None if key is None else key_slot(key), command, callback, retry)

    async def send_commands(self, commands: list[bytes]) -> list[Any]:
        """``send_packed`` of commands packed one by one: each goes to its own slot's
        master without the batch being parsed to find where each command ends."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        self._route_batch(commands, lambda reply: _settle(future, reply))
        return _noscript_errors(await future)

    def _send_batch(self, data: bytes, count: int, callback: Callback) -> None:
        commands = []
        offset = 0
        for _ in range(count):
            end, _, _ = split_command(data, offset)
            commands.append(data[offset:end])
            offset = end
        self._route_batch(commands, callback)

    def _route_batch(self, commands: list[bytes], callback: Callback) -> None:
        """Each command to its own slot's master; the replies in order (a refused command's
        error in its place), or the first connection error or timeout of any of them, as
        one Redis would fail the whole batch."""
        count = len(commands)
        replies: list[Any] = [None] * count
        left = [count]

        def part(index: int) -> Callback:
            def replied(reply: Any) -> None:
                replies[index] = reply
                left[0] -= 1
                if left[0]:
                    return
                lost = next((r for r in replies if isinstance(r, _LOST)), None)
                callback(lost if lost is not None else replies)

            return replied

        for index, command in enumerate(commands):
            _, _, key = split_command(command, whole=False)
            self._route(None if key is None else key_slot(key), command, part(index), None)

    def _route(
        self,
        slot: int | None,
        command: bytes,
        callback: Callback,
        retry: _Retry | None,
        hops: int = 0,
    ) -> None:
        slots = self._slots
        if slots is None:
            self._pending.append((slot, command, callback, retry))
            self._refresh_soon()
            return
        name = slots[slot] if slot is not None else (self._masters[0] if self._masters else None)
        if name is None:
            self._refresh_soon()
            _deliver(callback, ResponseError(f"CLUSTERDOWN no master serves slot {slot}"))
            return
        self._node(name)._send(command, self._follow(slot, command, callback, retry, hops), retry)

    def _follow(
        self,
        slot: int | None,
        command: bytes,
        callback: Callback,
        retry: _Retry | None,
        hops: int,
    ) -> Callback:
        def replied(reply: Any) -> None:
            if isinstance(reply, ResponseError):
                message = str(reply)
                if message.startswith(("MOVED ", "ASK ")) and hops < MAX_HOPS:
                    self._redirect(message, command, callback, retry, hops)
                    return
                if message.startswith(("CLUSTERDOWN", "TRYAGAIN")):
                    self._refresh_soon()
            elif isinstance(reply, _LOST):
                self._refresh_soon()
            callback(reply)

        return replied

    def _redirect(
        self, message: str, command: bytes, callback: Callback, retry: _Retry | None, hops: int
    ) -> None:
        kind, slot_text, node = message.split()[:3]
        slot = int(slot_text)
        if kind == "MOVED":
            if self._slots is not None:
                self._slots[slot] = node
            self._refresh_soon()
            self._node(node)._send(
                command, self._follow(slot, command, callback, retry, hops + 1), retry
            )
            return
        if retry is not None:
            script, parts, tail = retry
            command = join_command(parts + 2, script.packed_eval, tail)
        target = self._node(node)
        # Adjacent on that connection: ASKING holds for the next command only.
        target._send(ASKING, _ignore)
        target._send(command, self._follow(slot, command, callback, None, hops + 1))

    # -- the slot map ----------------------------------------------------------------------

    def _refresh_soon(self) -> None:
        if self._closed:
            return
        if self._refreshing is not None or self._refresh_handle is not None:
            self._stale = True
            return
        assert self._loop is not None
        delay = max(0.0, self._refreshed_at + REFRESH_INTERVAL - self._loop.time())
        self._refresh_handle = self._loop.call_later(delay, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh_handle = None
        assert self._loop is not None
        self._refreshed_at = self._loop.time()
        self._stale = False
        self._refreshing = self._loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        error: Exception = RedisConnectionError("no Redis Cluster node answered CLUSTER SLOTS")
        # The masters known first (one of them may be down: in random order), then the
        # nodes of the URL, which may know of a cluster that has changed entirely.
        known = list(self._masters)
        random.shuffle(known)
        candidates = list(dict.fromkeys([*known, *self.startup, *self._nodes]))
        loaded = False
        try:
            async with asyncio.timeout(self.timeout):
                for name in candidates:
                    try:
                        reply = await self._node(name).execute("CLUSTER", "SLOTS")
                    except RedisError as failed:
                        error = failed
                        continue
                    self._install(reply, name)
                    loaded = True
                    break
        except TimeoutError:
            error = RedisTimeoutError(f"Redis Cluster: no slot map within {self.timeout} s")
        finally:
            self._refreshing = None
        if not loaded:
            log.warning("Redis Cluster slot map not read: %s", error)
            if self._slots is None:
                self._fail_pending(error)
        else:
            self._dispatch_pending()
        if self._stale:
            self._refresh_soon()

    def _install(self, reply: list[Any], asked: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        masters: dict[str, None] = {}
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            name = _node_name(master[0], master[1], asked)
            masters[name] = None
            slots[start : end + 1] = [name] * (end - start + 1)
        self._slots = slots
        self._masters = tuple(masters)

    def _dispatch_pending(self) -> None:
        pending, self._pending = self._pending, []
        for slot, command, callback, retry in pending:
            self._route(slot, command, callback, retry)
        waiters, self._map_waiters = self._map_waiters, []
        for waiter in waiters:
            _settle(waiter, None)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for _, _, callback, _ in pending:
            _deliver(callback, error)
        waiters, self._map_waiters = self._map_waiters, []
        for waiter in waiters:
            _settle(waiter, error)

    async def _with_map(self) -> tuple[str, ...]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._slots is None:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._map_waiters.append(waiter)
            self._refresh_soon()
            await waiter
        return self._masters

    # -- commands without a key ----------------------------------------------------------

    async def execute(self, *parts: Any) -> Any:
        name = str(parts[0].decode() if isinstance(parts[0], bytes) else parts[0]).upper()
        if name == "PING" or (name == "SCRIPT" and str(parts[1]).upper() == "LOAD"):
            masters = await self._with_map()
            if not masters:
                raise ResponseError("CLUSTERDOWN no master in the slot map")
            try:
                replies = await asyncio.gather(
                    *(self._node(master).execute(*parts) for master in masters)
                )
            except _LOST:
                self._refresh_soon()
                raise
            return replies[0]
        return await super().execute(*parts)

    async def aclose(self) -> None:
        self._closed = True
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None
        if self._refreshing is not None:
            self._refreshing.cancel()
            self._refreshing = None
        self._fail_pending(RedisConnectionError("the Redis client is closed"))
        for node in list(self._nodes.values()):
            await node.aclose()
