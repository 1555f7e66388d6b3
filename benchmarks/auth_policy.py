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
ago) and does not depend on how long the run is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
        "password_key": f"{mailbox % 65536:04x}",
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
    requests: list,
    whole: list,
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


def prepare(env: dict[str, str], mailboxes: int) -> None:
    """Mailboxes bench0..N with access on, and an empty Redis database."""
    script = f"""
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from accounts.models import Mailbox
from mailaccess import actions
from audit.models import Actor
from mailaccess.models import ExternalAccess
from mailaccess.counters import sync_client
for n in range({mailboxes}):
    box, _ = Mailbox.objects.get_or_create(address=f"bench{{n}}@inbox.lv")
    if not ExternalAccess.objects.filter(mailbox=box, enabled=True).exists():
        actions.enable_access(box, actor=Actor.system("benchmark"))
sync_client().flushdb()
"""
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True)


def print_row(name: str, f: dict[str, float]) -> None:
    print(
        f"{name:<22} {f['logins_per_s']:>6.0f} logins/s {f['requests_per_s']:>6.0f} req/s"
        f"  request p50 {f['request_p50_ms']:5.2f} ms p99 {f['request_p99_ms']:6.2f} ms"
        f"  login p50 {f['login_p50_ms']:5.2f} ms p99 {f['login_p99_ms']:6.2f} ms"
        f"  server CPU {f['cpu_us_per_request']:4.0f} µs/request  non-200: {f['errors']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server processes (one a core)")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--mailboxes", type=int, default=500)
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
        "--cluster",
        action="store_true",
        help="start a throwaway Redis Cluster (three masters, a replica each) and use it",
    )
    parser.add_argument("--serve-ceiling", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ceiling:
        serve_ceiling(args.serve_ceiling)
        return
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
    print(
        f"database: {env.get('DATABASE_URL', 'SQLite (embedded default)')}, redis: {args.redis_url}"
    )
    print(
        f"{os.cpu_count()} cores; {args.workers} server processes; {args.clients} load process(es);"
    )
    print(f"{args.connections} keep-alive connections; {args.seconds:.0f} s per run\n")
    prepare(env, args.mailboxes)

    port = free_port(args.port)
    if args.server == "uvicorn":
        command = [
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
    else:
        command = [
            "manage.py",
            "auth_policy_server",
            "--listen",
            f"127.0.0.1:{port}",
            "--processes",
            str(args.workers),
        ]
    policy = subprocess.Popen([sys.executable, *command], env=env, cwd=ROOT)
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
