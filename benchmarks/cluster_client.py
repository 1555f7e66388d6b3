"""The policy servers' Redis client alone: CPU per command, one Redis against a cluster.

Runs the same load through ``RedisPipeline`` (one Redis, ``--redis``) and ``ClusterPipeline``
(a throwaway three-master cluster with a replica each, ``cluster.py``), alternating, each
round in a fresh event loop: 64 tasks sending EVALSHA of a small script on 2,000 mailboxes'
keys, as the SMTP daemon does. Prints the client's CPU time per command (this process's user +
system time / commands: what the client itself costs, which other load on the machine cannot
inflate much) and commands/s, and how often the cluster was asked CLUSTER SLOTS meanwhile
(a few times: each run's client once, and redis-py's client that reads the statistics;
thousands would mean the client keeps re-reading the map).

    .venv/bin/python benchmarks/cluster_client.py [--redis redis://127.0.0.1:6379/15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRIPT_BODY = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) return redis.call('ZCARD', KEYS[1])"


async def load(url: str, commands: int = 60_000, tasks: int = 64) -> tuple[int, float, float]:
    from mailaccess.mailserver.redis_cluster import open_pipeline
    from mailaccess.mailserver.redis_pipeline import Script

    script = Script(SCRIPT_BODY)
    client = open_pipeline(url, timeout=2)
    await client.execute("PING")
    done = 0

    async def worker(number: int) -> None:
        nonlocal done
        for i in range(commands // tasks):
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            key = f"mp:{{bench{(number * 1000 + i) % 2000}@inbox.lv}}:x"
            client.evalsha(future.set_result, script, [key], [i, number])
            reply = await future
            if isinstance(reply, Exception):
                raise reply
            done += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(number) for number in range(tasks)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    await client.aclose()
    return done, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis", default=os.environ.get("BENCHMARK_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    from cluster import throwaway_cluster

    from common.redis_urls import cluster_client

    with throwaway_cluster() as url:
        slots_before = None
        for _ in range(options.rounds):
            for name, target in (("one Redis", options.redis), ("cluster", url)):
                if name == "cluster" and slots_before is None:
                    slots_before = slots_calls(cluster_client(url))
                done, cpu, wall = asyncio.run(load(target))
                print(
                    f"{name:10} {done} EVALSHA: {cpu / done * 1e6:5.1f} µs client CPU/command,"
                    f" {done / wall:8,.0f} commands/s",
                    flush=True,
                )
        calls = slots_calls(cluster_client(url)) - (slots_before or 0)
        print(f"CLUSTER SLOTS asked by the cluster client: {calls} ({options.rounds} runs)")


def slots_calls(client: Any) -> int:
    from redis.cluster import RedisCluster

    stats = client.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
    return sum(
        int(node.get("cmdstat_cluster|slots", {}).get("calls", 0)) for node in stats.values()
    )


if __name__ == "__main__":
    main()
