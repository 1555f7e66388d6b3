"""Benchmark: SMTP policy checks per second and p99 latency, against the ceiling.

Two servers are measured with the same load (many persistent connections, each sending
Postfix-like requests one after another, as smtpd does):

- ``policy``: the real daemon, started as production starts it (``manage.py
  smtp_policy_server --listen 127.0.0.1:PORT --processes N``, DEBUG off), Redis counters,
  free plan mailboxes, DATA and END-OF-MESSAGE checks alternating, under two loads (each on
  a freshly started daemon):

  - ``retrying``: every mailbox far over its 5 messages a minute, so nearly every check is a
    deferral: a hijacked or faulty program retrying at full speed;
  - ``within-limits``: the free plan's limits raised out of reach in the database, so every
    check passes and every END-OF-MESSAGE is counted: every check reaches Redis;

- ``ceiling``: a bare asyncio server (the same uvloop streams, the same number of processes
  on one port with SO_REUSEPORT) that reads a request up to its empty line and answers a
  fixed ``action=DUNNO``: the most any asyncio daemon could do on this machine.

Run: ``.venv/bin/python benchmarks/smtp_policy.py [--redis URL] [--seconds 10] [--processes 2]``.
It uses its own SQLite database in a temporary folder and deletes its Redis keys afterwards.
Besides checks/s and p50/p99 it prints the server's CPU time per check (user + system of all
its processes / checks answered), which other load on the machine cannot inflate much, Redis's
CPU time per check (``INFO cpu``: Redis is one thread shared by every daemon of the provider),
and both ratios. Each server is measured twice: at saturation (a connection sends its next
request when the answer arrives: checks/s and the share of the ceiling) and paced at ``--rate``
checks/s (the p99 at that load; at saturation p99 is only queueing, 100 connections /
throughput). Target: at least 10,000 checks/s, at least 60% of the ceiling, p99 under 5 ms at
10,000 checks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PORTS = {"policy": 21501, "ceiling": 21502}
SECRET_KEY = "benchmark-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"  # noqa: S105


def setup_django(var_dir: str, redis_url: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "mailportal.settings",
            # As in production: DEBUG off (it would keep every SQL query in memory).
            "DEBUG": "0",
            "SECRET_KEY": SECRET_KEY,
            "VAR_DIR": var_dir,
            "MAILSERVER_REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


def create_mailboxes(count: int) -> list[str]:
    from django.core.management import call_command

    from accounts.models import Mailbox, Plan
    from mailaccess.models import ExternalAccess

    call_command("migrate", verbosity=0)
    addresses = [f"bench{n}@inbox.lv" for n in range(count)]
    mailboxes = Mailbox.objects.bulk_create(
        [Mailbox(address=a, plan=Plan.FREE, password="!") for a in addresses],  # noqa: S106
        batch_size=1000,
    )
    # Access on, as for any mailbox that can authenticate: the daemon refuses the others.
    ExternalAccess.objects.bulk_create(
        [ExternalAccess(mailbox=mailbox, enabled=True) for mailbox in mailboxes],
        batch_size=1000,
    )
    return addresses


LOADS = ("retrying", "within-limits")


def set_load(load: str) -> None:
    """The free plan's limits for a load (the daemon reads them when it starts)."""
    from accounts.models import Plan
    from mailaccess.models import SendingLimit

    out_of_reach = 1_000_000_000
    limits = (5, 15) if load == "retrying" else (out_of_reach, out_of_reach)
    SendingLimit.objects.update_or_create(
        plan=Plan.FREE, defaults={"per_minute": limits[0], "per_hour": limits[1]}
    )


