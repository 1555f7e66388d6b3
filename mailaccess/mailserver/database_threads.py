"""The thread pool where the policy servers run the ORM, closing its connections on shutdown.

Both servers answer from an event loop and run the synchronous ORM (cache misses, last-use
writes, blocks) in a few threads, each with its own database connection. Django keeps a
connection per thread, and a pool thread that ends leaves its connection open until garbage
collection: PostgreSQL then keeps a session per thread of a stopped server (and
``DROP DATABASE`` of a test database warns that it is in use).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connections


class DatabaseThreads(ThreadPoolExecutor):
    def __init__(self, workers: int, name: str) -> None:
        super().__init__(max_workers=workers, thread_name_prefix=name)
        self.workers = workers
        self._closing = False

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
