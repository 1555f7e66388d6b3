"""Outages of what the policy servers rely on (issue 18, item 4), played for real.

- PostgreSQL unreachable with its packets dropped rather than refused: a listener that takes
  connections into its backlog and never answers, so a client waits as it would for a
  firewall that drops. Both servers, run as production runs them, must still answer within
  a second, as the docs say: a 503 for the auth policy, the configured fallback for Postfix.
- Redis restarted: a redis-server of the test's own, started from the configuration deploy/
  ships, keeps the sending counts and the guessing locks across the restart.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine

from accounts.models import Mailbox
from tests.conftest import redis_url_for_tests
from tests.mailservers import REPO, free_port, start_command, stop_process, tail, wait_for_port

pytestmark = [pytest.mark.e2e]

API_KEY = "outage-test-key-0123456789"
MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
ALICE = "alice@inbox.lv"


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A DATABASE_URL whose server takes the connection and never says a word."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    yield f"postgres://postgres:postgres@127.0.0.1:{port}/mailportal"
    listener.close()


def server_environment(database_url: str, redis: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "MAILSERVER_REDIS_URL": redis,
        "AUTH_POLICY_API_KEY": API_KEY,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "outage-tests-only",
        "DEBUG": "0",
        **extra,
    }


def forget(url: str, address: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"mp:{{{address}}}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def timed_post(port: int, login: str) -> tuple[int, float]:
    """One ``allow`` as Dovecot sends it; (status, seconds until the whole answer)."""
    body = json.dumps({"login": login, "protocol": "imap", "remote": "192.0.2.7"}).encode()
    request = (
        f"POST /auth-policy?command=allow HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


def test_the_auth_policy_answers_503_within_a_second_when_the_database_drops_packets(
    tmp_path: Path, silent_database: str
) -> None:
    url = redis_url_for_tests()
    logins = [f"outage{number}@inbox.lv" for number in range(8)]
    for login in logins:
        forget(url, login)  # not cached: each login needs the database
    port = free_port()
    log = tmp_path / "auth-policy.log"
    process = start_command(
        "auth_policy_server", port, server_environment(silent_database, url), log
    )
    try:
        # Twice as many at once as the server has database threads: those wait in the
        # pool's queue, and are answered in time too.
        with concurrent.futures.ThreadPoolExecutor(len(logins)) as pool:
            answers = list(pool.map(lambda login: timed_post(port, login), logins))
        # And again, while the first threads are still held connecting.
        answers.append(timed_post(port, logins[0]))
    finally:
        stop_process(process)
    output = tail(log, 200)
    assert all(status == 503 for status, _ in answers), (answers, output)
    assert max(seconds for _, seconds in answers) < 1.0, answers
    assert "event=auth_policy.database_error" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("fallback", "expected"), [("defer", "DEFER_IF_PERMIT "), ("dunno", "DUNNO")]
)
def test_the_smtp_policy_gives_its_fallback_within_a_second_when_the_database_drops_packets(
    tmp_path: Path, silent_database: str, fallback: str, expected: str
) -> None:
    url = redis_url_for_tests()
    port = free_port()
    log = tmp_path / "smtp-policy.log"
    env = server_environment(
        silent_database,
        url,
        SMTP_POLICY_ON_REDIS_ERROR=fallback,
        # Longer than the database's bound: the answer must be the policy's own, not the
        # request timeout's.
        SMTP_POLICY_REQUEST_TIMEOUT="5",
    )
    process = start_command("smtp_policy_server", port, env, log)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            times = []
            for number in range(3):
                request = (
                    "request=smtpd_access_policy\nprotocol_state=DATA\n"
                    f"sasl_username=outage{number}@inbox.lv\ninstance=o{number}\n\n"
                ).encode()
                started = time.monotonic()
                sock.sendall(request)
                answer = b""
                while not answer.endswith(b"\n\n"):
                    chunk = sock.recv(65536)
                    assert chunk, tail(log)
                    answer += chunk
                times.append(time.monotonic() - started)
                assert answer.decode().startswith(f"action={expected}"), answer
    finally:
        stop_process(process)
    assert max(times) < 1.0, times
    assert "event=smtp_policy.lookup_failed" in tail(log, 200)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_only_the_policy_servers_database_threads_carry_the_timeouts() -> None:
    from django.db import connection

    from mailaccess.mailserver.database_threads import DatabaseThreads

    assert connection.vendor == "postgresql"

    def statement_timeout() -> str:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            return str(cursor.fetchone()[0])

    async def in_pool() -> str:
        threads = DatabaseThreads(1, "test-db", wait=5)
        try:
            return await threads.call(statement_timeout)
        finally:
            threads.shutdown(wait=True)

    import asyncio

    assert asyncio.run(in_pool()) == "2s"
    # The web, the jobs and the migrations keep PostgreSQL's default (none).
    assert statement_timeout() == "0"


# --- Redis restarted ---------------------------------------------------------------------


class DurableRedis:
    """A redis-server of the test's own, from deploy/redis/mailportal-redis.conf, in its own
    folder; ``restart`` stops it (cleanly, or by a crash) and starts it on the same files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"redis-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    str(REPO / "deploy" / "redis" / "mailportal-redis.conf"),
                    # What the site's own redis.conf sets (this file leaves them alone).
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.folder), "--daemonize", "no", "--logfile", ""),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, lambda: tail(log))
        # Loading the file happens before Redis answers anything but LOADING errors.
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        client.close()

    def stop(self, how: str) -> None:
        assert self.process is not None
        if how == "crash":
            # everysec: what was written more than a second ago is on disk.
            time.sleep(1.5)
            self.process.kill()
            self.process.wait(10)
        else:
            stop_process(self.process)  # SIGTERM, as systemctl stop / restart sends

    def config(self, name: str) -> str:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            return str(client.config_get(name)[name])
        finally:
            client.close()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    redis_url_for_tests()  # skips where no Redis is wanted, like every Redis test
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is needed to restart a Redis of the test's own")
    server = DurableRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        stop_process(server.process)


