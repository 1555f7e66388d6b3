"""Benchmark: SMTP policy checks per second and p99 latency, against the ceiling.

Two servers are measured with the same load (many persistent connections, each sending
Postfix-like requests one after another, as smtpd does):

- ``policy``: the real daemon (``SmtpPolicy`` behind ``PolicyServer``), Redis counters, free
  plan mailboxes, DATA and END-OF-MESSAGE checks alternating;
- ``ceiling``: a bare asyncio server that reads a request up to its empty line and answers
  a fixed ``action=DUNNO``: the most any asyncio daemon could do on this machine.

Run: ``.venv/bin/python benchmarks/smtp_policy.py [--redis URL] [--seconds 10]``.
It uses its own SQLite database in a temporary folder and deletes its Redis keys afterwards.
Target: at least 10,000 checks/s, p99 under 5 ms, at least 60% of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PORTS = {"policy": 21501, "ceiling": 21502}


def setup_django(var_dir: str, redis_url: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "mailportal.settings",
            "DEBUG": "1",
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

    call_command("migrate", verbosity=0)
    addresses = [f"bench{n}@inbox.lv" for n in range(count)]
    Mailbox.objects.bulk_create(
        [Mailbox(address=a, plan=Plan.FREE, password="!") for a in addresses],  # noqa: S106
        batch_size=1000,
    )
    return addresses


def run_policy_server(ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    from concurrent.futures import ThreadPoolExecutor

    from mailaccess.mailserver import redis_client
    from mailaccess.mailserver.policy_server import PolicyServer
    from mailaccess.mailserver.smtp_policy import SmtpPolicy

    async def main() -> None:
        policy = SmtpPolicy(redis_client.async_client(), ThreadPoolExecutor(4))
        server = PolicyServer(policy, request_timeout=2, idle_timeout=600)
        await server.listen(f"127.0.0.1:{PORTS['policy']}")
        ready.set()
        await server.wait_stopped()

    asyncio.run(main())


def run_ceiling_server(ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\n\n")
                writer.write(b"action=DUNNO\n\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", PORTS["ceiling"])
        ready.set()
        await server.serve_forever()

    asyncio.run(main())


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
    port: int, connections: int, seconds: float, addresses: list[str]
) -> tuple[int, list[float]]:
    """Each connection sends a request, waits for the answer, sends the next one."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    counter = 0

    async def one_connection(seed: int) -> None:
        nonlocal counter
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        number = 0
        while time.perf_counter() < stop_at:
            address = rng.choice(addresses)
            state = "DATA" if number % 2 == 0 else "END-OF-MESSAGE"
            payload = request_bytes(address, state, seed * 1_000_000 + number)
            started = time.perf_counter()
            writer.write(payload)
            await reader.readuntil(b"\n\n")
            latencies.append(time.perf_counter() - started)
            number += 1
        counter += number
        writer.close()

    await asyncio.gather(*(one_connection(seed) for seed in range(connections)))
    return counter, latencies


def client_process(port: int, connections: int, seconds: float, addresses: list[str], out) -> None:  # type: ignore[no-untyped-def]
    out.send(asyncio.run(load(port, connections, seconds, addresses)))


async def warm_up(port: int, addresses: list[str]) -> None:
    """One request per mailbox, so the daemon's cache holds them all before measuring."""

    async def some(part: list[str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for number, address in enumerate(part):
            writer.write(request_bytes(address, "RCPT", number))
            await reader.readuntil(b"\n\n")
            writer.write(request_bytes(address, "DATA", number))
            await reader.readuntil(b"\n\n")
        writer.close()

    await asyncio.gather(*(some(addresses[n::10]) for n in range(10)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: per-check cost that other load cannot inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str, connections: int, seconds: float, clients: int, addresses: list[str], pid: int
) -> tuple[float, float]:
    asyncio.run(warm_up(PORTS[name], addresses))
    # A short run first (connection set-up, script loading), then the measured one.
    for duration in (1.0, seconds):
        cpu_before = cpu_seconds(pid)
        pipes = []
        processes = []
        for _ in range(clients):
            receive, send = multiprocessing.Pipe(duplex=False)
            process = multiprocessing.Process(
                target=client_process,
                args=(PORTS[name], connections // clients, duration, addresses, send),
            )
            process.start()
            pipes.append(receive)
            processes.append(process)
        results = [pipe.recv() for pipe in pipes]
        for process in processes:
            process.join()
    cpu = cpu_seconds(pid) - cpu_before
    total = sum(count for count, _ in results)
    latencies = sorted(latency for _, sample in results for latency in sample)
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    rate = total / seconds
    print(
        f"{name:8} {rate:10,.0f} checks/s   p50 {statistics.median(latencies) * 1000:.2f} ms"
        f"   p99 {p99:.2f} ms   server CPU {cpu / total * 1e6:.0f} µs/check"
        f"   ({connections} connections, {total:,} checks)"
    )
    return rate, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis", default=os.environ.get("BENCHMARK_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes")
    parser.add_argument("--mailboxes", type=int, default=2000)
    options = parser.parse_args()

    var_dir = tempfile.mkdtemp(prefix="bench-policy-")
    setup_django(var_dir, options.redis)
    addresses = create_mailboxes(options.mailboxes)

    context = multiprocessing.get_context("fork")
    servers = {}
    for name, target in (("policy", run_policy_server), ("ceiling", run_ceiling_server)):
        ready = context.Event()
        servers[name] = context.Process(target=target, args=(ready,), daemon=True)
        servers[name].start()
        ready.wait(30)

    print(f"{os.cpu_count()} cores; Redis {options.redis}; {options.mailboxes} free mailboxes")
    try:
        ceiling, _ = measure(
            "ceiling",
            options.connections,
            options.seconds,
            options.clients,
            addresses,
            servers["ceiling"].pid or 0,
        )
        rate, p99 = measure(
            "policy",
            options.connections,
            options.seconds,
            options.clients,
            addresses,
            servers["policy"].pid or 0,
        )
    finally:
        for process in servers.values():
            process.terminate()
        import redis

        client = redis.Redis.from_url(options.redis)
        for address in addresses:
            keys = list(client.scan_iter(match=f"mp:{{{address}}}:*"))
            if keys:
                client.delete(*keys)
    ratio = rate / ceiling
    verdict = "OK" if rate >= 10_000 and p99 < 5 and ratio >= 0.6 else "BELOW TARGET"
    print(f"ratio    {ratio:.0%} of the ceiling   target >=10,000/s, p99 <5 ms, >=60%: {verdict}")


if __name__ == "__main__":
    main()
