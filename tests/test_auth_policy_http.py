"""``manage.py auth_policy_server`` over real sockets: the HTTP that Dovecot's client relies on.

The server runs as production runs it, in its own process group; the tests speak raw HTTP/1.1
on loopback, so keep-alive, pipelining and what happens to a connection are seen as a client
sees them. Requests that need no Redis or database answer (health, malformed JSON, a wrong
key, limits) run anywhere; the graceful stop with a request held in PostgreSQL needs both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from tests.conftest import REDIS_URL_FOR_TESTS, needs_redis, wait_until
from tests.mailservers import (
    REPO,
    database_environment,
    free_port,
    start_command,
    stop_process,
    tail,
)
from tests.policy_client import closed_port

# Every test here starts the server as a process of its own.
pytestmark = pytest.mark.e2e

API_KEY = "http-test-key-0123456789"
BAD_JSON = b"{not json"


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def output(self) -> str:
        return tail(self.log)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)


def start(tmp_path: Path, *, processes: int = 1, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = tmp_path / f"auth-policy-{port}.log"
    env = {
        **os.environ,
        "AUTH_POLICY_API_KEY": API_KEY,
        # Redis is not needed by these requests; a closed port keeps them from touching one.
        "MAILSERVER_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "auth-policy-http-tests-only",
        "DEBUG": "0",
        **(extra_env or {}),
    }
    process = start_command(
        "auth_policy_server",
        port,
        env,
        log,
        "--processes",
        str(processes),
        "--shutdown-grace",
        "20",
    )
    return Server(port, process, log)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start(tmp_path)
    yield running
    stop_process(running.process)


def post(body: bytes = BAD_JSON, *, key: str = API_KEY, extra: str = "") -> bytes:
    return (
        f"POST /auth-policy?command=allow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


class Reader:
    """Reads answers off one connection, exactly as many bytes as each says it has."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def fill(self) -> bool:
        """Read once more; False when the server closed the connection."""
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            if not self.fill():
                raise ConnectionError(f"closed before an answer; got {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            if not self.fill():
                raise ConnectionError("closed in the middle of a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split(" ")[1]), headers, body)

    def closed(self) -> bool:
        """True when the server closed the connection and sent nothing more."""
        return not self.buffer and not self.fill()


def test_keep_alive_answers_request_after_request_on_one_connection(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        for _ in range(5):
            sock.sendall(post())
            answer = reader.answer()
            assert answer.status == 200
            assert json.loads(answer.body) == {"status": 0, "msg": ""}
            assert "connection" not in answer.headers
        sock.sendall(get("/healthz"))
        assert reader.answer().status == 200


def test_pipelined_requests_get_one_answer_each_in_their_order(server: Server) -> None:
    requests = [
        (get("/healthz"), 200, b'{"status": "ok"}'),
        (post(key="wrong-key"), 401, b'{"error": "API key required"}'),
        (post(), 200, b'{"status": 0, "msg": ""}'),
        (get("/nowhere"), 404, b'{"error": "not found"}'),
        (get("/auth-policy?command=allow"), 405, b'{"error": "POST only"}'),
        (post(b"[]"), 200, b'{"status": 0, "msg": ""}'),
    ] * 5
    with server.connect() as sock:
        # All in one write: they arrive together and are parsed before the first is answered.
        sock.sendall(b"".join(request for request, _, _ in requests))
        reader = Reader(sock)
        answers = [reader.answer() for _ in requests]
        assert [(a.status, a.body) for a in answers] == [(s, b) for _, s, b in requests]
        # Nothing more than one answer per request: the next bytes answer the next request.
        sock.sendall(get("/nowhere", "Connection: close\r\n"))
        assert reader.answer().status == 404
        assert reader.closed()


def test_a_wrong_or_missing_api_key_is_refused(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(post(key="not-the-key"))
        assert reader.answer().status == 401
        sock.sendall(
            b"POST /auth-policy?command=allow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert reader.answer().status == 401
        sock.sendall(post())  # the connection stays usable
        assert reader.answer().status == 200


def test_an_oversized_head_gets_431_and_the_connection_closed(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(get("/healthz"))
        assert reader.answer().status == 200
        sock.sendall(get("/healthz", extra=f"X-Padding: {'a' * 20_000}\r\n"))
        answer = reader.answer()
        assert answer.status == 431
        assert answer.headers["connection"] == "close"
        assert reader.closed()


def test_a_head_that_never_ends_is_cut_off_at_the_limit(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Long: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(40):  # 40 KiB of one header's value, sent in pieces
                sock.sendall(b"b" * 1024)
        assert reader.answer().status == 431
        assert reader.closed()


def test_an_oversized_body_gets_413_and_the_connection_closed(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(post(b"x" * 20_000))
        answer = reader.answer()
        assert answer.status == 413
        assert reader.closed()


def test_a_chunked_body_over_the_limit_gets_413(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        head = (
            f"POST /auth-policy?command=allow HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
        sock.sendall(head + chunk * 5 + b"0\r\n\r\n")
        assert reader.answer().status == 413
        assert reader.closed()


def test_a_malformed_request_gets_400_and_the_connection_closed(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        # A good request, then garbage in the same write: the first is still answered.
        sock.sendall(post() + b"NOT HTTP AT ALL\r\n\r\n")
        assert reader.answer().status == 200
        answer = reader.answer()
        assert answer.status == 400
        assert answer.headers["connection"] == "close"
        assert reader.closed()


def test_connection_close_is_honoured(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        # What comes after the request that said "close" is not answered.
        sock.sendall(post(extra="Connection: close\r\n") + get("/healthz"))
        answer = reader.answer()
        assert answer.status == 200
        assert answer.headers["connection"] == "close"
        assert reader.closed()


def test_http_1_0_closes_after_the_answer(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert reader.answer().status == 200
        assert reader.closed()


def test_head_answers_without_a_body(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + get("/nowhere", "Connection: close\r\n")
        )
        # The HEAD's headers say 16 bytes, but none follow: the next bytes are the 404.
        while reader.fill():
            pass  # everything, up to the server's close
        first, _, rest = reader.buffer.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ")
        assert b"content-length: 16" in first
        assert rest.startswith(b"HTTP/1.1 404 ")
        assert rest.endswith(b'{"error": "not found"}')


def test_sigterm_closes_idle_connections_answers_the_request_in_progress_then_exits(
    tmp_path: Path,
) -> None:
    running = start(tmp_path)
    try:
        idle = running.connect()
        busy = running.connect()
        idle_reader, busy_reader = Reader(idle), Reader(busy)
        idle.sendall(get("/healthz"))
        assert idle_reader.answer().status == 200
        request = post()
        busy.sendall(request[:-3])  # Dovecot's request, all but its last bytes
        wait_until_parsed(running)
        running.process.send_signal(signal.SIGTERM)
        assert idle_reader.closed()  # an idle keep-alive connection is simply closed
        with pytest.raises(ConnectionRefusedError):
            running.connect().close()  # and nothing new is accepted
        busy.sendall(request[-3:])
        answer = busy_reader.answer()
        assert answer.status == 200
        assert answer.headers["connection"] == "close"
        assert busy_reader.closed()
        assert running.process.wait(timeout=20) == 0, running.output()
        idle.close()
        busy.close()
    finally:
        stop_process(running.process)


def wait_until_parsed(server: Server) -> None:
    """The server has read what was sent: a fresh /healthz from the same process answered.

    One process, one event loop, bytes handled in arrival order: once a later connection's
    request is answered, the earlier bytes have been seen.
    """
    with server.connect() as sock:
        sock.sendall(get("/healthz", "Connection: close\r\n"))
        assert Reader(sock).answer().status == 200


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def listens_on(pid: int, port: int) -> bool:
    """Whether the process holds a listening TCP socket on ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def wait_exited(pid: int) -> None:
    """Until the process has exited (its parent, the server, reaps it)."""

    def exited() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(exited, 20, every=0.05, failure=f"process {pid} did not exit")


def test_two_processes_share_one_port_and_either_serves_alone(tmp_path: Path) -> None:
    running = start(tmp_path, processes=2)
    try:
        workers = children(running.process.pid)
        assert len(workers) == 2
        assert all(listens_on(pid, running.port) for pid in workers)
        # One process stopped: the other still takes every new connection on the port.
        os.kill(workers[0], signal.SIGTERM)
        wait_exited(workers[0])
        for _ in range(20):
            with running.connect() as sock:
                sock.sendall(get("/healthz", "Connection: close\r\n"))
                assert Reader(sock).answer().status == 200
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=20) == 0, running.output()
    finally:
        stop_process(running.process)


# --- a request held up in PostgreSQL --------------------------------------------------------


@pytest.mark.postgres
@needs_redis
def test_sigterm_lets_a_request_waiting_on_the_database_finish(
    tmp_path: Path, transactional_db: None, settings: Any
) -> None:
    """A login whose state read waits for the database (a cache miss behind a table lock) is
    answered after SIGTERM, with the mailbox's own state."""
    assert REDIS_URL_FOR_TESTS
    import redis

    redis.Redis.from_url(REDIS_URL_FOR_TESTS).flushdb()
    environment = database_environment()
    mailbox = Mailbox.objects.create(address="held@inbox.lv")
    actions.enable_access(mailbox, actor=Actor.system("test"))
    actions.disable_access(mailbox, actor=Actor.system("test"))
    running = start(
        tmp_path,
        extra_env={
            **environment,
            "MAILSERVER_REDIS_URL": REDIS_URL_FOR_TESTS,
            # The read waits as long as the test holds the lock, not the usual half second.
            "MAILSERVER_DATABASE_WAIT": "15",
        },
    )
    try:
        with psycopg.connect(environment["DATABASE_URL"]) as lock:
            lock.execute("LOCK TABLE accounts_mailbox IN ACCESS EXCLUSIVE MODE")
            allow = {
                "login": "held@inbox.lv",
                "protocol": "imap",
                "remote": "192.0.2.7",
                "pwhash": "abc",
                "session_id": "s",
                "app_password": "1",
            }
            sock = running.connect()
            sock.sendall(post(json.dumps(allow).encode()))
            wait_for_lock_wait(environment["DATABASE_URL"])
            running.process.send_signal(signal.SIGTERM)
            # The signal passes through the parent process and the child's event loop; the
            # table is freed only once the child has begun stopping, or the answer could be
            # written first, before the server knows it is stopping.
            wait_for_log(running, "stopping: 1 connections open")
            lock.rollback()  # the table is free: the read goes ahead
        answer = Reader(sock).answer()
        assert answer.status == 200
        # Read from the database after the signal: switched off, and told why.
        reply = json.loads(answer.body)
        assert reply["status"] == -1 and reply["msg"]
        assert answer.headers["connection"] == "close"
        sock.close()
        assert running.process.wait(timeout=20) == 0, running.output()
    finally:
        stop_process(running.process)
        redis.Redis.from_url(REDIS_URL_FOR_TESTS).flushdb()


def wait_for_log(server: Server, line: str) -> None:
    wait_until(
        lambda: line in server.log.read_text(errors="replace"),
        10,
        every=0.02,
        failure=server.output,
    )


def wait_for_lock_wait(url: str) -> None:
    """Until a session of this database waits for a lock (the server's read).

    From a connection of its own in autocommit: inside a transaction, pg_stat_activity is a
    snapshot taken at its first read.
    """
    with psycopg.connect(url, autocommit=True) as watch:

        def waiting() -> bool:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            return bool(row and row[0])

        wait_until(waiting, 20, every=0.05, failure="the server's read never waited for the lock")


def test_json_nested_thousands_deep_is_a_bad_request_not_a_crash(server: Server) -> None:
    with server.connect() as sock:
        reader = Reader(sock)
        for _ in range(20):
            sock.sendall(post(b"[" * 5000))
            answer = reader.answer()
            # The documented answer to any malformed body: allowed, the passdb decides.
            assert (answer.status, json.loads(answer.body)) == (200, {"status": 0, "msg": ""})
        sock.sendall(post(b'{"login": "x\\u0000\\ud800@inbox.lv", "protocol": "imap"}'))
        answer = reader.answer()
        assert (answer.status, json.loads(answer.body)) == (200, {"status": 0, "msg": ""})
    output = server.output()
    assert "Traceback" not in output
    assert "RecursionError" not in output
    # Twenty-one bad requests within a second or two: one or two lines, not one each.
    assert 1 <= output.count("event=auth_policy.bad_request") <= 5


@pytest.mark.parametrize("key", ["", "   "], ids=["empty", "blank"])
def test_the_server_refuses_to_start_without_an_api_key(tmp_path: Path, key: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AUTH_POLICY_API_KEY": key,
        "MAILSERVER_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "auth-policy-http-tests-only",
        "DEBUG": "0",
    }
    finished = subprocess.run(
        [sys.executable, "manage.py", "auth_policy_server", "--listen", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert b"AUTH_POLICY_API_KEY is not set" in finished.stderr
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