@pytest.mark.parametrize("how", ["clean", "crash"])
@pytest.mark.django_db(transaction=True)
def test_a_redis_restart_keeps_the_sending_counts_and_the_guessing_lock(
    durable_redis: DurableRedis, settings: Any, alice: Mailbox, how: str
) -> None:
    from audit.models import Actor
    from mailaccess import actions, counters
    from tests.policy_client import API_KEY
    from tests.policy_client import login as dovecot_login
    from tests.policy_daemon import RunningDaemon

    assert durable_redis.config("appendonly") == "yes"
    assert durable_redis.config("appendfsync") == "everysec"
    url = durable_redis.url
    settings.MAILSERVER_REDIS_URL = url
    settings.AUTH_POLICY_API_KEY = API_KEY
    counters.sync_client.cache_clear()
    try:
        assert actions.enable_access(alice, actor=Actor.user(alice)) is not None
        with time_machine.travel(MONDAY, tick=False):
            # Five messages in a minute, the free plan's limit; and ten different wrong
            # passwords from a network alice never used, which lock her mailbox there.
            with RunningDaemon(url) as daemon, daemon.connect() as client:
                for number in range(5):
                    assert client.send_message(ALICE, f"before-{number}") == "DUNNO"
            for number in range(10):
                dovecot_login(url, ALICE, pwhash=f"bad{number:03x}", right=False)
            assert dovecot_login(url, ALICE)["status"] == -1

            durable_redis.stop(how)
            durable_redis.start()

            # A new daemon process, as after a restart of everything: it knows only Redis.
            with RunningDaemon(url) as daemon, daemon.connect() as client:
                sixth = client.send_message(ALICE, "after")
            assert sixth.startswith("DEFER_IF_PERMIT "), sixth
            locked = dovecot_login(url, ALICE)
            assert locked["status"] == -1, locked
    finally:
        counters.sync_client.cache_clear()