def start_policy_server(processes: int) -> subprocess.Popen:  # type: ignore[type-arg]
    """The daemon as production runs it, in the environment ``setup_django`` prepared."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "smtp_policy_server",
            "--listen",
            f"127.0.0.1:{PORTS['policy']}",
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def run_ceiling_server(ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    import uvloop

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\n\n")
                writer.write(b"action=DUNNO\n\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(
            serve, "127.0.0.1", PORTS["ceiling"], reuse_address=True, reuse_port=True
        )
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


def wait_for_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def request_bytes(address: str, state: str, number: int) -> bytes:
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "client_name": "client.example.net",
        "reverse_client_name": "client.example.net",
        "helo_name": "laptop",
        "sender": address,
        "recipient": "",
        "recipient_count": "1",
        "queue_id": "",
        "instance": f"{number:x}.6565f0a1.{number % 7}",
        "size": "2048",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "PLAIN",
        "sasl_username": address,
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "server_address": "127.0.0.1",
        "server_port": "587",
        "policy_context": "submission",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


async def load(
    port: int, connections: int, seconds: float, addresses: list[str], rate: float = 0
) -> tuple[int, list[float]]:
    """Each connection sends a request, waits for the answer, sends the next one.

    With ``rate`` (checks a second, all connections together) each connection sends on a
    fixed schedule instead, as smtpd processes do when mail arrives at a steady pace. A
    request that is due when the answer before it arrives counts from its scheduled time (a
    late answer is charged to the requests queued behind it too); one the connection waited
    for counts from when the wait ended (the event loop's timers are late by up to a
    millisecond, which is the load generator's, not the server's).
    """
    latencies: list[float] = []
    clock = time.perf_counter
    stop_at = clock() + seconds
    interval = connections / rate if rate else 0.0
    counter = 0

    async def one_connection(seed: int) -> None:
        nonlocal counter
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        number = 0
        scheduled = clock() + interval * seed / connections
        while scheduled < stop_at:
            started = scheduled
            if not interval:
                started = clock()
            elif scheduled > clock():
                await asyncio.sleep(scheduled - clock())
                started = clock()
            address = rng.choice(addresses)
            state = "DATA" if number % 2 == 0 else "END-OF-MESSAGE"
            writer.write(request_bytes(address, state, seed * 1_000_000 + number))
            await reader.readuntil(b"\n\n")
            latencies.append(clock() - started)
            number += 1
            scheduled = scheduled + interval if interval else clock()
        counter += number
        writer.close()

    await asyncio.gather(*(one_connection(seed) for seed in range(connections)))
    return counter, latencies


def client_process(  # type: ignore[no-untyped-def]
    port: int, connections: int, seconds: float, addresses: list[str], rate: float, out
) -> None:
    import uvloop

    # uvloop, as the servers: the load generator shares the cores with what it measures.
    out.send(uvloop.run(load(port, connections, seconds, addresses, rate)))


def run_clients(
    port: int, connections: int, seconds: float, clients: int, addresses: list[str], rate: float
) -> tuple[int, list[float]]:
    pipes = []
    processes = []
    for _ in range(clients):
        receive, send = multiprocessing.Pipe(duplex=False)
        process = multiprocessing.Process(
            target=client_process,
            args=(port, connections // clients, seconds, addresses, rate / clients, send),
        )
        process.start()
        pipes.append(receive)
        processes.append(process)
    results = [pipe.recv() for pipe in pipes]
    for process in processes:
        process.join()
    return (
        sum(count for count, _ in results),
        sorted(latency for _, sample in results for latency in sample),
    )


def percentile(latencies: list[float], share: float) -> float:
    return latencies[int(len(latencies) * share)] * 1000


async def warm_up(port: int, addresses: list[str], rounds: int) -> None:
    """Requests for every mailbox, so the daemon's caches hold them all before measuring.

    Each process has its own cache and the kernel picks the process of a new connection: a
    few rounds on fresh connections reach every process (2 processes, 8 rounds: a mailbox
    stays unknown to one of them with a chance of 1 in 256).
    """
    for _ in range(rounds):
        await _warm_round(port, addresses)


async def _warm_round(port: int, addresses: list[str]) -> None:

    async def some(part: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for number, address in enumerate(part):
            writer.write(request_bytes(address, "RCPT", number))
            await reader.readuntil(b"\n\n")
            writer.write(request_bytes(address, "DATA", number))
            await reader.readuntil(b"\n\n")
        writer.close()

    await asyncio.gather(*(some(addresses[n::20]) for n in range(20)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: per-check cost that other load cannot inflate."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (uvicorn's workers, the daemon's forks)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += process_tree(int(child))
    return pids


def redis_cpu_seconds(client) -> float:  # type: ignore[no-untyped-def]
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        # Every node, replicas too: they apply every write the masters take.
        infos = client.info("cpu", target_nodes=RedisCluster.ALL_NODES).values()
    else:
        infos = [client.info("cpu")]
    return sum(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in infos)


def redis_commands(client) -> int:  # type: ignore[no-untyped-def]
    """Commands Redis has processed so far, this INFO not counted."""
    return int(client.info("stats")["total_commands_processed"])


@dataclass
class Figures:
    rate: float
    p99: float
    cpu_per_check: float
    paced_p99: float | None


def measure(
    name: str,
    connections: int,
    seconds: float,
    clients: int,
    addresses: list[str],
    pids: list[int],
    paced_rate: float,
    redis_client=None,  # type: ignore[no-untyped-def]
) -> Figures:
    port = PORTS["ceiling" if name == "ceiling" else "policy"]
    asyncio.run(warm_up(port, addresses, 1 if len(pids) == 1 else 8))
    # A short run first (connection set-up, script loading), then the measured one.
    for duration in (1.0, seconds):
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        redis_before = redis_cpu_seconds(redis_client) if redis_client else 0.0
        commands_before = redis_commands(redis_client) if redis_client else 0
        total, latencies = run_clients(port, connections, duration, clients, addresses, 0)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    redis_cpu = redis_cpu_seconds(redis_client) - redis_before if redis_client else 0.0
    # Less the two INFO calls between the readings (the first reading's own, the CPU one).
    commands = redis_commands(redis_client) - commands_before - 2 if redis_client else 0
    p99 = percentile(latencies, 0.99)
    rate = total / seconds
    cpu_per_check = cpu / total
    redis_part = (
        f"   Redis CPU {redis_cpu / total * 1e6:.1f} µs/check,"
        f" {commands / total:.2f} commands/check"
        if redis_client
        else ""
    )
    print(
        f"{name:13} {rate:8,.0f} checks/s   p50 {percentile(latencies, 0.5):.2f} ms"
        f"   p99 {p99:.2f} ms   server CPU {cpu_per_check * 1e6:.0f} µs/check{redis_part}"
        f"   ({connections} connections, {total:,} checks)"
    )
    paced_p99 = None
    if paced_rate:
        total, latencies = run_clients(port, connections, seconds, clients, addresses, paced_rate)
        paced_p99 = percentile(latencies, 0.99)
        print(
            f"{'':13} at {paced_rate:,.0f} checks/s: p50 {percentile(latencies, 0.5):.2f} ms"
            f"   p99 {paced_p99:.2f} ms   ({total / seconds:,.0f} checks/s answered)"
        )
    return Figures(rate, p99, cpu_per_check, paced_p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis", default=os.environ.get("BENCHMARK_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--load", choices=[*LOADS, "both"], default="both")
    parser.add_argument(
        "--rate",
        type=float,
        default=10_000,
        help="checks/s of the paced run, whose p99 the target is read on (0: no paced run)",
    )
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes")
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument(
        "--processes", type=int, default=2, help="server processes of each server (one a core)"
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("BENCH_PORT", "21501")), help="and +1"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="start a throwaway Redis Cluster (three masters, a replica each) and use it",
    )
    options = parser.parse_args()
    if options.cluster:
        from cluster import throwaway_cluster

        with throwaway_cluster() as url:
            options.redis = url
            run(options)
        return
    run(options)


def run(options: argparse.Namespace) -> None:
    var_dir = tempfile.mkdtemp(prefix="bench-policy-")
    setup_django(var_dir, options.redis)
    addresses = create_mailboxes(options.mailboxes)

    PORTS.update(policy=options.port, ceiling=options.port + 1)
    context = multiprocessing.get_context("fork")
    ceilings = []
    for _ in range(options.processes):
        ready = context.Event()
        ceilings.append(context.Process(target=run_ceiling_server, args=(ready,), daemon=True))
        ceilings[-1].start()
        ready.wait(30)
    print(
        f"{os.cpu_count()} cores; Redis {options.redis}; {options.mailboxes} free mailboxes; "
        f"{options.processes} server processes each; {options.clients} load process(es)"
    )
    from common.redis_urls import client_from_url

    client = client_from_url(options.redis)
    try:
        wait_for_port(PORTS["ceiling"])
        ceiling = measure(
            "ceiling",
            options.connections,
            options.seconds,
            options.clients,
            addresses,
            [process.pid or 0 for process in ceilings],
            options.rate,
        )
        figures = {}
        for load in LOADS if options.load == "both" else (options.load,):
            set_load(load)
            policy = start_policy_server(options.processes)
            try:
                wait_for_port(PORTS["policy"])
                time.sleep(1)  # every process listening
                figures[load] = measure(
                    load,
                    options.connections,
                    options.seconds,
                    options.clients,
                    addresses,
                    process_tree(policy.pid),
                    options.rate,
                    client,
                )
            finally:
                policy.terminate()
                policy.wait(15)
                delete_keys(client, addresses)
    finally:
        for process in ceilings:
            process.terminate()
    for load, policy in figures.items():
        ratio = policy.rate / ceiling.rate
        met = policy.rate >= 10_000 and ratio >= 0.6
        paced = ""
        if policy.paced_p99 is not None and ceiling.paced_p99 is not None:
            met = met and policy.paced_p99 < 5
            paced = (
                f", p99 at {options.rate:,.0f}/s {policy.paced_p99:.2f} ms"
                f" (ceiling {ceiling.paced_p99:.2f} ms)"
            )
        print(
            f"{load:13} {ratio:.0%} of the ceiling{paced}; the ceiling costs "
            f"{ceiling.cpu_per_check / policy.cpu_per_check:.0%} of its server CPU per check"
            f"   target >=10,000/s, >=60%, p99 <5 ms: {'OK' if met else 'BELOW TARGET'}"
        )


def delete_keys(client, addresses: list[str]) -> None:  # type: ignore[no-untyped-def]
    # One pass over the keyspace (a pass per mailbox took half a minute).
    ours = {f"mp:{{{address}}}:".encode() for address in addresses}
    keys = [
        key
        for key in client.scan_iter(match="mp:{bench*", count=1000)
        if key[: key.index(b"}") + 2] in ours
    ]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


if __name__ == "__main__":
    main()
