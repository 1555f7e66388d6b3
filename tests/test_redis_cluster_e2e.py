"""The product on a real Redis Cluster (issue 23 §2): three masters with a replica each,
started by the tests (tests/redis_cluster.py), named by ``MAILSERVER_REDIS_URL`` as
``redis+cluster://host:port,host:port``.

Mailboxes are picked so that their keys (``mp:{address}:...``) land on every master; the SMTP
policy daemon and the auth policy speak to the cluster through ``redis_cluster.ClusterPipeline``
and the portal through redis-py's ``RedisCluster``. A slot migrated under the client's feet
(``CLUSTER SETSLOT ... MIGRATING/IMPORTING``, ``MIGRATE``) shows ``ASK`` and ``MOVED`` being
followed; a master killed with SIGKILL shows what the policy servers answer while its replica
takes over, and for how long.

PostgreSQL only: the failover test runs both policy servers as production does, in their own
processes, which read the test database over TCP.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import time_machine
from django.utils import translation
from redis.exceptions import TimeoutError as RedisTimeoutError

from accounts.models import Mailbox, Plan
from audit.models import Actor
from common.redis_urls import subscription_urls
from mailaccess import actions, counters
from mailaccess.mailserver.postfix_policy import reply_text
from mailaccess.mailserver.redis_cluster import ClusterPipeline, key_slot, open_pipeline
from mailaccess.mailserver.redis_pipeline import Script, pack_command
from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, BlockReason, ExternalAccess
from tests.mailservers import database_environment, free_port, start_command, stop_process
from tests.policy_client import API_KEY, Dovecot
from tests.policy_daemon import PolicyClient, RunningDaemon
from tests.redis_cluster import Cluster, addresses_on_each_master, command

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
PASSWORD = "cluster-web-password-1"
# What a master failing over may cost (deploy/README.md, "Redis Cluster"): fallback answers
# for at most this many seconds after the kill, with cluster-node-timeout 1000 ms. Measured
# here at 2.95-4.1 s (the replica's failure detection, its election, and the policy servers
# reading the new map); the bound leaves room for a busy two-core machine.
FAILOVER_FALLBACK_SECONDS = 8.0


@pytest.fixture
def cluster_url(redis_cluster: Cluster, settings: Any) -> Iterator[str]:
    """The session's cluster, emptied, as the mail servers' Redis."""
    settings.MAILSERVER_REDIS_URL = redis_cluster.url
    settings.AUTH_POLICY_API_KEY = API_KEY
    counters.sync_client.cache_clear()
    redis_cluster.wait_healthy()
    for node in redis_cluster.masters():
        node.client().flushall()
    yield redis_cluster.url
    counters.sync_client.cache_clear()


def mailboxes(cluster: Cluster, prefix: str, plan: Plan = Plan.FREE) -> list[Mailbox]:
    """One mailbox per master, access switched on."""
    made = []
    for address in addresses_on_each_master(cluster, f"{prefix}-{secrets.token_hex(3)}-"):
        mailbox = Mailbox.objects.create_user(address, PASSWORD, plan=plan, language="lv")
        actions.enable_access(mailbox, actor=Actor.user(mailbox))
        made.append(mailbox)
    return made


def test_the_test_mailboxes_keys_land_on_three_masters(redis_cluster: Cluster) -> None:
    addresses = addresses_on_each_master(redis_cluster, "spread-")
    masters = {redis_cluster.master_of(counters.sent_key(a)).name for a in addresses}
    assert len(masters) == 3
    # Every key of one mailbox has its slot: a script may touch them all on one master.
    for address in addresses:
        slots = {
            key_slot(key.encode())
            for key in (
                counters.sent_key(address),
                counters.state_key(address),
                counters.failures_key(address),
                counters.check_key(address, "imap", "x"),
            )
        }
        assert len(slots) == 1


def test_the_hourly_sending_limit_counts_and_refuses_on_every_master(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    senders = mailboxes(redis_cluster, "send")
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(cluster_url) as daemon,
        daemon.connect() as client,
    ):
        # Fifteen each (five a minute, the free plan's), the three mailboxes interleaved.
        for minute in range(3):
            for number in range(5):
                for sender in senders:
                    reply = client.send_message(sender.address, f"m{minute}-{number}")
                    assert reply == "DUNNO", (sender.address, reply)
            traveller.shift(61)
        for sender in senders:
            master = redis_cluster.master_of(counters.sent_key(sender.address))
            # Counted on its own master (another would answer MOVED).
            assert master.client().zcard(counters.sent_key(sender.address)) == 15
        for sender in senders:
            sixteenth = client.send_message(sender.address, "m16")
            assert sixteenth.startswith("REJECT "), (sender.address, sixteenth)
        daemon.finish_blocks()
    for sender in senders:
        assert ExternalAccess.objects.get(mailbox=sender).block == BlockReason.HOURLY_LIMIT


def test_the_guessing_locks_work_on_every_master_and_across_slots(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    owners = mailboxes(redis_cluster, "guess")
    dovecot = Dovecot(cluster_url)
    for owner in owners:
        dovecot.login(owner.address, remote="192.0.2.10")  # the owner, at home
        for guess in range(10):
            dovecot.login(owner.address, remote="203.0.113.9", right=False, pwhash=f"{guess:03x}")
        reply = dovecot.allow(owner.address, remote="203.0.113.50")
        assert reply["status"] == -1, owner.address
        assert "10:15" in reply["msg"], reply  # the lock ends a failure window on
        assert dovecot.allow(owner.address, remote="192.0.2.10")["status"] == 0
    # One network guessing across mailboxes of every master: its own key, its own slot.
    for n in range(30):
        dovecot.login(f"user{n}@inbox.lv", remote="2001:db8:bad:1::7", right=False)
    for owner in mailboxes(redis_cluster, "net"):  # mailboxes not locked themselves
        assert dovecot.allow(owner.address, remote="2001:db8:bad:1::99")["status"] == -1
        assert dovecot.allow(owner.address, remote="2001:db8:bad:2::1")["status"] == 0


def test_the_auth_policy_state_is_cached_and_invalidated_by_an_access_change(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    owners = mailboxes(redis_cluster, "state")
    dovecot = Dovecot(cluster_url)
    for owner in owners:
        assert dovecot.allow(owner.address, app_password="1")["status"] == 0
        master = redis_cluster.master_of(counters.state_key(owner.address)).client()
        assert master.hget(counters.state_key(owner.address), "on") == "1"
    # The portal's side: redis-py's RedisCluster, one invalidation for several slots.
    for owner in owners:
        actions.disable_access(owner, actor=Actor.user(owner))
    for owner in owners:
        master = redis_cluster.master_of(counters.state_key(owner.address)).client()
        assert not master.exists(counters.state_key(owner.address))
        assert master.get(counters.generation_key(owner.address)) == "2"
        # The allow after a right password (it names the password): access is off.
        reply = dovecot.allow(owner.address, app_password="1")
        assert reply["status"] == -1, owner.address


def test_the_smtp_daemon_hears_an_access_change_published_on_the_cluster(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    senders = mailboxes(redis_cluster, "pubsub")
    with translation.override("lv"):
        reason = reply_text(str(ACCESS_OFF_SERVER_MESSAGE))
    with RunningDaemon(cluster_url, cache_seconds=3600) as daemon, daemon.connect() as client:
        for sender in senders:
            assert client.send_message(sender.address, "m1") == "DUNNO"  # cached now
        for sender in senders:
            actions.disable_access(sender, actor=Actor.user(sender))
        for sender in senders:
            common = {"sasl_username": sender.address, "sender": sender.address}
            deadline = time.monotonic() + 5
            reply = client.ask(protocol_state="DATA", recipient_count="1", **common)
            while not reply.startswith("REJECT") and time.monotonic() < deadline:
                time.sleep(0.05)
                reply = client.ask(protocol_state="DATA", recipient_count="1", **common)
            assert reply.startswith("REJECT ") and reason in reply, (sender.address, reply)


def test_the_subscription_urls_name_each_node_of_the_cluster() -> None:
    assert subscription_urls("rediss+cluster://u:p%40ss@a:7000,b:7001/?ssl_cert_reqs=none") == [
        "rediss://u:p%40ss@a:7000/0?ssl_cert_reqs=none",
        "rediss://u:p%40ss@b:7001/0?ssl_cert_reqs=none",
    ]
    assert subscription_urls("redis://127.0.0.1:6379/3") == ["redis://127.0.0.1:6379/3"]


# -- the portal's side: redis-py's RedisCluster ---------------------------------------------


def test_the_portal_s_cache_and_sign_in_throttling_work_on_the_cluster(
    redis_cluster: Cluster, cluster_url: str, settings: Any
) -> None:
    from django.core.cache import cache

    from accounts import throttling

    settings.CACHES = {
        "default": {
            "BACKEND": "common.cache.RedisClusterCache",
            "LOCATION": cluster_url,
            "KEY_PREFIX": "mp",
        }
    }
    data = {f"key{n}": {"n": n} for n in range(30)}
    cache.set_many(data, 60)
    assert cache.get_many(list(data)) == data
    assert cache.get("key7") == {"n": 7}
    # The keys are spread over every master: each answers only for its own.
    holders = {node.name for node in redis_cluster.masters() if node.client().dbsize() > 0}
    assert len(holders) == 3
    cache.delete_many(list(data)[:20])
    assert cache.get_many(list(data)) == {k: v for k, v in data.items() if k not in list(data)[:20]}
    assert cache.add("counter", 1, 60) and not cache.add("counter", 5, 60)
    assert cache.incr("counter", 2) == 3
    cache.set_many({"gone": 1}, 0)
    assert cache.get("gone") is None
    cache.clear()
    assert sum(node.client().dbsize() for node in redis_cluster.masters()) == 0

    # Sign-in throttling counts in that cache: the mailbox's limit refuses on the cluster.
    limit = settings.SIGN_IN_FAILURES_PER_MAILBOX
    attempts = [
        throttling.attempt("alice@inbox.lv", f"198.51.100.{n}", None) for n in range(limit + 1)
    ]
    assert [a.refused for a in attempts] == [False] * limit + [True]


def test_usage_activity_and_readiness_read_the_cluster(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    from common import health
    from mailaccess import activity

    addresses = addresses_on_each_master(redis_cluster, "usage-")
    now = int(MONDAY.timestamp() * 1000)
    client = counters.sync_client()
    for n, address in enumerate(addresses):
        for message in range(n + 1):
            client.zadd(counters.sent_key(address), {f"m{message}": now - message * 1000})
    usages = [counters.read_usage(address, now) for address in addresses]
    assert [(u.last_minute, u.last_hour) for u in usages] == [(1, 1), (2, 2), (3, 3)]
    # The auth policy's buffered events: written by the pipelined client, taken in by the
    # job through RedisCluster (one stream, its own slot, and the job's lock beside it).
    client.xadd(activity.STREAM_KEY, {"e": "not an event"})
    assert activity.compact() == 1
    assert client.xlen(activity.STREAM_KEY) == 0
    assert health.check_redis(cluster_url, 1.0, "web") == "ok"


# -- a slot migrated under the client --------------------------------------------------------


def node_id(cluster: Cluster, name: str) -> str:
    return str(command(cluster.node(name).client(), "CLUSTER", "MYID"))


def asking_calls(cluster: Cluster, name: str) -> int:
    stats = cluster.node(name).client().info("commandstats")
    return int(stats.get("cmdstat_asking", {}).get("calls", 0))


def test_ask_and_moved_are_followed_while_a_slot_migrates(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    address = addresses_on_each_master(redis_cluster, "migrating-")[0]
    moved, stays, new = (counters.mailbox_key(kind, address) for kind in ("a", "b", "c"))
    slot = key_slot(moved.encode())
    source = redis_cluster.master_of(moved)
    target = next(m for m in redis_cluster.masters() if m.name != source.name)
    source_id, target_id = node_id(redis_cluster, source.name), node_id(redis_cluster, target.name)
    script = Script("return redis.call('GET', KEYS[1])")

    async def scenario() -> None:
        client = open_pipeline(cluster_url, timeout=2, decode=True)
        assert isinstance(client, ClusterPipeline)
        assert await client.execute("SET", moved, "first") == "OK"
        assert await client.execute("SET", stays, "second") == "OK"
        assert client._slots is not None and client._slots[slot] == source.name

        # Migration under way: one key moved already, the other not.
        command(target.client(), "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        command(source.client(), "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        command(source.client(), "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", moved)
        asked_before = asking_calls(redis_cluster, target.name)
        # The source answers ASK for the moved key (and for a key it does not have): the
        # client sends ASKING and the command to the target. Without ASKING the target would
        # answer MOVED back to the source, and the command would fail after MAX_HOPS.
        assert await client.execute("GET", moved) == "first"
        assert await client.execute("SET", new, "third") == "OK"
        evaluated: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client.evalsha(evaluated.set_result, script, [moved], [])
        assert await evaluated == "first"
        assert await client.execute("GET", stays) == "second"  # still on the source
        assert asking_calls(redis_cluster, target.name) >= asked_before + 3
        assert client._slots[slot] == source.name  # ASK is for one command, not the map

        # Migration done: the slot is the target's; the client's map still says the source,
        # whose MOVED the client follows and remembers.
        command(source.client(), "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", stays)
        for master in redis_cluster.masters():
            command(master.client(), "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert await client.execute("GET", stays) == "second"
        assert client._slots[slot] == target.name
        replies = await client.send_packed(
            b"".join(pack_command("GET", key) for key in (moved, stays, new)),
            3,
        )
        assert replies == ["first", "second", "third"]
        await client.aclose()

    asyncio.run(scenario())
    redis_cluster.wait_healthy()
    assert redis_cluster.master_of(moved).name == target.name


def test_the_sending_limit_keeps_counting_while_its_slot_migrates(
    redis_cluster: Cluster, cluster_url: str
) -> None:
    [sender, *_] = mailboxes(redis_cluster, "migrate-send")
    key = counters.sent_key(sender.address)
    slot = key_slot(key.encode())
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(cluster_url) as daemon,
        daemon.connect() as client,
    ):
        for minute in range(3):
            for number in range(5):
                assert client.send_message(sender.address, f"m{minute}-{number}") == "DUNNO"
            traveller.shift(61)
            if minute == 0:
                # Move the mailbox's whole slot to another master after its first five.
                source = redis_cluster.master_of(key)
                target = next(m for m in redis_cluster.masters() if m.name != source.name)
                source_id = node_id(redis_cluster, source.name)
                target_id = node_id(redis_cluster, target.name)
                command(target.client(), "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
                command(source.client(), "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
                keys = command(source.client(), "CLUSTER", "GETKEYSINSLOT", slot, 100)
                command(
                    source.client(), "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                for master in redis_cluster.masters():
                    command(master.client(), "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert client.send_message(sender.address, "m16").startswith("REJECT ")
        daemon.finish_blocks()
    assert redis_cluster.master_of(key).client().zcard(key) == 15
    redis_cluster.wait_healthy()


# -- a master that stops answering ---------------------------------------------------------


def test_a_hung_master_costs_its_commands_one_timeout_and_the_others_nothing(
    fresh_redis_cluster: Cluster,
) -> None:
    """The single-Redis timeout policy, per master: a command its master does not answer
    within the timeout fails, with whatever was queued behind it on that connection; the
    other masters' commands are answered meanwhile."""
    cluster = fresh_redis_cluster
    addresses = addresses_on_each_master(cluster, "hung-")
    keys = [counters.sent_key(address) for address in addresses]
    hung = cluster.master_of(keys[0])
    timeout = 0.5

    async def scenario() -> list[tuple[Any, float]]:
        client = open_pipeline(cluster.url, timeout=timeout)
        await client.execute("PING")  # the map is read, a connection per master open

        async def timed_get(key: str) -> tuple[Any, float]:
            started = time.monotonic()
            try:
                result: Any = await client.execute("GET", key)
            except Exception as error:
                result = error
            return result, time.monotonic() - started

        assert hung.process is not None
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            results = await asyncio.gather(*(timed_get(key) for key in [keys[0], *keys]))
        finally:
            # Before cluster-node-timeout (1 s): the cluster does not fail it over.
            os.kill(hung.process.pid, signal.SIGCONT)
        again = await client.execute("SET", keys[0], "back")
        await client.aclose()
        return [*results, (again, 0.0)]

    first, second, *others, again = asyncio.run(scenario())
    for result, seconds in (first, second):
        assert isinstance(result, RedisTimeoutError), result
        assert timeout <= seconds < timeout + 0.4
    for result, seconds in others:
        assert result is None  # answered (no such key), not held up by the hung master
        assert seconds < timeout
    assert again[0] == b"OK"


