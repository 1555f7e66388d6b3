"""Serve Dovecot's auth policy (``auth_policy_server_url``): see auth_policy_http.py."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.health_http import parse_listen
from mailaccess.mailserver.auth_policy_app import AuthPolicyApp
from mailaccess.mailserver.auth_policy_http import AuthPolicyHttpServer
from mailaccess.mailserver.processes import fork_servers
from mailaccess.mailserver.redis_cluster import check_url


class Command(BaseCommand):
    help = "Answer Dovecot's auth-policy requests (allow, report), /healthz, /readyz, /metrics."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            default="127.0.0.1:8101",
            metavar="HOST:PORT",
            help="address to listen on (default 127.0.0.1:8101)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="server processes sharing the port with SO_REUSEPORT (one a core)",
        )
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="on SIGTERM, how long requests being answered may take to finish (default 10)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            _, host, port = parse_listen(options["listen"])
            # A bad Redis URL (a scheme, a TLS setting, a missing CA file) stops the start,
            # rather than failing every request later.
            check_url(settings.MAILSERVER_REDIS_URL)
        except ValueError as error:
            raise CommandError(str(error)) from error
        if not settings.AUTH_POLICY_API_KEY.strip():
            # Without a key every request gets a 401: with Dovecot's
            # auth_policy_reject_on_fail = no every check would silently switch off, while
            # this process looked healthy. Refuse to start instead, so the unit fails loudly.
            raise CommandError(
                "AUTH_POLICY_API_KEY is not set: the auth policy refuses to start without it "
                "(Dovecot sends the same key: auth_policy_server_api_header; see deploy/README.md)."
            )
        processes: int = options["processes"]
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        grace: float = options["shutdown_grace"]
        if processes == 1:
            # uvloop: the event loop's own work (transports, timers, callbacks) is a large
            # share of a request's CPU time on the standard loop.
            uvloop.run(self._run(host, port, grace, reuse_port=False))
            return
        if not fork_servers(
            processes, lambda _index: uvloop.run(self._run(host, port, grace, reuse_port=True))
        ):
            raise CommandError("a server process failed")

    async def _run(self, host: str, port: int, grace: float, *, reuse_port: bool) -> None:
        app = AuthPolicyApp()
        await app.startup()
        server = AuthPolicyHttpServer(app, shutdown_grace=grace)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.request_stop)
        self.stdout.write(f"listening on {await server.listen(host, port, reuse_port=reuse_port)}")
        self.stdout.flush()
        await server.wait_stopped()
