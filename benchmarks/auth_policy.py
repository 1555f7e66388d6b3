"""Load on the Dovecot auth-policy endpoint, against the ceiling of this machine.

Starts the endpoint the way production does (``deploy/systemd/mailportal-auth-policy.service``:
``manage.py auth_policy_server --processes N``, DEBUG off; ``--server uvicorn`` serves the
same app as ASGI under ``uvicorn --workers N --loop uvloop --http httptools`` instead, to
compare the two) and drives it on loopback with the three requests of a real successful
login (allow, allow, report), over keep-alive connections the way Dovecot's HTTP client
keeps them; then a bare asyncio HTTP server (uvloop) that answers a fixed JSON with
the same number of processes: the most any Python server could do here. Prints logins/s,
p50/p99 of a request and of a whole login, the server's CPU time per request (user + system
of all its processes / requests answered: the figure other load on the machine cannot
inflate much), and the ratios of the two.

    DATABASE_URL=postgres://... .venv/bin/python benchmarks/auth_policy.py [--workers 2] \
        [--server auth_policy_server|uvicorn]

Target (issue 3): 2,000 logins/s (6,000 requests/s) with a request p99 under 10 ms on two
cores. The load generator shares those cores, so both figures are lower than the server
alone would reach; the ratio is the fair comparison.

The thresholds are raised for the run so every login takes the full path (checks counted,
reports written) instead of being refused as "too often"; last use is still written once a
minute per mailbox and protocol, as in production. The warm-up logs every mailbox in once,
so the measured run is the steady state (states cached in Redis, last use written a minute
ago) and does not depend on how long the run is: it measures the warm path only.

``--periodic SECONDS`` measures the path real traffic takes instead (issue 23): each of
``--mailboxes`` mailboxes (10,000 there, the whole-stack benchmark's working set) logs in once
every SECONDS, open loop, standing for a mail program that checks every
``AUTH_POLICY_CHECK_INTERVAL`` (five minutes). Time runs k = check interval / SECONDS times
faster, so the server runs with its state TTL and use-record interval divided by k (read from
the code's own defaults, so the same script measures any version fairly): the share of logins
that find their state cached, or record a use, is production's. Like a mail program's timer,
a mailbox's next login is due a period after its last one, plus the time a check takes
(``CHECK_SECONDS``, time-compressed too): the schedule is fixed in advance, so a slow answer
delays no later login. The cache starts as production's steady state has it: every mailbox
logs in once (as fast as the server goes), then each cached state's remaining life is spread
evenly over the TTL (as if stored at some moment within the last TTL, not all at once). The
first period is not measured (afterwards every mailbox was last seen a period ago, as in
production); then ``--measured-periods`` periods are.
Redis is a private ``redis-server`` on a free port, so its CPU is the benchmark's; CPU comes
from /proc (the server's processes, the benchmark database's PostgreSQL backends, Redis);
after the run the compaction job (``activity.compact``, where the code has it) takes in what
the measured periods buffered, its CPU and its backend's measured.

    DATABASE_URL=postgres://... .venv/bin/python benchmarks/auth_policy.py \
        --periodic 20 --mailboxes 10000 [--measured-periods 2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from periodic import DOMAIN, FILL_SQL, Periodic, password_of, policy_intervals
from smtp_policy import cpu_seconds, process_tree

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "benchmark-key"
FIXED = b'{"status": 0, "msg": ""}'


def free_port(start: int) -> int:
    for port in range(start, start + 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# --- the ceiling: a bare asyncio HTTP/1.1 server with a fixed answer -----------------------


class FixedAnswer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(FIXED), FIXED)
            )


def serve_ceiling(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FixedAnswer, "127.0.0.1", port, reuse_port=True)
        await server.serve_forever()

    uvloop.run(main())


# --- the load: one process, many keep-alive connections, each a Dovecot ----------------------


def requests_for(mailbox: int, protocol: str) -> list[bytes]:
    body = {
        "login": f"bench{mailbox}@inbox.lv",
        "protocol": protocol,
        "pwhash": "5e1",
        "remote": f"10.{mailbox // 250}.{mailbox % 250}.1",
        "session_id": f"s{mailbox}",
        "tls": True,
        # As deploy/dovecot/dovecot.conf sends them: the password's 16-bit key in every
        # request, the matching password's id (from the passdb) after the check, and the
        # program's IMAP ID.
        "password_key": hashlib.sha256(password_of(mailbox).encode()).hexdigest()[:4],
        "app_password": "",
        "device_id": '"name" "Thunderbird" "version" "115.0"' if protocol == "imap" else "",
    }
    checked = {**body, "app_password": str(mailbox + 1)}
    report = {**checked, "success": True, "policy_reject": False}
    out = []
    for command, payload in (("allow", body), ("allow", checked), ("report", report)):
        data = json.dumps(payload).encode()
        out.append(
            b"POST /auth-policy?command=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (command.encode(), API_KEY.encode(), len(data), data)
        )
    return out


async def one_connection(
    port: int,
    logins: list[list[bytes]],
    offset: int,
    stop: float,
    requests: list[float],
    whole: list[float],
    once: bool = False,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = offset
    while once or time.perf_counter() < stop:
        once = False
        login = logins[n % len(logins)]
        n += 1
        started = time.perf_counter()
        for request in login:
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)])
            await reader.readexactly(length)
            # A 503 (Redis too slow for MAILSERVER_REDIS_TIMEOUT) is counted, not fatal: it
            # is what Dovecot would see, and auth_policy_reject_on_fail would decide.
            requests.append(
                time.perf_counter() - sent if head.startswith(b"HTTP/1.1 200") else -1.0
            )
        whole.append(time.perf_counter() - started)
    writer.close()


def load(
    port: int,
    connections: int,
    seconds: float,
    mailboxes: int,
    queue: multiprocessing.Queue,  # type: ignore[type-arg]
    ready: Any,
    go: Any,
) -> None:
    import uvloop

    protocols = ["imap", "imap", "pop3", "smtp"]
    logins = [requests_for(m, protocols[m % 4]) for m in range(mailboxes)]

    async def main() -> tuple[list[float], list[float], float]:
        # Every mailbox once (its state cached, its last use written), then a second of load.
        for start in range(0, len(logins), connections):
            await asyncio.gather(
                *(
                    one_connection(port, [logins[n]], 0, 0, [], [], once=True)
                    for n in range(start, min(start + connections, len(logins)))
                )
            )
        await asyncio.gather(
            *(
                one_connection(port, logins, i * 7, time.perf_counter() + 1, [], [])
                for i in range(connections)
            )
        )
        ready.set()
        go.wait()
        requests: list[float] = []
        whole: list[float] = []
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(
            *(
                one_connection(port, logins, i * 7, stop, requests, whole)
                for i in range(connections)
            )
        )
        return requests, whole, time.perf_counter() - started

    queue.put(uvloop.run(main()))


def measure(port: int, args: argparse.Namespace, servers: list[int]) -> dict[str, float]:
    """Run the load; ``servers``: the server's processes, for their CPU time."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    per_client = max(1, args.connections // args.clients)
    readies = [multiprocessing.Event() for _ in range(args.clients)]
    go = multiprocessing.Event()
    clients = [
        multiprocessing.Process(
            target=load,
            args=(port, per_client, args.seconds, args.mailboxes, queue, ready, go),
        )
        for ready in readies
    ]
    for client in clients:
        client.start()
    for ready in readies:
        ready.wait()
    cpu_before = sum(cpu_seconds(pid) for pid in servers)
    go.set()
    results = [queue.get() for _ in clients]
    cpu = sum(cpu_seconds(pid) for pid in servers) - cpu_before
    for client in clients:
        client.join()
    answered = [r for result in results for r in result[0]]
    requests = [r for r in answered if r >= 0]
    whole = [w for result in results for w in result[1]]
    elapsed = max(result[2] for result in results)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    return {
        "logins_per_s": len(whole) / elapsed,
        "requests_per_s": len(requests) / elapsed,
        "request_p50_ms": pct(requests, 50),
        "request_p99_ms": pct(requests, 99),
        "login_p50_ms": pct(whole, 50),
        "login_p99_ms": pct(whole, 99),
        "errors": len(answered) - len(requests),
        "cpu_us_per_request": cpu / max(1, len(answered)) * 1e6,
    }


