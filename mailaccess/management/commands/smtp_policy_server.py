"""Run the Postfix policy daemon: sending limits and hijack detection (deploy/postfix-policy.md)."""

from __future__ import annotations

import asyncio
import gc
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common import health, health_http
from mailaccess.mailserver.database_threads import DatabaseThreads
from mailaccess.mailserver.policy_server import PolicyServer, serve_sender_tags
from mailaccess.mailserver.processes import fork_servers
from mailaccess.mailserver.readiness import policy_server_readiness
from mailaccess.mailserver.redis_cluster import check_url, open_pipeline
from mailaccess.mailserver.redis_pipeline import RedisPipeline
from mailaccess.mailserver.smtp_policy import SmtpPolicy


async def readiness(
    client: RedisPipeline, executor: ThreadPoolExecutor
) -> tuple[bool, dict[str, str]]:
    """Redis (the counters, through the daemon's own connection) and PostgreSQL (plans,
    blocks), through the daemon's own threads."""
    loop = asyncio.get_running_loop()

    async def check_database(timeout: float) -> str:
        return await asyncio.wait_for(
            loop.run_in_executor(executor, health.check_database, timeout), timeout + 0.5
        )

    return await policy_server_readiness(client, check_database, service="smtp_policy")


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
        parser.add_argument(
            "--tag-listen",
            action="append",
            metavar="ADDRESS",
            help="host:port or unix:/path of the socketmap table that tags the envelope "
            "senders of submitted mail (Postfix's sender_canonical_maps, see "
            "deploy/postfix-policy.md; default: SMTP_POLICY_TAG_LISTEN)",
        )
        parser.add_argument(
            "--health-listen",
            metavar="HOST:PORT",
            default=settings.SMTP_POLICY_HEALTH_LISTEN,
            help="HTTP port for /healthz, /readyz and /metrics (default: SMTP_POLICY_HEALTH_LISTEN;"
            " empty: none)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        listen: list[str] = options["listen"] or settings.SMTP_POLICY_LISTEN
        tag_listen: list[str] = options["tag_listen"] or settings.SMTP_POLICY_TAG_LISTEN
        try:
            for spec in [*listen, *tag_listen]:
                health_http.parse_listen(spec, unix=True)
            unix_mode = int(options["unix_mode"], 8)
            health_listen = options["health_listen"]
            if health_listen:
                health_http.parse_listen(health_listen)
            check_url(settings.MAILSERVER_REDIS_URL)
        except ValueError as error:
            raise CommandError(str(error)) from error
        processes: int = options["processes"]
        # Django, its apps and their modules are loaded for good: freezing them takes them
        # out of the garbage collector's full passes, which walked every one of them and
        # showed up as the slowest answers (the p99) under load. The forked processes share
        # them, too (a collection would otherwise touch, and so copy, their memory pages).
        gc.collect()
        gc.freeze()
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if processes > 1 and any(
            health_http.parse_listen(spec, unix=True)[0] == "unix"
            for spec in [*listen, *tag_listen]
        ):
            raise CommandError("--processes > 1 needs TCP listen addresses (SO_REUSEPORT)")
        if processes == 1:
            # uvloop: the event loop's own work (transports, timers, callbacks) was half of
            # a check's CPU time on the standard loop.
            uvloop.run(self._run(listen, tag_listen, unix_mode, health_listen, reuse_port=False))
            return
        self._run_processes(listen, tag_listen, unix_mode, processes, health_listen)

    def _run_processes(
        self,
        listen: list[str],
        tag_listen: list[str],
        unix_mode: int,
        processes: int,
        health_listen: str,
    ) -> None:
        """Fork the servers (one event loop each, the kernel spreads connections between
        them) and wait; SIGTERM and SIGINT are passed on, each child stops gracefully.

        Only the first process serves the health port: one port cannot have several owners
        without SO_REUSEPORT, and a health answer from any one loop is the service's answer.
        """

        def run(index: int) -> None:
            uvloop.run(
                self._run(
                    listen,
                    tag_listen,
                    unix_mode,
                    health_listen if index == 0 else "",
                    reuse_port=True,
                )
            )

        if not fork_servers(processes, run):
            raise CommandError("a server process failed")

    async def _run(
        self,
        listen: list[str],
        tag_listen: list[str],
        unix_mode: int,
        health_listen: str,
        *,
        reuse_port: bool,
    ) -> None:
        # The ORM is synchronous: lookups on a cache miss and the blocking actions run in a
        # few threads, each keeping its own database connection.
        executor = DatabaseThreads(4, "smtp-policy-db")
        # One Redis connection for every check of this process (see redis_pipeline.py), or
        # one per master of a cluster (redis_cluster.py).
        client = open_pipeline(
            settings.MAILSERVER_REDIS_URL, timeout=settings.MAILSERVER_REDIS_TIMEOUT
        )
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
        # Blocks and switch-offs reach this process's cached mailboxes at once.
        policy.access_changes_url = settings.MAILSERVER_REDIS_URL
        health_server = None
        tag_servers: list[asyncio.Server] = []
        try:
            for spec in listen:
                self.stdout.write(
                    f"listening on {await server.listen(spec, reuse_port=reuse_port)}"
                )
            for spec in tag_listen:
                tag_server = await serve_sender_tags(spec, unix_mode, reuse_port=reuse_port)
                tag_servers.append(tag_server)
                self.stdout.write(f"sender tags on {spec}")
            if health_listen:
                # Postfix's protocol has no health request, and Prometheus wants HTTP: a
                # small port on this same event loop, so a hung loop fails /healthz too.
                health_server = await health_http.serve(
                    health_listen, lambda: readiness(client, executor)
                )
                self.stdout.write(f"health and metrics on http://{health_listen}/")
            self.stdout.flush()
            await server.wait_stopped()
        finally:
            for tag_server in tag_servers:
                tag_server.close()
            await policy.stop_following()
            if health_server is not None:
                health_server.close()
            await client.aclose()
            executor.shutdown(wait=True)
