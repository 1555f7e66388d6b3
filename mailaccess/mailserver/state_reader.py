"""A cache miss of the auth policy, read on the event loop: one query, no thread, no ORM.

A mailbox's state is cached for an hour (``state.py``), so a miss is the first login of a
mailbox that has not logged in for that long, and every login after Redis lost its keys (a
restart, a failover). The second case comes all at once: at a provider's thousands of logins
a second, every one a miss. Read through the ORM in the app's four threads, such a burst
queued behind the threads, the requests outlived Dovecot's timeout, and Dovecot let every
login in without the policy (``auth_policy_reject_on_fail = no``; benchmarks/README.md,
issue 23). Here misses are read on asynchronous psycopg connections, a handful of which the
process keeps open, while the event loop serves other requests; and the misses that arrive
together are read together, in one statement for up to ``BATCH`` addresses, so a burst costs
PostgreSQL a few index scans per round trip instead of a round trip each.

PostgreSQL only. On the embedded default (SQLite) the app reads through ``state.load`` in its
threads, as before; both must give the same state, which the tests check.

Every read is bounded like the threads' (``database_threads.py``): the connection carries
``statement_timeout``, ``tcp_user_timeout`` and ``connect_timeout``, and a read not answered
within ``MAILSERVER_DATABASE_WAIT`` raises TimeoutError (the request is then a 503, as when the
database is away). A connection that failed or was cut off mid-read is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from accounts.models import normalize_address
from mailaccess import passwords
from mailaccess.mailserver.auth_policy import MailboxState, PasswordScope
from mailaccess.mailserver.database_threads import bounded_options
from mailaccess.models import Protocol

# The state ``state.load`` builds, for several addresses in one statement: each mailbox, its
# access row and its live passwords (as a JSON array, so one row per mailbox).
STATE_SQL = """
SELECT m.address, m.id, m.plan, m.language, COALESCE(a.enabled, false),
       COALESCE(a.block_reason, ''),
       COALESCE((SELECT json_agg(json_build_array(p.id, left(p.lookup_key, %(key_hex)s),
                                                  p.allow_imap, p.allow_pop3, p.allow_smtp,
                                                  p.allowed_networks) ORDER BY p.id)
                 FROM mailaccess_apppassword p
                 WHERE p.mailbox_id = m.id AND p.revoked_at IS NULL), '[]')
FROM accounts_mailbox m LEFT JOIN mailaccess_externalaccess a ON a.mailbox_id = m.id
WHERE m.address = ANY(%(addresses)s)
"""
# Addresses read in one statement at most: a burst's misses go in a few statements.
BATCH = 200
PROTOCOL_ORDER = (Protocol.IMAP, Protocol.POP3, Protocol.SMTP)


def supported() -> bool:
    return bool(connections[DEFAULT_DB_ALIAS].vendor == "postgresql")


def connection_params() -> dict[str, Any]:
    """Django's parameters for the default database, with the policy threads' limits."""
    params = dict(connections[DEFAULT_DB_ALIAS].get_connection_params())
    for django_only in ("cursor_factory", "context"):
        params.pop(django_only, None)
    return bounded_options(params, settings.MAILSERVER_DATABASE_TIMEOUT)


def state_from_row(row: tuple[Any, ...]) -> MailboxState:
    mailbox_id, plan, language, enabled, block_reason, listed = row
    scopes = json.loads(listed) if isinstance(listed, str) else listed
    return MailboxState(
        mailbox_id=mailbox_id,
        enabled=bool(enabled),
        block_reason=block_reason or "",
        plan=plan,
        language=language,
        passwords=tuple(
            PasswordScope(
                id=password_id,
                key=key,
                protocols=frozenset(
                    protocol
                    for protocol, allowed in zip(PROTOCOL_ORDER, flags, strict=True)
                    if allowed
                ),
                networks=tuple(networks or ()),
            )
            for password_id, key, *flags, networks in scopes
        ),
    )


class StateReader:
    """Reads misses in batches on a few asynchronous connections, each used by one statement
    at a time."""

    def __init__(self, size: int = 4) -> None:
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        self._params: dict[str, Any] | None = None
        # Addresses waiting for the next statement, each with the futures of its readers.
        self._pending: dict[str, list[asyncio.Future[MailboxState | None]]] = {}
        self._flushing = False
        # The flush and read tasks, held so they are not collected while they run.
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._idle:
            return self._idle.pop()
        if self._params is None:
            self._params = connection_params()
        return await psycopg.AsyncConnection.connect(autocommit=True, **self._params)

    async def load(self, login: str) -> MailboxState | None:
        """The state, or None for an unknown address; TimeoutError past the wait, which
        covers the wait for a connection too: under a burst larger than the connections can
        answer in time, the rest fail fast instead of piling up."""
        address = normalize_address(login)
        future: asyncio.Future[MailboxState | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(address, []).append(future)
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())
        async with asyncio.timeout(settings.MAILSERVER_DATABASE_WAIT):
            return await future

    async def _flush(self) -> None:
        """Send what is pending, a batch a statement, while connections are free."""
        try:
            while self._pending:
                await self._slots.acquire()
                batch = dict(list(self._pending.items())[:BATCH])
                for address in batch:
                    del self._pending[address]
                self._spawn(self._read(batch))
        finally:
            self._flushing = False

    async def _read(self, batch: dict[str, list[asyncio.Future[MailboxState | None]]]) -> None:
        connection: psycopg.AsyncConnection[Any] | None = None
        try:
            waiting = [future for futures in batch.values() for future in futures]
            if all(future.done() for future in waiting):
                return  # every reader gave up meanwhile
            async with asyncio.timeout(settings.MAILSERVER_DATABASE_WAIT):
                connection = await self._connection()
                cursor = await connection.execute(
                    STATE_SQL,
                    {"addresses": list(batch), "key_hex": passwords.POLICY_KEY_HEX},
                )
                rows = await cursor.fetchall()
        except BaseException as error:
            # Cut off mid-read (the wait) or failed: the connection's state is unknown, so
            # it goes, and every reader of the batch gets the error.
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(
                            TimeoutError() if isinstance(error, TimeoutError) else error
                        )
            if not isinstance(error, Exception):
                raise
            return
        else:
            self._idle.append(connection)
            found = {row[0]: state_from_row(row[1:]) for row in rows}
            for address, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(address))
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Let the reads under way end (each is bounded by the wait), then close."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()
