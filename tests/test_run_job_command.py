"""`manage.py run_job` for ops: --dry-run counts and changes nothing; a progress bar; metrics."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import time_machine
from dateutil.relativedelta import relativedelta
from django.core.management import call_command
from prometheus_client import REGISTRY

from accounts.models import Mailbox, Status
from audit.models import AuditEvent
from mailaccess.models import AppPassword, ExternalAccess, Notice
from tests.test_jobs import T0, make_due_mailboxes

LATER = T0 + relativedelta(months=3)


def snapshot() -> dict[str, object]:
    return {
        "audit": AuditEvent.objects.count(),
        "notices": Notice.objects.count(),
        "on": ExternalAccess.objects.filter(enabled=True).count(),
        "blocked": ExternalAccess.objects.exclude(block_reason="").count(),
        "live": AppPassword.objects.live().count(),
        "inactive": Mailbox.objects.filter(status=Status.INACTIVE).count(),
        "warned": ExternalAccess.objects.filter(expiry_warned_at__isnull=False).count(),
    }


def run_job(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    with time_machine.travel(LATER, tick=False):
        call_command("run_job", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_dry_run_counts_what_every_job_would_do_and_changes_nothing(db: None) -> None:
    make_due_mailboxes(7, T0, prefix="idle")
    make_due_mailboxes(3, LATER - timedelta(days=58), prefix="soon")
    before = snapshot()

    out, _ = run_job("all", "--dry-run")

    assert "block_idle_access: would change 7 (dry run)" in out
    assert "warn_expiring_access: would change 3 (dry run)" in out
    # Created at T0, never signed in: nine months have not passed by T0 + 3 months.
    assert "mark_inactive_mailboxes: would change 0 (dry run)" in out
    assert snapshot() == before

    out, _ = run_job("all", "--no-progress")
    assert "block_idle_access: 7" in out
    assert "warn_expiring_access: 3" in out


def test_a_run_draws_a_progress_bar_of_the_rows_due(db: None) -> None:
    make_due_mailboxes(5, T0)
    _, err = run_job("block_idle_access", "--progress", "--batch-size", "2")
    frames = err.split("\r")
    assert frames[1].startswith("block_idle_access [------------------------------]   0% 0/5")
    assert "block_idle_access [##############################] 100% 5/5" in frames[-1]
    assert err.endswith("\n")


def test_without_a_terminal_there_is_no_progress_bar(db: None) -> None:
    make_due_mailboxes(2, T0)
    _, err = run_job("block_idle_access")
    assert err == ""


def test_each_run_is_counted_with_its_rows_and_time(db: None) -> None:
    make_due_mailboxes(4, T0)
    runs = sample("mailportal_job_runs_total", job_name="block_idle_access", outcome="ok")
    rows = sample("mailportal_job_rows_total", job_name="block_idle_access")
    timed = sample("mailportal_job_duration_seconds_count", job_name="block_idle_access")

    run_job("block_idle_access")
    run_job("block_idle_access")  # nothing left to do: a run all the same

    assert (
        sample("mailportal_job_runs_total", job_name="block_idle_access", outcome="ok") == runs + 2
    )
    assert sample("mailportal_job_rows_total", job_name="block_idle_access") == rows + 4
    assert (
        sample("mailportal_job_duration_seconds_count", job_name="block_idle_access") == timed + 2
    )
    last = sample("mailportal_job_last_success_timestamp_seconds", job_name="block_idle_access")
    assert last == LATER.timestamp()
