"""Real traffic, time-compressed: what benchmarks/auth_policy.py --periodic and
benchmarks/dovecot_logins.py's Cperiodic share.

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
