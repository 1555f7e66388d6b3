"""Run the Postfix policy daemon: sending limits and hijack detection (deploy/postfix-policy.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailaccess.mailserver import redis_client
from mailaccess.mailserver.policy_server import PolicyServer, parse_listen
from mailaccess.mailserver.smtp_policy import SmtpPolicy


class Command(BaseCommand):
    help = "Answer Postfix's policy delegation requests (SMTP sending limits, bounce floods)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            action="append",
            metavar="ADDRESS",
            help="host:port or unix:/path; repeat for several (default: SMTP_POLICY_LISTEN)",
        )
        parser.add_argument(
            "--unix-mode",
            default="660",
            help="permissions of unix sockets, octal (default 660: Postfix's group)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="server processes sharing each TCP port with SO_REUSEPORT (one a core; "
            "TCP only: a unix socket path has one owner)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        listen: list[str] = options["listen"] or settings.SMTP_POLICY_LISTEN
        try:
            for spec in listen:
                parse_listen(spec)
            unix_mode = int(options["unix_mode"], 8)
        except ValueError as error:
            raise CommandError(str(error)) from error
        processes: int = options["processes"]
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes > 1 and any(parse_listen(spec)[0] == "unix" for spec in listen):
            raise CommandError("--processes > 1 needs TCP listen addresses (SO_REUSEPORT)")
        if processes == 1:
            # uvloop: the event loop's own work (transports, timers, callbacks) was half of
            # a check's CPU time on the standard loop.
            uvloop.run(self._run(listen, unix_mode, reuse_port=False))
            return
        self._run_processes(listen, unix_mode, processes)

    def _run_processes(self, listen: list[str], unix_mode: int, processes: int) -> None:
        """Fork the servers (one event loop each, the kernel spreads connections between
        them) and wait; SIGTERM and SIGINT are passed on, each child stops gracefully."""
        children: list[int] = []
        for _ in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    uvloop.run(self._run(listen, unix_mode, reuse_port=True))
                except BaseException:
                    code = 1
                    raise
                finally:
                    sys.stdout.flush()
                    os._exit(code)
            children.append(pid)

        def forward(signum: int, _frame: Any) -> None:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        failed = False
        for child in children:
            _, status = os.waitpid(child, 0)
            failed = failed or os.waitstatus_to_exitcode(status) != 0
        if failed:
            raise CommandError("a server process failed")

    async def _run(self, listen: list[str], unix_mode: int, *, reuse_port: bool) -> None:
        # The ORM is synchronous: lookups on a cache miss and the blocking actions run in a
        # few threads, each keeping its own database connection.
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="smtp-policy-db")
        client = redis_client.async_client()
        policy = SmtpPolicy(client, executor)
        server = PolicyServer(
            policy,
            request_timeout=settings.SMTP_POLICY_REQUEST_TIMEOUT,
            idle_timeout=settings.SMTP_POLICY_IDLE_TIMEOUT,
            unix_mode=unix_mode,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.request_stop)
        try:
            for spec in listen:
                self.stdout.write(
                    f"listening on {await server.listen(spec, reuse_port=reuse_port)}"
                )
            self.stdout.flush()
            await server.wait_stopped()
        finally:
            await client.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5
            executor.shutdown(wait=True)
