"""``--cluster`` of the policy benchmarks: a throwaway Redis Cluster on this machine.

Three masters with one replica each, as the end-to-end tests start it
(``tests/redis_cluster.py``: ports from ``REDIS_CLUSTER_PORT_RANGE``, else
``E2E_PORT_RANGE``), stopped when the benchmark ends. The six redis-servers share the
machine's cores with the servers measured and the load, as the one Redis does in the
single-Redis runs; the replicas apply every write too, as in production.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """The cluster's URL (``redis+cluster://...``) while it runs."""
    from tests.redis_cluster import start_cluster

    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cluster = start_cluster(folder)
    try:
        print(f"Redis Cluster: {', '.join(node.name for node in cluster.masters())} (masters)")
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
