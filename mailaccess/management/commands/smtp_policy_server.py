"""Run the Postfix policy daemon: sending limits and hijack detection (deploy/postfix-policy.md)."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

    def handle(self, *args: Any, **options: Any) -> None:
        listen: list[str] = options["listen"] or settings.SMTP_POLICY_LISTEN
        try:
            for spec in listen:
                parse_listen(spec)
            unix_mode = int(options["unix_mode"], 8)
        except ValueError as error:
            raise CommandError(str(error)) from error
        asyncio.run(self._run(listen, unix_mode))

    async def _run(self, listen: list[str], unix_mode: int) -> None:
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
                self.stdout.write(f"listening on {await server.listen(spec)}")
            self.stdout.flush()
            await server.wait_stopped()
        finally:
            await client.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5
            executor.shutdown(wait=True)
