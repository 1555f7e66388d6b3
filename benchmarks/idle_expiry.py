"""Benchmark: the idle-expiry job on PostgreSQL with 1,000,000 mailboxes, 100,000 of them due.

Creates a throwaway database (dropped afterwards unless --keep), fills it with
generate_series SQL, then runs in a fresh process each (so peak memory is the job's own):

1. the job as beat runs it (``jobs.block_idle_access``): wall time, peak RSS, queries per
   batch; notices are queued to Redis as in production (--redis-url), then purged;
2. the naive alternative on a 10,000-row sample: a per-row ORM loop calling
   ``actions.block_access`` for each due mailbox, as the ratio to beat.

Targets (issue 5): under 60 s and 200 MB, a constant number of queries per batch. At
10,000,000 mailboxes (1,000,000 due; issue 23): under 5 minutes and 200 MB:

    .venv/bin/python benchmarks/idle_expiry.py --database mp_i5_bench \\
        --redis-url redis://127.0.0.1:6379/4
    .venv/bin/python benchmarks/idle_expiry.py --database mp_i23_bench \\
        --redis-url redis://127.0.0.1:6379/4 --mailboxes 10000000 --target-seconds 300 \\
        --skip-loop --keep   # then --reuse to time it again without refilling
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent

# Every tenth mailbox is due (access on, last used three months ago), three in ten have access
# on and used yesterday, the rest have access off: the job must skip 90% of the keyspace.
FILL_SQL = """
INSERT INTO accounts_mailbox (id, password, last_login, is_superuser, address, plan, status,
    status_changed_at, language, password_changed_at, is_staff, is_active, date_joined)
SELECT i, '!', now() - interval '1 day', false, 'bench' || i || '@inbox.lv', 'free', 'active',
    NULL, CASE WHEN i %% 7 = 0 THEN 'en' ELSE 'lv' END, NULL, false, true,
    now() - interval '2 years'
FROM generate_series(1, %(mailboxes)s) AS i;

SELECT setval(pg_get_serial_sequence('accounts_mailbox', 'id'), %(mailboxes)s);

INSERT INTO mailaccess_externalaccess (mailbox_id, enabled, enabled_at, disabled_at,
    block_reason, blocked_at, requires_password_change, imap_last_used_at, imap_last_ip,
    pop3_last_used_at, pop3_last_ip, smtp_last_used_at, smtp_last_ip, last_activity_at,
    expiry_warned_at)
SELECT i, i %% 10 < 4, now() - interval '1 year', NULL, '', NULL, false,
    CASE WHEN i %% 10 = 0 THEN now() - interval '3 months' ELSE now() - interval '1 day' END,
    '192.0.2.1', NULL, NULL, NULL, NULL,
    CASE WHEN i %% 10 = 0 THEN now() - interval '3 months' ELSE now() - interval '1 day' END,
    NULL
FROM generate_series(1, %(mailboxes)s) AS i;

INSERT INTO mailaccess_apppassword (mailbox_id, label, allow_imap, allow_pop3, allow_smtp,
    allowed_networks, password_hash, lookup_key, created_at, last_used_at, last_used_protocol,
    last_used_ip, last_used_client, revoked_at)
SELECT i, '', true, true, true, '[]', '{SSHA512}bench', encode(sha256(i::text::bytea), 'hex'),
    now() - interval '1 year', NULL, '', NULL, '', NULL
FROM generate_series(1, %(mailboxes)s) AS i
WHERE i %% 10 < 4;

ANALYZE;
"""


def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin_sql(base: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(database_url(base, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def run_script(url: str, script: str) -> None:
    """Run statements one by one in autocommit (VACUUM refuses a transaction)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in script.split(";\n"):
            if statement.strip():
                conn.execute(statement)


def django_env(url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": "benchmark-only",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "mailportal.settings",
        "PYTHONPATH": str(ROOT),
    }