# -- a master killed ----------------------------------------------------------------------------


def smtp_daemon(cluster: Cluster, folder: Path) -> tuple[Any, int]:
    port = free_port()
    env = {
        **os.environ,
        **database_environment(),
        "MAILSERVER_REDIS_URL": cluster.url,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "e2e-only-secret-key-never-used-elsewhere",
        "DEBUG": "0",
        # Fallback answers this test can tell from the right ones (DUNNO).
        "SMTP_POLICY_ON_REDIS_ERROR": "defer",
        "CELERY_TASK_ALWAYS_EAGER": "1",
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
    }
    return start_command("smtp_policy_server", port, env, folder / "smtp.log"), port


def auth_policy(cluster: Cluster, folder: Path) -> tuple[Any, int]:
    port = free_port()
    env = {
        **os.environ,
        **database_environment(),
        "MAILSERVER_REDIS_URL": cluster.url,
        "AUTH_POLICY_API_KEY": API_KEY,
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "SECRET_KEY": "e2e-only-secret-key-never-used-elsewhere",
        "DEBUG": "0",
    }
    return start_command("auth_policy_server", port, env, folder / "auth.log"), port


def test_a_master_killed_costs_fallback_answers_for_seconds_then_its_replica_answers(
    fresh_redis_cluster: Cluster, settings: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster = fresh_redis_cluster
    settings.MAILSERVER_REDIS_URL = cluster.url
    counters.sync_client.cache_clear()
    # This cluster is stopped after the test: no later test may get its cached client.
    request.addfinalizer(counters.sync_client.cache_clear)
    # The mailbox on the master the URL names first: the SMTP daemon subscribes to access
    # changes there, so the kill takes its subscription too, which must move to the next node.
    owners = mailboxes(cluster, "failover")
    first = cluster.nodes[0].name
    owner = next(
        (o for o in owners if cluster.master_of(counters.state_key(o.address)).name == first),
        owners[0],
    )
    # The SMTP check at DATA counts nothing: it can be asked as often as the test likes.
    common = {"sasl_username": owner.address, "sender": owner.address, "recipient_count": "1"}
    body = json.dumps(
        {"login": owner.address, "protocol": "imap", "remote": "192.0.2.10", "pwhash": "a1b"}
    ).encode()
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    smtp, smtp_port = smtp_daemon(cluster, tmp_path)
    auth, auth_port = auth_policy(cluster, tmp_path)
    victim = cluster.master_of(counters.state_key(owner.address))
    assert victim.name == first  # redis-cli makes the first nodes it is given the masters
    heir = cluster.replica_of(victim)
    timeline: list[tuple[float, str, str]] = []
    try:
        with (
            PolicyClient(socket.create_connection(("127.0.0.1", smtp_port), timeout=10)) as postfix,
            httpx.Client(base_url=f"http://127.0.0.1:{auth_port}", timeout=5) as dovecot,
        ):

            def ask_both(moment: float) -> None:
                smtp_reply = postfix.ask(protocol_state="DATA", instance="i", **common)
                timeline.append((moment, "smtp", smtp_reply))
                response = dovecot.post("/auth-policy?command=allow", content=body, headers=headers)
                answer = "503" if response.status_code == 503 else str(response.json()["status"])
                timeline.append((moment, "auth", answer))

            for _ in range(5):
                ask_both(-1.0)
            assert {answer for _, _, answer in timeline} == {"DUNNO", "0"}, timeline
            killed_at = time.monotonic()
            victim.kill()
            while time.monotonic() - killed_at < FAILOVER_FALLBACK_SECONDS + 4:
                ask_both(time.monotonic() - killed_at)
                time.sleep(0.05)
            # After the failover an access change still reaches both: the portal invalidates
            # through RedisCluster, and the SMTP daemon, which cached the mailbox for a
            # minute, hears it on the node its subscription moved to.
            actions.disable_access(owner, actor=Actor.user(owner))
            deadline = time.monotonic() + 5
            refused = postfix.ask(protocol_state="DATA", instance="i", **common)
            while not refused.startswith("REJECT") and time.monotonic() < deadline:
                time.sleep(0.1)
                refused = postfix.ask(protocol_state="DATA", instance="i", **common)
            verified = json.dumps({**json.loads(body), "app_password": "1"}).encode()
            after_switch = dovecot.post(
                "/auth-policy?command=allow", content=verified, headers=headers
            ).json()
    finally:
        stop_process(smtp)
        stop_process(auth)

    after = [(moment, kind, answer) for moment, kind, answer in timeline if moment >= 0]
    right = {"smtp": "DUNNO", "auth": "0"}
    fallback = {"smtp": "DEFER_IF_PERMIT", "auth": "503"}
    wrong = [
        entry
        for entry in after
        if entry[2] != right[entry[1]] and not entry[2].startswith(fallback[entry[1]])
    ]
    assert not wrong, wrong
    fell_back = [moment for moment, kind, answer in after if answer != right[kind]]
    assert fell_back, "killing the master cost nothing: was it the mailbox's master?"
    last_fallback = max(fell_back)
    assert last_fallback <= FAILOVER_FALLBACK_SECONDS, (last_fallback, timeline)
    # Right again after that, and for good: the replica is the master of the mailbox's slot.
    assert all(answer == right[kind] for moment, kind, answer in after if moment > last_fallback)
    assert any(moment > last_fallback + 1 for moment, _, _ in after)
    cluster.wait_healthy()
    assert cluster.master_of(counters.state_key(owner.address)).name == heir.name
    assert refused.startswith("REJECT "), refused
    assert after_switch["status"] == -1, after_switch
    print(f"fallback answers from {min(fell_back):.2f} s to {last_fallback:.2f} s after the kill")
