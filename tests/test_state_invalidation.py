"""After an access change commits, the auth policy's cached state is forgotten, or retried.

The state is cached for an hour, so an invalidation that fails matters: a Redis (or a whole
Redis Cluster) that does not answer must neither undo nor fail the committed change, and
the retried task must do what the hook could not.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, counters, tasks
from mailaccess.mailserver import state
from mailaccess.models import ExternalAccess
from tests.conftest import needs_redis


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_away(settings: Any) -> Any:
    def point_at(url: str) -> None:
        settings.MAILSERVER_REDIS_URL = url
        settings.MAILSERVER_REDIS_TIMEOUT = 0.2
        counters.sync_client.cache_clear()

    yield point_at
    counters.sync_client.cache_clear()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_a_switch_off_stands_when_neither_redis_nor_a_cluster_answers(
    transactional_db: None, alice: Mailbox, redis_away: Any, scheme: str
) -> None:
    """A cluster none of whose nodes answers raises redis-py's RedisClusterException, which is
    no RedisError: it escaped the hook and failed the request after its commit."""
    actions.enable_access(alice, actor=Actor.user(alice))
    redis_away(f"{scheme}://127.0.0.1:{closed_port()}")

    assert state.invalidate([alice.pk]) is False
    actions.disable_access(alice, actor=Actor.user(alice))  # the hooks run after its commit

    assert not ExternalAccess.objects.get(mailbox=alice).enabled


@needs_redis
def test_the_retried_task_forgets_the_state(
    transactional_db: None, alice: Mailbox, policy: str
) -> None:
    client = redis.Redis.from_url(policy, decode_responses=True)
    key = counters.state_key(alice.address)
    client.hset(key, mapping={"id": str(alice.pk), "on": "1"})

    tasks.invalidate_states.run([alice.pk])

    assert not client.exists(key)
    client.close()
