"""Django's cache on a Redis Cluster: ``REDIS_URL`` of the form ``redis+cluster://...``.

Django's ``RedisCache`` speaks to one Redis (or a primary and its read replicas) through
``redis.Redis``. On a cluster every key has its slot, so the client is redis-py's
``RedisCluster``, and the calls that take several keys at once are split by slot: Redis
refuses a multi-key command (MGET, MSET, a DEL of several keys) whose keys span slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from common.redis_urls import cluster_client


class RedisClusterCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        options.pop("pool_class", None)
        options.pop("parser_class", None)
        serializer = options.pop("serializer", None)
        super().__init__(servers, serializer=serializer)
        # One client per process: it holds a connection pool per node and the slot map.
        self._cluster = cluster_client(servers[0], **options)
        # The serializer the base class chose (its attribute, which Django's stubs omit).
        self._codec: Any = cast(Any, self)._serializer

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        return self._cluster

    def get_many(self, keys: Any) -> dict[Any, Any]:
        keys = list(keys)
        values = self._cluster.mget_nonatomic(keys)
        pairs = zip(keys, values, strict=True)
        return {key: self._codec.loads(value) for key, value in pairs if value is not None}

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        if timeout == 0:
            # Django's "expire at once", as its own set() does it.
            self.delete_many(list(data))
            return
        pipeline = self._cluster.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for key, value in data.items():
            pipeline.set(key, self._codec.dumps(value), ex=timeout)
        pipeline.execute()

    def delete_many(self, keys: Any) -> None:
        # RedisCluster's DEL of several keys deletes them slot by slot.
        self._cluster.delete(*keys)


class RedisClusterCache(RedisCache):
    """``CACHES["default"]["BACKEND"]`` for a ``redis+cluster://`` ``LOCATION``."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        # RedisCache splits LOCATION at commas into servers; a cluster URL names its nodes so.
        self._servers = [server]
        self._class = RedisClusterCacheClient
