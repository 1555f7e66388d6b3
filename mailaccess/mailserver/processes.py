"""Several server processes on one port: fork them, pass signals on, wait for them.

Each child runs its own event loop on a socket bound with ``SO_REUSEPORT``; the kernel spreads
new connections between them, so one port is served by as many cores as there are processes
and no process hands connections to another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def fork_servers(processes: int, run: Callable[[int], None]) -> bool:
    """Run ``run(index)`` in ``processes`` forked children and wait for all of them.

    SIGTERM and SIGINT are passed on to every child, each stopping gracefully on its own.
    Returns whether every child exited cleanly. Fork before any event loop, thread or
    database connection exists in this process: a child inherits none of them safely.
    """
    children: list[int] = []
    for index in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(index)
            except BaseException:
                code = 1
                raise
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    clean = True
    for child in children:
        _, status = os.waitpid(child, 0)
        clean = clean and os.waitstatus_to_exitcode(status) == 0
    return clean
