"""The policy daemon's connection handling: pipelined and split requests, a client that does
not read, Redis failing under pipelined requests, and SIGTERM with a request in flight."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import time_machine
from django.conf import settings

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.mailserver import bounce_tags
from mailaccess.mailserver.smtp_policy import now_ms
from tests.mailservers import PrivateRedis, free_port
from tests.policy_daemon import PolicyClient, RunningDaemon

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
ALICE = "alice@inbox.lv"


# Only a mailbox whose access is on may send: the daemon refuses a blocked or switched-off one.
@pytest.fixture
def alice(alice: Mailbox) -> Mailbox:
    actions.enable_access(alice, actor=Actor.user(alice))
    return alice


@pytest.fixture
def bob(bob: Mailbox) -> Mailbox:
    actions.enable_access(bob, actor=Actor.user(bob))
    return bob


def request(**attributes: str) -> bytes:
    lines = {"request": "smtpd_access_policy", **attributes}
    return b"".join(f"{k}={v}\n".encode() for k, v in lines.items()) + b"\n"


def end_of_message(number: int) -> bytes:
    return request(protocol_state="END-OF-MESSAGE", sasl_username=ALICE, instance=f"p{number}")


# Not signed in, not a bounce: answered at once, without Redis.
OTHER = request(protocol_state="RCPT", sender="someone@example.com", recipient="x@inbox.lv")


def bounce(instance: str = "b1") -> bytes:
    """A bounce of a message Alice sent (to its signed envelope sender) arriving for her after
    DATA: counted in Redis, with no database lookup."""
    tagged = bounce_tags.tag_sender(ALICE, now_ms())
    assert tagged is not None
    return request(protocol_state="END-OF-MESSAGE", sender="", recipient=tagged, instance=instance)


@pytest.fixture
def silent_redis() -> Iterator[socket.socket]:
    """A Redis that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


def test_requests_sent_in_one_write_are_answered_in_order(alice: Mailbox, test_redis: str) -> None:
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        # Alice's mailbox is looked up once; then every check waits on Redis only.
        assert client.ask(protocol_state="DATA", sasl_username=ALICE) == "DUNNO"
        # Answers that need Redis and answers that do not, interleaved: the quick ones
        # must wait for the ones before them.
        client.send_raw(b"".join(end_of_message(n) + OTHER for n in range(7)))
        answers = [client.read_reply() for _ in range(14)]

    assert answers[1::2] == ["DUNNO"] * 7
    counted = answers[0::2]
    assert counted[:5] == ["DUNNO"] * 5
    assert all(a is not None and a.startswith("DEFER_IF_PERMIT ") for a in counted[5:])


def test_a_request_split_across_many_writes_is_answered_once_whole(test_redis: str) -> None:
    stream = OTHER + bounce("b2") + OTHER
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(stream), 7):
            client.send_raw(stream[start : start + 7])
        assert [client.read_reply() for _ in range(3)] == ["DUNNO"] * 3
        # Nothing more than the three answers: the connection goes on serving.
        assert client.ask(protocol_state="RCPT", sender="a@example.com") == "DUNNO"


def paused_connections(daemon: RunningDaemon) -> list[tuple[bool, int]]:
    """Each connection's (reading paused, answer bytes buffered), read on the daemon's loop."""

    async def look() -> list[tuple[bool, int]]:
        return [
            (c.read_paused, c.transport.get_write_buffer_size() if c.transport else 0)
            for c in daemon.server.connections
        ]

    return asyncio.run_coroutine_threadsafe(look(), daemon.loop).result(10)


