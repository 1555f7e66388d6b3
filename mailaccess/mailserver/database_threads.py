"""The thread pool where the policy servers run the ORM: bounded calls, closed connections.

Both servers answer from an event loop and run the synchronous ORM (cache misses, last-use
writes, blocks) in a few threads, each with its own database connection. Django keeps a
connection per thread, and a pool thread that ends leaves its connection open until garbage
collection: PostgreSQL then keeps a session per thread of a stopped server (and
``DROP DATABASE`` of a test database warns that it is in use).

Every call is bounded twice (issue 18). Dovecot and Postfix wait on each answer, so
``call`` gives up after ``MAILSERVER_DATABASE_WAIT`` seconds (0.5 s) and the server answers
as it does when the database is away: a 503 for the auth policy, the configured fallback
(``SMTP_POLICY_ON_REDIS_ERROR``) for Postfix. A call not started by then is dropped. A call
already under way cannot be interrupted from the event loop, so each pool thread's connection
carries its own limits, ``MAILSERVER_DATABASE_TIMEOUT`` seconds (2 s): ``connect_timeout``
(libpq's minimum is 2 s) for a server whose packets are dropped, ``tcp_user_timeout`` for one
that vanishes mid-query, and PostgreSQL's ``statement_timeout`` for a slow query or a lock
wait, so a thread is held at most that long and the pool recovers by itself. Only these
threads get the limits: the web, the jobs and migrations keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend

T = TypeVar("T")


def bounded_options(options: dict[str, Any], seconds: int) -> dict[str, Any]:
    """A PostgreSQL connection's OPTIONS with the timeouts of a policy server's thread."""
    milliseconds = seconds * 1000
    startup = options.get("options", "")
    return {
        **options,
        "connect_timeout": max(2, seconds),
        "tcp_user_timeout": milliseconds,
        "options": f"{startup} -c statement_timeout={milliseconds}".strip(),
    }


def _use_bounded_connection() -> None:
    """Run once in each new pool thread: its own connection to the default database, with
    the timeouts. (Django's connections are per thread; this replaces only this thread's.)"""
    database = connections.settings[DEFAULT_DB_ALIAS]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return  # SQLite: a local file, bounded by its own lock timeout
    bounded = {
        **database,
        "OPTIONS": bounded_options(
            database.get("OPTIONS", {}), settings.MAILSERVER_DATABASE_TIMEOUT
        ),
    }
    backend = load_backend(bounded["ENGINE"])
    connections[DEFAULT_DB_ALIAS] = backend.DatabaseWrapper(bounded, DEFAULT_DB_ALIAS)


class DatabaseThreads(ThreadPoolExecutor):
    def __init__(self, workers: int, name: str, *, wait: float | None = None) -> None:
        super().__init__(
            max_workers=workers, thread_name_prefix=name, initializer=_use_bounded_connection
        )
        self.workers = workers
        self.wait = settings.MAILSERVER_DATABASE_WAIT if wait is None else wait
        self._closing = False

    async def call(
        self,
        function: Callable[..., T],
        *args: Any,
        finish: bool = False,
        wait: float | None = None,
    ) -> T:
        """``function(*args)`` in a pool thread; TimeoutError after ``wait`` seconds.

        ``finish``: a write that must happen even when its answer is given up on (a block):
        it is never dropped, only no longer waited for.
        """
        future = asyncio.get_running_loop().run_in_executor(self, function, *args)
        async with asyncio.timeout(self.wait if wait is None else wait):
            return await (asyncio.shield(future) if finish else future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._closing:
            self._closing = True
            # One task per thread: each holds its thread at the barrier until every thread
            # has one, so no thread runs two and none is left out; threads the pool had not
            # started yet start now and have nothing to close.
            barrier = threading.Barrier(self.workers, timeout=5)

            def close() -> None:
                connections.close_all()
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()

            with contextlib.suppress(RuntimeError):  # already shut down
                for _ in range(self.workers):
                    self.submit(close)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