def child(phase: str, env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def phase_bulk(batch_size: int) -> dict:
    """The job itself, measured in the process that runs it."""
    import resource

    import django

    django.setup()
    from django.db import connection

    from mailaccess import jobs

    queries = 0
    seconds_by_kind: dict[str, float] = {}

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        nonlocal queries
        queries += 1
        words = sql.split()
        table = next((word for word in words if word.startswith('"')), "")
        kind = f"{words[0]} {table}"
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seconds_by_kind[kind] = seconds_by_kind.get(kind, 0) + time.perf_counter() - start

    per_batch: list[int] = []
    seen = 0

    def on_batch(done: int) -> None:
        nonlocal seen
        per_batch.append(queries - seen)
        seen = queries

    with connection.execute_wrapper(count):
        start, cpu_start = time.perf_counter(), time.process_time()
        blocked = jobs.block_idle_access(batch_size=batch_size, on_batch=on_batch)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "cpu_seconds": cpu_seconds,
        "blocked": blocked,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batches": len(per_batch),
        "queries_per_batch": sorted(set(per_batch)),
        "queries_total": queries,
        "seconds_by_kind": seconds_by_kind,
    }


def phase_passdb(scope: str) -> dict:
    """Fill the passdb table Dovecot reads, with the product's own SQL (mailaccess/passdb.py),
    so that the job rewrites existing rows as it would in production: every row (``all``,
    after the fill) or the due mailboxes' (``due``, after --reuse put them back on)."""
    import django

    django.setup()
    from django.db import connection, transaction

    from mailaccess import passdb

    start = time.perf_counter()
    if scope == "all":
        with connection.cursor() as cursor:
            for statement in passdb.REBUILD_SQL.split(";\n"):
                if statement.strip():
                    cursor.execute(statement)
    else:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT mailbox_id FROM mailaccess_externalaccess WHERE mailbox_id % 10 = 0"
            )
            ids = [row[0] for row in cursor.fetchall()]
        for first in range(0, len(ids), 100_000):
            with transaction.atomic():
                passdb.refresh(ids[first : first + 100_000])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE mailaccess_passdb")
        cursor.execute("SELECT count(*) FROM mailaccess_passdb")
        [rows] = cursor.fetchone()
    return {"rows": rows, "seconds": time.perf_counter() - start}


def phase_loop(sample: int) -> dict:
    """The naive job: one block_access per due mailbox, on a sample."""
    import django

    django.setup()
    from django.utils import timezone

    from audit.models import Actor
    from mailaccess import actions
    from mailaccess.models import BlockReason, ExternalAccess

    actor = Actor.system("benchmark loop")
    due = ExternalAccess.objects.idle_at(timezone.now()).select_related("mailbox").order_by("pk")
    start = time.perf_counter()
    done = 0
    for access in due[:sample]:
        actions.block_access(access.mailbox, BlockReason.IDLE, actor=actor)
        done += 1
    return {"blocked": done, "seconds": time.perf_counter() - start}


# Back to the state FILL_SQL leaves, for --reuse.
RESET_ALL_SQL = """
UPDATE mailaccess_externalaccess SET enabled = true, block_reason = '', blocked_at = NULL,
    disabled_at = NULL
WHERE mailbox_id % 10 = 0 AND NOT enabled;
UPDATE mailaccess_apppassword SET revoked_at = NULL WHERE revoked_at IS NOT NULL;
TRUNCATE mailaccess_newprogramalert, mailaccess_notice, mailaccess_auditevent;
VACUUM ANALYZE;
"""

