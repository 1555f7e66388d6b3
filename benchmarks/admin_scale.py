"""How fast the support admin answers with a provider's number of mailboxes.

Creates a throw-away PostgreSQL database (test_<name> of DATABASE_URL), fills it with
--mailboxes mailboxes (default 1,000,000; 40 % with an access row, half of those on, the rest
blocked; one password per access row; a week of blocks and notices), then times the support
pages as a member of the "support" group and prints the median time and the query count.
Each page is a whole changelist request through the test client: every query it makes, the
capped count included, and the rendering. For the address searches it prints the slowest
query's plan and the verdict (issue 23: under 100 ms at 10,000,000 mailboxes).

    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/mailportal \\
        .venv/bin/python benchmarks/admin_scale.py --mailboxes 1000000

Ten million: seeding takes long on 2 cores; the database idle_expiry.py leaves with --keep
(10,000,000 mailboxes bench1..) serves as well, migrated to the current code first:

    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/mailportal \\
        .venv/bin/python benchmarks/admin_scale.py --database mp_i23_bench --reuse --keep \\
        --address-prefix bench
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailportal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django_otp import DEVICE_ID_SESSION_KEY  # noqa: E402
from django_otp.plugins.otp_totp.models import TOTPDevice  # noqa: E402

SEED_SQL = [
    """INSERT INTO accounts_mailbox (password, is_superuser, address, plan, status, language,
           is_staff, is_active, date_joined, last_login)
       SELECT '!', false, 'user' || g || '@inbox.lv',
              CASE WHEN g % 10 = 0 THEN 'plus' ELSE 'free' END,
              CASE WHEN g % 20 = 0 THEN 'inactive' ELSE 'active' END,
              'lv', false, true, now(), now() - (g % 300) * interval '1 day'
       FROM generate_series(1, {n}) AS g""",
    """INSERT INTO mailaccess_externalaccess (mailbox_id, enabled, block_reason, blocked_at,
           requires_password_change, last_activity_at, imap_last_used_at)
       SELECT id, id % 10 < 2,
              CASE WHEN id % 10 < 2 THEN ''
                   ELSE (ARRAY['hourly_limit', 'compromised', 'inactive', 'idle',
                               'faulty_program', 'support'])[1 + id % 6] END,
              CASE WHEN id % 10 < 2 THEN NULL ELSE now() - (id % 90) * interval '1 day' END,
              id % 10 >= 2 AND id % 6 = 1,
              now() - (id % 120) * interval '1 day', now() - (id % 120) * interval '1 day'
       FROM accounts_mailbox WHERE id % 10 < 4""",
    """INSERT INTO mailaccess_apppassword (mailbox_id, label, allow_imap, allow_pop3, allow_smtp,
           password_hash, lookup_key, created_at, last_used_protocol, last_used_client,
           revoked_at, allowed_networks)
       SELECT mailbox_id, '', true, true, true, '{SSHA512}x', md5(mailbox_id::text) || 'k',
              now(), '', '', CASE WHEN enabled THEN NULL ELSE now() END, '[]'
       FROM mailaccess_externalaccess""",
    """INSERT INTO mailaccess_auditevent (mailbox_id, address, action, reason, actor_kind,
           actor_label, justification, detail, created_at)
       SELECT a.mailbox_id, 'user' || a.mailbox_id || '@inbox.lv', 'access_blocked',
              a.block_reason, 'system', 'benchmark', '', '{}', a.blocked_at
       FROM mailaccess_externalaccess a WHERE a.block_reason <> ''""",
    """INSERT INTO mailaccess_notice (mailbox_id, kind, reason, key, created_at, emailed_at)
       SELECT e.mailbox_id, 'blocked', e.reason, 'block:' || e.id, e.created_at, e.created_at
       FROM mailaccess_auditevent e""",
    "ANALYZE",
]

PAGES = [
    ("changelist", "/admin/accounts/mailbox/"),
    ("changelist page 20", "/admin/accounts/mailbox/?p=20"),
    ("filter access on", "/admin/accounts/mailbox/?access=on"),
    ("filter compromised", "/admin/accounts/mailbox/?block=compromised"),
    ("filter plus + active", "/admin/accounts/mailbox/?plan__exact=plus&status__exact=active"),
    ("filter used 7 days", "/admin/accounts/mailbox/?used=7"),
    ("search prefix", "/admin/accounts/mailbox/?q={prefix}12345"),
    ("search address", "/admin/accounts/mailbox/?q={prefix}777777@inbox.lv"),
    ("search short prefix", "/admin/accounts/mailbox/?q={prefix}1"),
    ("search upper case", "/admin/accounts/mailbox/?q={prefix_upper}4242"),
    ("search no match", "/admin/accounts/mailbox/?q=nobody"),
    ("mailbox page", "/admin/accounts/mailbox/{pk}/change/"),
    ("dashboard 7 days", "/admin/accounts/mailbox/dashboard/"),
    ("dashboard 90 days", "/admin/accounts/mailbox/dashboard/?days=90"),
    ("audit log", "/admin/audit/auditevent/"),
]
# Support's address search, a whole changelist request (issue 23).
SEARCH_TARGET_MS = 100.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailboxes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--database",
        help="name of the throw-away database (default: test_<name of DATABASE_URL>)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument(
        "--reuse", action="store_true", help="time a database kept with --keep, do not seed"
    )
    parser.add_argument("--explain", action="store_true", help="print every search's plans")
    parser.add_argument(
        "--address-prefix",
        default="user",
        help="what the addresses of a --reuse'd database begin with (idle_expiry.py: bench)",
    )
    args = parser.parse_args()
    if not settings.IS_POSTGRES:
        sys.exit(
            "Set DATABASE_URL to a PostgreSQL database: the figures only mean something there."
        )

    setup_test_environment()
    database_name = settings.DATABASES["default"]["NAME"]
    if args.database:
        connection.settings_dict.setdefault("TEST", {})["NAME"] = args.database
    started = time.perf_counter()
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=args.reuse)
    try:
        from accounts.models import Mailbox

        if not args.reuse:
            with connection.cursor() as cursor:
                for sql in SEED_SQL:
                    # No parameters: the statements use % as modulo. The count is an int.
                    cursor.execute(sql.replace("{n}", str(int(args.mailboxes))))
            print(f"seeded {args.mailboxes:,} mailboxes in {time.perf_counter() - started:.0f} s")
        staff, _created = Mailbox.objects.get_or_create(
            address="support@inbox.lv", defaults={"is_staff": True}
        )
        staff.groups.add(Group.objects.get(name="support"))
        # The admin wants a session verified with an authenticator (mailportal/admin.py).
        device, _created = TOTPDevice.objects.get_or_create(
            user=staff, name="authenticator", defaults={"confirmed": True}
        )
        client = Client()
        client.force_login(staff)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
        prefix = args.address_prefix
        blocked_pk = Mailbox.objects.get(address=f"{prefix}7@inbox.lv").pk

        print(f"{Mailbox.objects.order_by().count():,} mailboxes")
        print(
            f"{'page':<24} {'median ms':>10} {'max ms':>8} {'database ms':>12} "
            f"{'Python CPU ms':>14} {'queries':>8} {'slowest query ms':>17}"
        )
        verdicts = []
        for name, url in PAGES:
            url = url.format(pk=blocked_pk, prefix=prefix, prefix_upper=prefix.upper())
            timings, database, cpu = [], [], []
            slowest: tuple[float, str] = (0.0, "")
            for _ in range(args.repeat):
                with CaptureQueriesContext(connection) as queries:
                    begin, cpu_begin = time.perf_counter(), time.process_time()
                    response = client.get(url, secure=True)
                    timings.append((time.perf_counter() - begin) * 1000)
                    cpu.append((time.process_time() - cpu_begin) * 1000)
                assert response.status_code == 200, (url, response.status_code)
                # Wall time of each query as the client saw it: PostgreSQL's work and the
                # round trip, but also any wait for a core on a busy machine.
                times = [float(query["time"]) * 1000 for query in queries.captured_queries]
                database.append(sum(times))
                for query, took in zip(queries.captured_queries, times, strict=True):
                    slowest = max(slowest, (took, query["sql"]))
            median = statistics.median(timings)
            print(
                f"{name:<24} {median:>10.1f} {max(timings):>8.1f} "
                f"{statistics.median(database):>12.1f} {statistics.median(cpu):>14.1f} "
                f"{len(queries):>8} {slowest[0]:>17.1f}"
            )
            if name.startswith("search"):
                verdicts.append((name, median, statistics.median(database)))
                if args.explain:
                    for query in queries.captured_queries:
                        with connection.cursor() as cursor:
                            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
                            plan = "\n    ".join(row[0] for row in cursor.fetchall())
                        print(f"  {query['sql'][:100]}...\n    {plan}")
        print(f"verdicts (target: the whole request under {SEARCH_TARGET_MS:.0f} ms):")
        for name, median, database_ms in verdicts:
            verdict = "met" if median < SEARCH_TARGET_MS else "MISSED"
            print(f"  {name:<22} {median:6.1f} ms ({database_ms:.1f} ms in queries): {verdict}")
    finally:
        if not args.keep:
            connection.creation.destroy_test_db(database_name, verbosity=0)


if __name__ == "__main__":
    main()
