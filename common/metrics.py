"""Prometheus metrics of every mailportal process, defined once.

Each service serves its own ``/metrics`` (the portal, the auth policy, the SMTP policy daemon's
health port, the Celery worker's metrics port). Servers that fork workers (``uvicorn
--workers``, gunicorn, Celery's prefork pool) must set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
folder of their own before start (the systemd units use ``RuntimeDirectory=``, which systemd
empties at each start): every process then writes its values to files there and ``exposition``
adds them up, whichever worker answers the scrape. Without it (``make run``, the tests) the
process's own registry is served.

Label values are closed sets (protocols, outcomes, reasons, job names), never a mailbox or an
address: one series per mailbox would swamp Prometheus. The jobs' label is ``job_name``:
Prometheus keeps ``job`` for the scrape job and would rename ours.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
from collections.abc import Iterator, Sequence

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# A decision takes one Redis round trip (well under a millisecond); Dovecot gives up after
# a second. The buckets resolve the p99 target (10 ms) and show the slow tail up to that limit.
_POLICY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_JOB_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)

AUTH_POLICY_DECISIONS = Counter(
    "mailportal_auth_policy_decisions_total",
    "Dovecot auth-policy requests answered, by command, protocol and result.",
    ["command", "protocol", "result"],
)
AUTH_POLICY_SECONDS = Histogram(
    "mailportal_auth_policy_decision_seconds",
    "Time to decide one auth-policy request (Redis included), by command.",
    ["command"],
    buckets=_POLICY_BUCKETS,
)
SMTP_POLICY_CHECKS = Counter(
    "mailportal_smtp_policy_checks_total",
    "Postfix policy requests answered by the SMTP policy daemon, by stage and result.",
    ["stage", "result"],
)


class BatchedHistogram(Collector):
    """A histogram that takes observations in batches: ``add(counts per bucket, seconds)``.

    prometheus_client's Histogram has no "observe n times", and one ``observe()`` per check
    costs the SMTP policy daemon a lock and a bisect at tens of thousands of checks a second;
    the daemon counts into plain lists and adds them here once a second. A collector of our
    own rather than reaching into Histogram's private buckets, which a release may change.
    It lives in the process's own registry, so it is for a single-process server (the SMTP
    policy daemon), not for one that forks workers under PROMETHEUS_MULTIPROC_DIR.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.upper_bounds: tuple[float, ...] = (*buckets, math.inf)
        self._counts = [0] * len(self.upper_bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, counts: Sequence[int], seconds: float) -> None:
        """Counts of observations per bucket (each up to its bound and above the one before,
        in the order of ``upper_bounds``) and their total in seconds."""
        with self._lock:
            for index, count in enumerate(counts):
                self._counts[index] += count
            self._sum += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip(self.upper_bounds, counts, strict=True):
            cumulative += count
            # prometheus_client leaves floatToGoString unannotated (str from float).
            label = floatToGoString(bound)  # type: ignore[no-untyped-call]
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


SMTP_POLICY_SECONDS = BatchedHistogram(
    "mailportal_smtp_policy_check_seconds",
    "Time to answer one Postfix policy request (Redis included).",
    buckets=_POLICY_BUCKETS,
)
BLOCKS = Counter(
    "mailportal_access_blocks_total",
    "External access blocked, by reason (counted when the block is committed).",
    ["reason"],
)
NOTICES_SENT = Counter(
    "mailportal_notices_sent_total",
    "Notices e-mailed to mailbox owners, by kind.",
    ["kind"],
)
JOB_RUNS = Counter(
    "mailportal_job_runs_total",
    "Runs of the scheduled jobs, by job and outcome (ok, failed).",
    ["job_name", "outcome"],
)
JOB_ROWS = Counter(
    "mailportal_job_rows_total",
    "Rows (mailboxes, notices, audit rows) the scheduled jobs changed.",
    ["job_name"],
)
JOB_SECONDS = Histogram(
    "mailportal_job_duration_seconds",
    "Wall time of one run of a scheduled job.",
    ["job_name"],
    buckets=_JOB_BUCKETS,
)
JOB_LAST_SUCCESS = Gauge(
    "mailportal_job_last_success_timestamp_seconds",
    "When each job last finished without error (Unix time): alert when it grows old.",
    ["job_name"],
    multiprocess_mode="max",
)
REDIS_ERRORS = Counter(
    "mailportal_redis_errors_total",
    "Redis commands that failed (unreachable, timed out, refused), by service.",
    ["service"],
)


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def exposition() -> tuple[bytes, str]:
    """The text Prometheus scrapes, and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        # prometheus_client leaves the collector's __init__ unannotated.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def authorized(header: bytes | str | None) -> bool:
    """Whether an ``Authorization`` header carries ``METRICS_TOKEN`` as a bearer token.

    A token rather than an address list: the portal sits behind a reverse proxy, where every
    scrape would come from the proxy's address. Without a token set, nobody may scrape.
    """
    token = settings.METRICS_TOKEN
    if not token or not header:
        return False
    raw = header.encode("latin-1") if isinstance(header, str) else header
    scheme, _, credentials = raw.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token.encode())
