"""A real Redis Cluster for tests: three masters with one replica each, started by the test.

``redis-server --cluster-enabled yes`` six times (ports from ``REDIS_CLUSTER_PORT_RANGE``,
default ``E2E_PORT_RANGE``; each node's cluster bus port from the same range, given with
``--cluster-port``), then ``redis-cli --cluster create ... --cluster-replicas 1``, and the
fixture returns once every node says ``cluster_state:ok`` and every replica is in sync.
``cluster-node-timeout`` is 1000 ms, so a killed master's replica takes over within seconds.

``redis_cluster`` is one cluster for the whole session (tests that move slots leave it
whole); ``fresh_redis_cluster`` is a test's own, for one that kills a master.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from mailaccess.mailserver.redis_cluster import key_slot
from tests import mailservers
from tests.mailservers import tail

NODE_TIMEOUT_MS = 1000


def command(client: redis.Redis, *parts: Any) -> Any:
    """A command redis-py has no typed method for (CLUSTER ..., MIGRATE)."""
    return client.execute_command(*parts)  # type: ignore[no-untyped-call]


def free_ports(count: int) -> list[int]:
    """Ports of REDIS_CLUSTER_PORT_RANGE (else E2E_PORT_RANGE), none handed out before."""
    return mailservers.free_ports(count, os.environ.get("REDIS_CLUSTER_PORT_RANGE"))


@dataclass
class Node:
    port: int
    bus_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        log = self.folder / "redis.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--cluster-config-file", str(self.folder / "nodes.conf")),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start:\n{tail(log)}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    nodes: list[Node]
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What REDIS_URL / MAILSERVER_REDIS_URL say: two of the nodes, as production would."""
        return f"redis+cluster://{self.nodes[0].name},{self.nodes[1].name}"

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def client(self) -> RedisCluster:
        return RedisCluster(
            host="127.0.0.1", port=self.live()[0].port, decode_responses=True, socket_timeout=5
        )

    def slot_owners(self) -> dict[int, str]:
        """Each slot's master, as a live node sees it."""
        owners: dict[int, str] = {}
        for start, end, master, *_ in command(self.live()[0].client(), "CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owners[slot] = f"{master[0]}:{master[1]}"
        return owners

    def master_of(self, key: str) -> Node:
        return self.node(self.slot_owners()[key_slot(key.encode())])

    def masters(self) -> list[Node]:
        return [self.node(name) for name in sorted(set(self.slot_owners().values()))]

    def replica_of(self, master: Node) -> Node:
        node_id = command(master.client(), "CLUSTER", "MYID")
        replicas = command(master.client(), "CLUSTER", "REPLICAS", node_id)
        address = replicas[0].split()[1].partition("@")[0]
        return self.node(address)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every live node: cluster_state:ok, the same slot map, replicas in sync."""
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster is not healthy: {problem}")

    def _problem(self) -> str:
        maps = set()
        try:
            for node in self.live():
                client = node.client()
                info = command(client, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return f"{node.name} is not ok"
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return f"{node.name} is not in sync with its master"
                maps.add(
                    tuple(
                        (int(s), int(e), f"{m[0]}:{m[1]}")
                        for s, e, m, *_ in sorted(command(client, "CLUSTER", "SLOTS"))
                    )
                )
        except redis.RedisError as error:
            return f"{type(error).__name__}: {error}"
        if len(maps) != 1:
            return "the nodes disagree on the slot map"
        return ""

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(folder: Path) -> Cluster:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster")
    ports = free_ports(12)
    nodes = [
        Node(port, bus_port, folder / str(port))
        for port, bus_port in zip(ports[:6], ports[6:], strict=True)
    ]
    cluster = Cluster(nodes)
    try:
        for node in nodes:
            node.folder.mkdir(parents=True)
            node.start()
        created = subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *[node.name for node in nodes]),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def addresses_on_each_master(cluster: Cluster, prefix: str, domain: str = "inbox.lv") -> list[str]:
    """One mailbox address per master: their keys (``mp:{address}:...``) land on all three."""
    owners = cluster.slot_owners()
    found: dict[str, str] = {}
    for n in range(10_000):
        address = f"{prefix}{n}@{domain}"
        found.setdefault(owners[key_slot(address.encode())], address)
        if len(found) == len(set(owners.values())):
            break
    return [found[name] for name in sorted(found)]
