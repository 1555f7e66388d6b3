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
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.mailservers import free_port, start_command, stop_process, tail

pytestmark = [pytest.mark.e2e]

API_KEY = "outage-test-key-0123456789"


def redis_url() -> str:
    url = os.environ.get("REDIS_URL_FOR_TESTS")
    if not url:
        pytest.skip("set REDIS_URL_FOR_TESTS: the policy servers keep their counters in Redis")
    return url


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
    url = redis_url()
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
    url = redis_url()
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


@pytest.mark.django_db(transaction=True)
def test_only_the_policy_servers_database_threads_carry_the_timeouts() -> None:
    from django.db import connection

    from mailaccess.mailserver.database_threads import DatabaseThreads

    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's")

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
