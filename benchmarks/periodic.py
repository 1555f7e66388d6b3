"""What benchmarks/auth_policy.py and benchmarks/dovecot_logins.py share: the mailboxes they
fill, and real traffic, time-compressed (``--periodic``, ``Cperiodic``).

A mail program checks every five minutes; a benchmark cannot wait that long per round. So every
mailbox of the working set logs in once every ``period`` seconds, and each of the auth
policy's intervals is divided by the same factor, so the share of logins that find their state
cached, or record a use, is production's.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


DOMAIN = "inbox.lv"

# The rows enable_access makes (access on, one app password), for many mailboxes at once, with
# generate_series. Mailbox n is bench<n>@inbox.lv with id n + 1, its password
# "bench-app-password-<n>" with id n + 1, hashed {SSHA512} as mailaccess/passwords.py makes it:
# base64(sha512(password + salt) + salt), with an 8-byte salt derived from n, so a refill gives
# the same hashes. The audit rows enable_access also writes are left out: no login reads them.
# The passdb table is the caller's to rebuild (``passdb.REBUILD_SQL``).
FILL_SQL = """
TRUNCATE accounts_mailbox, mailaccess_externalaccess, mailaccess_apppassword,
         mailaccess_auditevent, mailaccess_notice RESTART IDENTITY CASCADE;
INSERT INTO accounts_mailbox (id, password, is_superuser, address, plan, status, language,
                              is_staff, is_active, date_joined)
SELECT g + 1, '!', false, 'bench' || g || '@{domain}', 'free', 'active', 'lv', false, true, now()
FROM generate_series(0, {count} - 1) g;
INSERT INTO mailaccess_externalaccess (mailbox_id, enabled, enabled_at, block_reason,
                                       requires_password_change, last_activity_at)
SELECT g + 1, true, now(), '', false, now() FROM generate_series(0, {count} - 1) g;
INSERT INTO mailaccess_apppassword (id, mailbox_id, label, allow_imap, allow_pop3, allow_smtp,
                                    password_hash, lookup_key, created_at, last_used_protocol,
                                    last_used_client, allowed_networks)
SELECT g + 1, g + 1, '', true, true, true,
       '{{SSHA512}}' || replace(encode(sha512(convert_to('bench-app-password-' || g, 'UTF8')
                                             || substring(decode(md5(g::text), 'hex') for 8))
                                      || substring(decode(md5(g::text), 'hex') for 8), 'base64'),
                                E'\\n', ''),
       encode(sha256(convert_to('bench-app-password-' || g, 'UTF8')), 'hex'),
       now(), '', '', '[]'
FROM generate_series(0, {count} - 1) g;
SELECT setval(pg_get_serial_sequence('accounts_mailbox', 'id'), {count});
SELECT setval(pg_get_serial_sequence('mailaccess_apppassword', 'id'), {count});
"""


def password_of(number: int) -> str:
    return f"bench-app-password-{number}"


def address_of(number: int) -> str:
    return f"bench{number}@{DOMAIN}"


@dataclass(frozen=True)
class Periodic:
    """Every mailbox logs in once every ``period`` seconds, standing for a check every
    ``check_interval``; the policy's state TTL and use-record interval are scaled alike."""

    period: float
    check_interval: int
    state_ttl: int
    use_record_interval: int

    @property
    def factor(self) -> float:
        return self.check_interval / self.period

    def env(self) -> dict[str, str]:
        return {
            "AUTH_POLICY_STATE_TTL": str(max(1, round(self.state_ttl / self.factor))),
            "AUTH_POLICY_USE_RECORD_INTERVAL": str(
                max(1, round(self.use_record_interval / self.factor))
            ),
        }


def policy_intervals(env: dict[str, str]) -> tuple[int, int, int]:
    """The code's own defaults (check interval, state TTL, use-record interval), read from
    its settings in ``env`` without the two this module overrides, so the same benchmark
    scales old and new code alike."""
    env = {**env}
    for name in ("AUTH_POLICY_STATE_TTL", "AUTH_POLICY_USE_RECORD_INTERVAL"):
        env.pop(name, None)
    output = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.AUTH_POLICY_CHECK_INTERVAL, s.AUTH_POLICY_STATE_TTL, "
            "s.AUTH_POLICY_USE_RECORD_INTERVAL)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    check, ttl, record = (int(value) for value in output[-3:])
    return check, ttl, record