def wait_for(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def fill(mailboxes: int) -> None:
    """Run inside Django (``--fill``): mailboxes bench0..N-1 with access on, from scratch."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    if connection.vendor == "postgresql":
        from mailaccess import passdb

        # The passdb table from the view, as the migration that made it does.
        rebuild = str(getattr(passdb, "REBUILD_SQL", ""))
        with transaction.atomic(), connection.cursor() as cursor:
            statements = FILL_SQL.format(domain=DOMAIN, count=mailboxes) + rebuild
            for statement in statements.split(";\n"):
                if statement.strip():
                    cursor.execute(statement)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    else:
        # SQLite (the embedded default): the product's own action, one mailbox at a time.
        from accounts.models import Mailbox
        from audit.models import Actor
        from mailaccess import actions
        from mailaccess.models import AppPassword, ExternalAccess

        for n in range(mailboxes):
            box, _ = Mailbox.objects.get_or_create(address=f"bench{n}@inbox.lv")
            if not ExternalAccess.objects.filter(mailbox=box, enabled=True).exists():
                actions.enable_access(box, actor=Actor.system("benchmark"))
            # The load sends the password's key (its id is n + 1 on a fresh database).
            AppPassword.objects.filter(mailbox=box).update(
                lookup_key=hashlib.sha256(password_of(n).encode()).hexdigest()
            )
    print(f"{mailboxes:,} mailboxes with access on, filled in {time.monotonic() - started:.1f} s")


def prepare(env: dict[str, str], mailboxes: int) -> None:
    """Mailboxes bench0..N with access on, and an empty Redis database."""
    subprocess.run(
        [sys.executable, __file__, "--fill", str(mailboxes)], env=env, cwd=ROOT, check=True
    )
    script = "import django; django.setup()\n"
    script += "from mailaccess.counters import sync_client; sync_client().flushdb()\n"
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True)


# --- real traffic: each mailbox at its check interval (``--periodic``, issue 23) -------------


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of the benchmark's own: its CPU is this benchmark's alone."""
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--logfile", ""),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(port)
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Keep-alive connections as Dovecot's HTTP client keeps them: an idle one is reused,
    a new one opened while fewer than ``limit`` are, else the login waits for one."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit, self.opened = port, limit, 0
        self.idle: list[Connection] = []
        self.waiting: collections.deque[asyncio.Future[Connection]] = collections.deque()

    async def take(self) -> Connection:
        if self.idle:
            return self.idle.pop()
        if self.opened < self.limit:
            self.opened += 1
            return await asyncio.open_connection("127.0.0.1", self.port)
        waiter: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def give(self, connection: Connection) -> None:
        if self.waiting:
            self.waiting.popleft().set_result(connection)
        else:
            self.idle.append(connection)


# A mail program's timer starts again when its check ended, and a check (TLS, login, a few
# commands) takes about a second: two logins of one mailbox are a check interval and about
# that much apart. Without it a state TTL equal to the check interval (300 s before issue 23)
# would be hit or missed by a few milliseconds, every other period.
CHECK_SECONDS = 1.0


@dataclass
class Window:
    """The measured part of a periodic run: from ``start``; logins due until ``stop``."""

    start: float = float("inf")
    stop: float = float("inf")
    requests: list[float] = field(default_factory=list)  # seconds, sent to answered
    logins: list[float] = field(default_factory=list)  # seconds, due to last answer
    failed: int = 0  # logins with an answer other than 200
    completed: int = 0  # logins that ended after ``start`` (what the CPU was spent on)
    last: float = 0.0  # when the last of them ended


async def periodic_login(pool: Pool, login: list[bytes], requests: list[float]) -> bool:
    """A login's three requests, one after another on one connection, as Dovecot sends them.
    A connection the server closed while idle is replaced, and the request sent again, as
    Dovecot's HTTP client does."""
    connection = await pool.take()
    ok = True
    for request in login:
        for attempt in (1, 2):
            reader, writer = connection
            sent = time.perf_counter()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                at = head.lower().find(b"content-length:")
                await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if attempt == 2:
                    raise
                connection = await asyncio.open_connection("127.0.0.1", pool.port)
        if head.startswith(b"HTTP/1.1 200"):
            requests.append(time.perf_counter() - sent)
        else:
            ok = False
    pool.give(connection)
    return ok


async def warm_all(pool: Pool, mailboxes: int) -> None:
    """Every mailbox logs in once, as fast as the pool's connections go."""
    numbers = list(range(mailboxes))

    async def worker() -> None:
        scratch: list[float] = []
        while numbers:
            number = numbers.pop()
            login = requests_for(number, ["imap", "imap", "pop3", "smtp"][number % 4])
            await periodic_login(pool, login, scratch)
            scratch.clear()

    await asyncio.gather(*(worker() for _ in range(pool.limit)))


def spread_states(redis_url: str, ttl: int) -> int:
    """Give each cached state a remaining life drawn evenly from (0, ttl]: production's steady
    state, where states were stored whenever their mailbox last missed, not in one burst
    (which would make every state of the run expire in the same period). Returns how many."""
    import random

    import redis

    client = redis.Redis.from_url(redis_url)
    draw = random.Random(23)
    keys = list(client.scan_iter(match="mp:{*}:state", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pexpire(key, draw.randint(1, ttl * 1000))
        pipe.execute()
    return len(keys)


async def mailbox_checks(
    number: int, first: float, spacing: float, pool: Pool, window: Window
) -> None:
    """One mail program: a login every ``spacing`` seconds, on a schedule fixed in advance
    (open loop: a late answer delays no later login)."""
    login = requests_for(number, ["imap", "imap", "pop3", "smtp"][number % 4])
    unmeasured: list[float] = []
    due = first
    while due < window.stop:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        measured = window.start <= due
        ok = await periodic_login(pool, login, window.requests if measured else unmeasured)
        ended = time.perf_counter()
        unmeasured.clear()
        if measured:
            # From when the login was due: waiting for a connection counts.
            window.logins.append(ended - due)
            window.failed += not ok
        if ended >= window.start:
            window.completed += 1
            window.last = max(window.last, ended)
        due += spacing


@dataclass
class Sample:
    server: float
    backends: dict[int, float]
    redis: float
    client: float
    calls: dict[str, int]


class Meter:
    """CPU seconds from /proc of the server's processes, the benchmark database's
    PostgreSQL backends and the private Redis, and Redis's command counts.

    The server's database connections live ``DATABASE_CONN_MAX_AGE`` (a minute), so backends
    end and start within a run: they are polled twice a second, each counted from its first
    sight (from its start if it started in the run) to its last."""

    def __init__(self, server: int, redis_process: int, redis_url: str, database_url: str) -> None:
        import psycopg
        import redis

        self.server, self.redis_process = server, redis_process
        self.redis = redis.Redis.from_url(redis_url)
        self.database = urlparse(database_url).path.lstrip("/")
        self.connection = psycopg.connect(database_url, autocommit=True)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.poller: threading.Thread | None = None

    def poll(self) -> dict[int, float]:
        rows = self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [self.database],
        ).fetchall()
        for (pid,) in rows:
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu_seconds(pid))
        return {pid: self.seen[pid] for (pid,) in rows}

    def polling(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()

    def sample(self) -> Sample:
        stats = self.redis.info("commandstats")
        times = os.times()
        if self.poller is None:
            backends = self.poll()
            self.poller = threading.Thread(target=self.polling, daemon=True)
            self.poller.start()
        else:
            self.stop.set()
            self.poller.join()
            self.poll()
            backends = dict(self.seen)
        return Sample(
            server=sum(cpu_seconds(pid) for pid in process_tree(self.server)),
            backends=backends,
            redis=cpu_seconds(self.redis_process),
            client=times.user + times.system,
            calls={name: int(value["calls"]) for name, value in stats.items()},
        )


def delta(before: Sample, after: Sample) -> dict[str, float]:
    def calls(name: str) -> float:
        return after.calls.get(f"cmdstat_{name}", 0) - before.calls.get(f"cmdstat_{name}", 0)

    return {
        "server": after.server - before.server,
        "postgres": sum(
            seconds - before.backends.get(pid, 0.0) for pid, seconds in after.backends.items()
        ),
        "redis": after.redis - before.redis,
        "client": after.client - before.client,
        # Only the state store script DELs on this path (auth_policy_store.STORE_SCRIPT, run
        # after each cache miss), only the use record SETs, only activity.record XADDs.
        "stores": calls("del"),
        "uses": calls("set"),
        "events": calls("xadd"),
    }


# The compact_activity job's work in a process of its own, printing the events it took in,
# its own CPU seconds (Django's start left out) and its PostgreSQL backend's: activity.compact's
# loop (a page of the stream folded,
# then deleted), but from a given stream id and for at most a given number of events, so that
# a sample of a run's events can be timed without taking them all in (minutes at 10,000
# mailboxes).
COMPACT = """
import django, os, sys
django.setup()
try:
    from mailaccess import activity
except ImportError:
    print(0, 0.0, 0.0)
    sys.exit()
from django.db import connection
from mailaccess.counters import sync_client
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
def backend():
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
before, own = backend(), os.times()
start, limit = sys.argv[1], int(sys.argv[2])
done, client = 0, sync_client()
while done < limit:
    count = min(activity.PAGE_SIZE, limit - done)
    entries = client.xrange(activity.STREAM_KEY, start, "+", count=count)
    if not entries:
        break
    events = [(i, activity.Event.decode(f.get("e", ""))) for i, f in entries]
    activity.fold([(i, e) for i, e in events if e is not None])
    client.xdel(activity.STREAM_KEY, *[i for i, _f in entries])
    done += len(entries)
    start = "(" + entries[-1][0]
now = os.times()
print(done, backend() - before, now.user + now.system - own.user - own.system)
"""


def stream_end(env: dict[str, str]) -> str:
    """The id of the activity stream's newest entry ('' when empty)."""
    import redis

    client = redis.Redis.from_url(env["MAILSERVER_REDIS_URL"], decode_responses=True)
    newest = client.xrevrange("mp:{activity}:events", count=1)
    return str(newest[0][0]) if newest else ""


def compaction(
    env: dict[str, str], redis_process: int, start: str, limit: int
) -> tuple[int, float, float, float]:
    """The compaction job's work on at most ``limit`` events from stream id ``start``:
    (events, CPU seconds of the job's process, of its PostgreSQL backend, of Redis)."""
    redis_before = cpu_seconds(redis_process)
    output = subprocess.run(
        [sys.executable, "-c", COMPACT, start, str(limit)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if output.returncode:
        print(output.stderr[-2000:], file=sys.stderr)
        return 0, 0.0, 0.0, 0.0
    events, backend, job = output.stdout.split()[-3:]
    return int(events), float(job), float(backend), cpu_seconds(redis_process) - redis_before


def periodic_run(
    args: argparse.Namespace,
    env: dict[str, str],
    port: int,
    server: int,
    redis_process: int,
    periodic: Periodic,
) -> None:
    import uvloop

    meter = Meter(server, redis_process, env["MAILSERVER_REDIS_URL"], env["DATABASE_URL"])
    window = Window()
    pool = Pool(port, args.connections)
    mailboxes, period = args.mailboxes, periodic.period
    spacing = period + CHECK_SECONDS / periodic.factor
    samples: list[Sample] = []
    marks: list[str] = []  # the stream's end after the warm-up, after the first period

    async def main() -> None:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        await warm_all(pool, mailboxes)
        ttl = int(periodic.env()["AUTH_POLICY_STATE_TTL"])
        spread = spread_states(env["MAILSERVER_REDIS_URL"], ttl)
        print(
            f"warm-up: every mailbox once in {time.perf_counter() - began:.0f} s; {spread:,} "
            f"cached states given a remaining life spread over (0, {ttl}] s"
        )
        marks.append(await loop.run_in_executor(None, stream_end, env))
        start = time.perf_counter() + 0.5
        checks = [
            asyncio.ensure_future(
                mailbox_checks(n, start + n * spacing / mailboxes, spacing, pool, window)
            )
            for n in range(mailboxes)
        ]
        # One whole period unmeasured: every mailbox logged in once (states loaded, uses
        # recorded), as if last seen a period ago.
        await asyncio.sleep(start + spacing - time.perf_counter())
        marks.append(await loop.run_in_executor(None, stream_end, env))
        samples.append(await loop.run_in_executor(None, meter.sample))
        window.start = time.perf_counter()
        window.stop = window.start + args.measured_periods * spacing
        await asyncio.gather(*checks)
        samples.append(await loop.run_in_executor(None, meter.sample))

    uvloop.run(main())
    seconds = window.last - window.start
    used = delta(*samples)
    # Per login: what the processes spent from the window's start until its last login
    # ended, over the logins that ended then (a few due before the start among them).
    logins = window.completed
    # The job after the load, not during it (it would compete for the two cores), on a
    # sample: first the first period's events of the sample's mailboxes (the first in the
    # schedule), so they have the history rows production has, then theirs of the measured
    # periods. The figure is per event, times the events a login made.
    sample = args.compaction_events
    warm, measured = (0, 0.0, 0.0, 0.0), (0, 0.0, 0.0, 0.0)
    if all(marks):
        warm = compaction(env, redis_process, "(" + marks[0], sample)
        measured = compaction(env, redis_process, "(" + marks[1], sample)
    events, job, backend, redis_seconds = measured

    def ms(value: float, per: float) -> float:
        return value * 1000 / max(per, 1)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0

    print(f"measured {args.measured_periods} period(s), {seconds:.0f} s, after one unmeasured")
    print(
        f"logins/s: offered {mailboxes / spacing:,.1f}, achieved {logins / seconds:,.1f} "
        f"({3 * logins / seconds:,.0f} requests/s; {len(window.logins):,} logins due in the "
        f"window, failed: {window.failed}; connections opened: {pool.opened})"
    )
    print(
        f"request p50 {pct(window.requests, 50):.2f} ms p99 {pct(window.requests, 99):.2f} ms; "
        f"login p50 {pct(window.logins, 50):.2f} ms p99 {pct(window.logins, 99):.2f} ms "
        "(from when it was due)"
    )
    print(
        f"CPU per login: server {ms(used['server'], logins):.3f} ms "
        f"({ms(used['server'], 3 * logins) * 1000:.0f} µs per request), "
        f"PostgreSQL backends {ms(used['postgres'], logins):.3f} ms, "
        f"Redis {ms(used['redis'], logins):.3f} ms, load client {ms(used['client'], logins):.3f} ms"
    )
    print(
        f"state cache missed (state loaded from PostgreSQL): {used['stores'] / max(logins, 1):.1%} "
        f"of logins; use recorded: {used['uses'] / max(logins, 1):.1%}; activity events: "
        f"{used['events'] / max(logins, 1):.2f} per login (Redis INFO commandstats: the state "
        "store script's DEL, the use record's SET, activity's XADD)"
    )
    per_event = (job + backend + redis_seconds) / max(events, 1)
    per_login = per_event * used["events"] / max(logins, 1)
    print(
        f"compaction job after the run, a sample of {events:,} events (after {warm[0]:,} of the "
        f"first period, {sum(warm[1:]) * 1e6 / max(warm[0], 1):.0f} µs each): CPU per event "
        f"{per_event * 1e6:.0f} µs "
        f"(job {ms(job, events) * 1000:.0f} µs, PostgreSQL {ms(backend, events) * 1000:.0f} µs, "
        f"Redis {ms(redis_seconds, events) * 1000:.0f} µs): {per_login * 1000:.3f} ms per login"
    )
    total = (used["server"] + used["postgres"] + used["redis"]) / max(logins, 1) + per_login
    print(f"all of it (server + PostgreSQL + Redis + compaction): {total * 1000:.3f} ms per login")


def print_row(name: str, f: dict[str, float]) -> None:
    print(
        f"{name:<22} {f['logins_per_s']:>6.0f} logins/s {f['requests_per_s']:>6.0f} req/s"
        f"  request p50 {f['request_p50_ms']:5.2f} ms p99 {f['request_p99_ms']:6.2f} ms"
        f"  login p50 {f['login_p50_ms']:5.2f} ms p99 {f['login_p99_ms']:6.2f} ms"
        f"  server CPU {f['cpu_us_per_request']:4.0f} µs/request  non-200: {f['errors']:.0f}"
    )


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    if args.server == "uvicorn":
        return [
            "-m",
            "uvicorn",
            "mailaccess.mailserver.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        "manage.py",
        "auth_policy_server",
        "--listen",
        f"127.0.0.1:{port}",
        "--processes",
        str(args.workers),
    ]


def main_periodic(args: argparse.Namespace, env: dict[str, str]) -> None:
    if not env.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("--periodic measures PostgreSQL's share: give DATABASE_URL=postgres://...")
    # Stopped (timeout, kill): end the private Redis and the server too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with private_redis(free_port(args.port + 50)) as (redis_process, redis_url):
        env = {**env, "MAILSERVER_REDIS_URL": redis_url}
        check, ttl, record = policy_intervals(env)
        periodic = Periodic(args.periodic, check, ttl, record)
        env = {**env, **periodic.env()}
        print(
            f"{args.mailboxes:,} mailboxes, each logging in every {args.periodic:g} s "
            f"(+ {CHECK_SECONDS / periodic.factor:.3f} s, the check's own time) "
            f"({args.mailboxes / args.periodic:,.0f} logins/s, open loop), standing for a "
            f"check every {check} s: time {periodic.factor:g}x faster, so the server runs with "
            f"{' '.join(f'{k}={v}' for k, v in periodic.env().items())} (the code's defaults: "
            f"{ttl} s and {record} s); private redis-server at {redis_url}; {args.workers} "
            f"server processes; at most {args.connections} keep-alive connections"
        )
        prepare(env, args.mailboxes)
        port = free_port(args.port)
        policy = subprocess.Popen([sys.executable, *server_command(args, port)], env=env, cwd=ROOT)
        try:
            wait_for(port)
            time.sleep(1)  # every worker up
            periodic_run(args, env, port, policy.pid, redis_process.pid, periodic)
        finally:
            policy.terminate()
            policy.wait()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server processes (one a core)")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--mailboxes", type=int, help="the working set (500; with --periodic 10,000)"
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "20600")))
    parser.add_argument(
        "--redis-url", default=os.environ.get("MAILSERVER_REDIS_URL", "redis://127.0.0.1:6379/2")
    )
    parser.add_argument(
        "--server",
        choices=["auth_policy_server", "uvicorn"],
        default="auth_policy_server",
        help="what serves the endpoint: production's manage.py auth_policy_server (default) "
        "or the same app as ASGI under uvicorn, for comparison",
    )
    parser.add_argument(
        "--periodic",
        type=float,
        metavar="SECONDS",
        help="real traffic: each mailbox logs in once every SECONDS, standing for a mail "
        "program's check interval (time-compressed, see above); a private Redis",
    )
    parser.add_argument(
        "--measured-periods", type=int, default=2, help="with --periodic: periods measured"
    )
    parser.add_argument(
        "--compaction-events",
        type=int,
        default=5000,
        help="with --periodic: events the compaction job is timed on after the run",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="start a throwaway Redis Cluster (three masters, a replica each) and use it",
    )
    parser.add_argument("--serve-ceiling", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling)
        return
    if args.fill is not None:
        fill(args.fill)
        return
    if args.mailboxes is None:
        args.mailboxes = 10_000 if args.periodic else 500
    if args.cluster:
        from cluster import throwaway_cluster

        with throwaway_cluster() as url:
            args.redis_url = url
            run(args)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "PYTHONPATH": str(ROOT),
        # As in production: DEBUG off (it would keep every SQL query in memory).
        "DEBUG": "0",
        "SECRET_KEY": "benchmark-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "LOG_LEVEL": "WARNING",
        "AUTH_POLICY_API_KEY": API_KEY,
        "MAILSERVER_REDIS_URL": args.redis_url,
        # Every login takes the full path: counted, never refused as too frequent.
        "AUTH_POLICY_CHECK_BURST": "1000000",
        "AUTH_POLICY_PROGRAM_CHECK_BURST": "1000000",
        "AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR": "1000000",
    }
    if args.periodic:
        main_periodic(args, env)
        return
    print(
        f"database: {env.get('DATABASE_URL', 'SQLite (embedded default)')}, redis: {args.redis_url}"
    )
    print(
        f"{os.cpu_count()} cores; {args.workers} server processes; {args.clients} load process(es);"
    )
    print(f"{args.connections} keep-alive connections; {args.seconds:.0f} s per run\n")
    prepare(env, args.mailboxes)

    port = free_port(args.port)
    policy = subprocess.Popen([sys.executable, *server_command(args, port)], env=env, cwd=ROOT)
    try:
        wait_for(port)
        time.sleep(1)  # every worker up
        endpoint = measure(port, args, process_tree(policy.pid))
    finally:
        policy.terminate()
        policy.wait()

    port = free_port(args.port + 1)
    ceilings = [
        subprocess.Popen([sys.executable, __file__, "--serve-ceiling", str(port)], env=env)
        for _ in range(args.workers)
    ]
    try:
        wait_for(port)
        time.sleep(0.5)
        ceiling = measure(port, args, [server.pid for server in ceilings])
    finally:
        for server in ceilings:
            server.terminate()
            server.wait()

    print_row(f"endpoint ({args.server})"[:22], endpoint)
    print_row("bare asyncio (ceiling)", ceiling)
    ratio = endpoint["logins_per_s"] / ceiling["logins_per_s"]
    cpu_ratio = ceiling["cpu_us_per_request"] / endpoint["cpu_us_per_request"]
    print(f"\nendpoint / ceiling: {ratio:.2f} of the throughput, {cpu_ratio:.2f} of the CPU cost")
    verdict = (
        "met" if endpoint["logins_per_s"] >= 2000 and endpoint["request_p99_ms"] < 10 else "NOT met"
    )
    print(f"target 2,000 logins/s with request p99 < 10 ms: {verdict} on this run")


if __name__ == "__main__":
    main()
