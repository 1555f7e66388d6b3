"""The Redis URL forms (common/redis_urls.py): one Redis or a cluster, and what the settings
make of a cluster URL (the cache backend; Celery's broker refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.redis_urls import is_cluster_url, parse_cluster_url
from mailaccess.mailserver.redis_cluster import check_url, key_slot, split_command
from mailaccess.mailserver.redis_pipeline import join_command, pack_command, pack_parts
from tests.test_deploy_settings import production_env, setting


def test_a_cluster_url_names_its_nodes_credentials_and_tls() -> None:
    parsed = parse_cluster_url(
        "rediss+cluster://portal:p%40ss@10.0.0.1:7000,10.0.0.2:7001/?ssl_ca_certs=/etc/ca.pem"
    )
    assert parsed.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (parsed.username, parsed.password, parsed.tls) == ("portal", "p@ss", True)
    assert parsed.query == {"ssl_ca_certs": "/etc/ca.pem"}
    plain = parse_cluster_url("redis+cluster://secret@a:1")
    assert (plain.username, plain.password, plain.tls) == (None, "secret", False)
    assert is_cluster_url("REDIS+CLUSTER://a:1")
    assert not is_cluster_url("redis://a:1/0")
    assert not is_cluster_url("")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://a:1/3", "only database 0"),
        ("redis+cluster://a,b:2", "host:port"),
        ("redis+cluster://:pw@a:x", "host:port"),
    ],
)
def test_a_wrong_cluster_url_stops_the_start_naming_why_not_the_password(
    url: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        check_url(url)
    assert "pw" not in str(raised.value)


def test_the_slot_is_redis_s_crc16_of_the_hash_tag() -> None:
    # Values from Redis's own CLUSTER KEYSLOT.
    assert key_slot(b"foo") == 12182
    assert key_slot(b"mp:{alice@inbox.lv}:state") == key_slot(b"alice@inbox.lv")
    assert key_slot(b"{}x") == key_slot(b"{}x")  # an empty tag: the whole key
    assert key_slot(b"a{}{b}") != key_slot(b"b")


def test_a_packed_command_s_key_is_found_where_redis_looks_for_it() -> None:
    evalsha = join_command(5, pack_parts("EVALSHA", "f" * 40, 1), pack_parts("mp:{a}:k", "arg"))
    batch = evalsha + pack_command("ZCOUNT", "mp:{b}:z", 0, "+inf") + pack_command("PING")
    end, name, key = split_command(batch)
    assert (name, key) == (b"EVALSHA", b"mp:{a}:k")
    end, name, key = split_command(batch, end)
    assert (name, key) == (b"ZCOUNT", b"mp:{b}:z")
    end, name, key = split_command(batch, end)
    assert (name, key, end) == (b"PING", None, len(batch))
    assert split_command(pack_command("EVAL", "return 1", 0))[2] is None


def test_a_cluster_redis_url_gives_the_cluster_cache_and_no_celery_broker(tmp_path: Path) -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    env = production_env(tmp_path, REDIS_URL=url, CELERY_BROKER_URL="redis://127.0.0.1:6380/0")
    cache = setting(env, "CACHES['default']['BACKEND']")
    assert cache.returncode == 0, cache.stderr
    assert cache.stdout == "'common.cache.RedisClusterCache'"
    assert setting(env, "MAILSERVER_REDIS_URL").stdout == repr(url)
    # Without a broker of its own, Celery would take the cluster: the start stops, saying why.
    refused = setting(production_env(tmp_path, REDIS_URL=url), "CELERY_BROKER_URL")
    assert refused.returncode != 0
    assert "CELERY_BROKER_URL cannot be a Redis Cluster" in refused.stderr
    assert "ImproperlyConfigured" in refused.stderr
