"""How fast the support admin answers with a provider's number of mailboxes.

Creates a throw-away PostgreSQL database (test_<name> of DATABASE_URL), fills it with
--mailboxes mailboxes (default 1,000,000; 40 % with an access row, half of those on, the rest
blocked; one password per access row; a week of blocks and notices), then times the support
pages as a member of the "support" group and prints the median time and the query count.

    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/mailportal \\
        .venv/bin/python benchmarks/admin_scale.py --mailboxes 1000000
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
           revoked_at)
       SELECT mailbox_id, '', true, true, true, '{SSHA512}x', md5(mailbox_id::text) || 'k',
              now(), '', '', CASE WHEN enabled THEN NULL ELSE now() END
       FROM mailaccess_externalaccess""",
    """INSERT INTO mailaccess_auditevent (mailbox_id, address, action, reason, actor_kind,
           actor_label, detail, created_at)
       SELECT a.mailbox_id, 'user' || a.mailbox_id || '@inbox.lv', 'access_blocked',
              a.block_reason, 'system', 'benchmark', '{}', a.blocked_at
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
    ("search prefix", "/admin/accounts/mailbox/?q=user12345"),
    ("search address", "/admin/accounts/mailbox/?q=user777777@inbox.lv"),
    ("mailbox page", "/admin/accounts/mailbox/{pk}/change/"),
    ("dashboard 7 days", "/admin/accounts/mailbox/dashboard/"),
    ("dashboard 90 days", "/admin/accounts/mailbox/dashboard/?days=90"),
    ("audit log", "/admin/audit/auditevent/"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailboxes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--keep", action="store_true", help="keep the seeded database and reuse it next time"
    )
    args = parser.parse_args()
    if not settings.IS_POSTGRES:
        sys.exit(
            "Set DATABASE_URL to a PostgreSQL database: the figures only mean something there."
        )

    setup_test_environment()
    database_name = settings.DATABASES["default"]["NAME"]
    started = time.perf_counter()
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        with connection.cursor() as cursor:
            for sql in SEED_SQL:
                # No parameters: the statements use % as modulo. The count is an int.
                cursor.execute(sql.replace("{n}", str(int(args.mailboxes))))
        print(f"seeded {args.mailboxes:,} mailboxes in {time.perf_counter() - started:.0f} s")
        from accounts.models import Mailbox

        staff = Mailbox.objects.create_user(
            "support@inbox.lv", "benchmark-password-1", is_staff=True
        )
        staff.groups.add(Group.objects.get(name="support"))
        client = Client()
        client.force_login(staff)
        blocked_pk = Mailbox.objects.get(address="user7@inbox.lv").pk

        print(f"{'page':<24} {'median ms':>10} {'queries':>8}")
        for name, url in PAGES:
            url = url.format(pk=blocked_pk)
            timings = []
            for _ in range(args.repeat):
                with CaptureQueriesContext(connection) as queries:
                    begin = time.perf_counter()
                    response = client.get(url)
                    timings.append((time.perf_counter() - begin) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            print(f"{name:<24} {statistics.median(timings):>10.1f} {len(queries):>8}")
    finally:
        if not args.keep:
            connection.creation.destroy_test_db(database_name, verbosity=0)


if __name__ == "__main__":
    main()