RESET_SAMPLE_SQL = """
WITH sample AS (
    SELECT mailbox_id FROM mailaccess_externalaccess
    WHERE block_reason = 'idle' ORDER BY mailbox_id LIMIT %(sample)s
)
UPDATE mailaccess_externalaccess a SET enabled = true, block_reason = '', blocked_at = NULL
FROM sample WHERE a.mailbox_id = sample.mailbox_id;
UPDATE mailaccess_apppassword SET revoked_at = NULL
WHERE mailbox_id IN (
    SELECT mailbox_id FROM mailaccess_externalaccess
    WHERE enabled AND block_reason = '' AND last_activity_at < now() - interval '2 months'
);
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=["bulk", "loop", "passdb"], help=argparse.SUPPRESS)
    parser.add_argument("--scope", choices=["all", "due"], help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", default="postgres://postgres:postgres@127.0.0.1:5432/")
    parser.add_argument("--database", default="mp_bench_idle_expiry")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--mailboxes", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--target-seconds", type=float, default=60.0)
    parser.add_argument("--target-mb", type=float, default=200.0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--skip-loop", action="store_true", help="time only the job")
    parser.add_argument(
        "--reuse", action="store_true", help="reset a database kept with --keep, do not refill"
    )
    args = parser.parse_args()

    if args.phase == "bulk":
        print(json.dumps(phase_bulk(args.batch_size)))
        return
    if args.phase == "loop":
        print(json.dumps(phase_loop(args.sample)))
        return
    if args.phase == "passdb":
        print(json.dumps(phase_passdb(args.scope)))
        return

    import redis

    url = database_url(args.pg_url, args.database)
    env = django_env(url, args.redis_url)
    queue = redis.Redis.from_url(args.redis_url)
    if not args.reuse:
        admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.database}"')
        admin_sql(args.pg_url, f'CREATE DATABASE "{args.database}"')
    try:
        start = time.perf_counter()
        # A kept database gets the migrations added since it was filled.
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
        subprocess.run(migrate, env=env, cwd=ROOT, check=True)
        if args.reuse:
            run_script(url, RESET_ALL_SQL)
            passdb = child("passdb", env, "--scope", "due")
        else:
            run_script(url, FILL_SQL % {"mailboxes": args.mailboxes})
            passdb = child("passdb", env, "--scope", "all")
        print(f"{args.mailboxes:,} mailboxes ready in {time.perf_counter() - start:.1f} s")
        print(f"  of which the passdb table, {passdb['rows']:,} rows: {passdb['seconds']:.1f} s")

        bulk = child("bulk", env, "--batch-size", str(args.batch_size))
        queued = queue.llen("celery")
        queue.delete("celery")

        loop = None
        if not args.skip_loop:
            run_script(url, RESET_SAMPLE_SQL % {"sample": args.sample})
            loop = child("loop", env, "--sample", str(args.sample))
            queue.delete("celery")
    finally:
        if not args.keep:
            admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')

    bulk_per_row = bulk["seconds"] / bulk["blocked"]
    print(f"idle-expiry job: {bulk['blocked']:,} of {args.mailboxes:,} mailboxes blocked")
    print(
        f"  wall time        {bulk['seconds']:.1f} s (target < {args.target_seconds:.0f} s), "
        f"of which {bulk['cpu_seconds']:.1f} s CPU in the job's process"
    )
    print(f"  peak memory      {bulk['peak_rss_mb']:.0f} MB RSS (target < {args.target_mb:.0f} MB)")
    print(
        f"  batches          {bulk['batches']} of {args.batch_size}, queries per batch "
        f"{bulk['queries_per_batch']}, {bulk['queries_total']} queries in all"
    )
    print(f"  notice tasks     {queued} queued to Redis (purged)")
    print("  database time by statement:")
    for kind, seconds in sorted(bulk["seconds_by_kind"].items(), key=lambda item: -item[1]):
        print(f"    {seconds:6.1f} s  {kind}")
    for name, ok in (
        ("wall time", bulk["seconds"] < args.target_seconds),
        ("peak memory", bulk["peak_rss_mb"] < args.target_mb),
    ):
        print(f"  verdict: {name}: {'met' if ok else 'MISSED'}")
    if loop is None:
        return
    loop_per_row = loop["seconds"] / loop["blocked"]
    print(
        f"per-row ORM loop: {loop['blocked']:,} rows in {loop['seconds']:.1f} s "
        f"({loop_per_row * 1000:.2f} ms/row against {bulk_per_row * 1000:.3f} ms/row)"
    )
    print(
        f"  the job is {loop_per_row / bulk_per_row:.0f}x faster per row; the loop would take "
        f"{loop_per_row * bulk['blocked']:.0f} s for all {bulk['blocked']:,}"
    )


if __name__ == "__main__":
    main()