def test_a_client_that_does_not_read_is_not_read_either(test_redis: str) -> None:
    """Flow control: the daemon stops reading requests whose answers cannot be written, so
    the client's writes block instead of the daemon buffering answers without end."""
    chunk = OTHER * 1000
    limit = 256 * 1024 * 1024
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        client.sock.setblocking(False)
        sent = 0
        # Write until the daemon has stopped reading; a full send buffer alone may only
        # mean the daemon is behind for a moment.
        while sent < limit:
            try:
                # Where the last send stopped, so the stream stays whole requests.
                offset = sent % len(chunk)
                sent += client.sock.send(chunk[offset:])
            except BlockingIOError:
                select.select([], [client.sock], [], 0.2)
                if any(paused for paused, _ in paused_connections(daemon)):
                    break
        assert sent < limit
        [(paused, buffered)] = paused_connections(daemon)
        assert paused
        # The answers waiting in the daemon: about the transport's high-water mark (64 KiB)
        # and one read's worth of requests, however much the client wrote.
        assert buffered < 1024 * 1024
        client.sock.setblocking(True)
        client.sock.settimeout(10)
        # Every answer arrives once the client reads; then the request cut off mid-way can
        # be finished (not before: the daemon reads nothing while its answers wait).
        whole, partial = divmod(sent, len(OTHER))
        assert [client.read_reply() for _ in range(whole)] == ["DUNNO"] * whole
        if partial:
            client.send_raw(OTHER[partial:])
            assert client.read_reply() == "DUNNO"
        assert client.ask(protocol_state="RCPT", sender="a@example.com") == "DUNNO"


@pytest.mark.parametrize(
    ("on_redis_error", "expected"), [("dunno", "DUNNO"), ("defer", "DEFER_IF_PERMIT ")]
)
def test_pipelined_requests_get_the_configured_answer_when_redis_hangs(
    alice: Mailbox, silent_redis: socket.socket, on_redis_error: str, expected: str
) -> None:
    url = f"redis://127.0.0.1:{silent_redis.getsockname()[1]}/0"
    with (
        RunningDaemon(url, request_timeout=1.5, on_redis_error=on_redis_error) as daemon,
        daemon.connect() as client,
    ):
        client.send_raw(b"".join(end_of_message(n) + bounce() for n in range(3)) + OTHER)
        answers = [client.read_reply() for _ in range(7)]
    assert answers[-1] == "DUNNO"
    assert all(a is not None and a.startswith(expected) for a in answers[:-1]), answers


def test_sigterm_answers_the_request_in_flight_then_exits(silent_redis: socket.socket) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MAILSERVER_REDIS_URL": f"redis://127.0.0.1:{silent_redis.getsockname()[1]}/0",
        "MAILSERVER_REDIS_TIMEOUT": "1",
        "DEBUG": "1",
        # The key the bounce's tag is signed with here.
        "SECRET_KEY": settings.SECRET_KEY,
    }
    daemon = subprocess.Popen(
        [sys.executable, "manage.py", "smtp_policy_server", "--listen", f"127.0.0.1:{port}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert daemon.stdout is not None
        assert b"listening on" in daemon.stdout.readline()
        with PolicyClient(socket.create_connection(("127.0.0.1", port), timeout=10)) as client:
            client.send_raw(bounce())
            redis_side, _ = silent_redis.accept()
            with redis_side:
                # The bounce's script has reached "Redis": the request is in flight.
                redis_side.settimeout(10)
                assert b"EVALSHA" in redis_side.recv(65536)
                daemon.send_signal(signal.SIGTERM)
                # Redis never answers: the daemon gives up on it and answers as configured
                # (SMTP_POLICY_ON_REDIS_ERROR, "dunno" by default), then hangs up.
                assert client.read_reply() == "DUNNO"
                assert client.read_reply() is None
        assert daemon.wait(15) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert b"stopped" in daemon.stdout.read()


def test_the_daemon_counts_in_a_redis_reached_over_tls(
    alice: Mailbox, private_redis: PrivateRedis
) -> None:
    url = private_redis.tls_url
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(url) as daemon,
        daemon.connect() as client,
    ):
        answers = [client.send_message(ALICE, f"t{number}") for number in range(6)]
    assert answers[:5] == ["DUNNO"] * 5
    assert answers[5].startswith("DEFER_IF_PERMIT ")


def test_a_redis_whose_certificate_is_not_trusted_is_not_used(
    alice: Mailbox, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    port = private_redis.tls_port
    # Without its CA file the self-made certificate fails verification: the checks get the
    # configured fallback (mail passes, by default) and the outage is logged.
    with (
        RunningDaemon(f"rediss://localhost:{port}/3") as daemon,
        daemon.connect() as client,
    ):
        answers = [client.send_message(ALICE, f"u{number}") for number in range(6)]
    assert answers == ["DUNNO"] * 6
    assert "event=smtp_policy.redis_unavailable" in caplog.text
    assert "certificate verify failed" in caplog.text
