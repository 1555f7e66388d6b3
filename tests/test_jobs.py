"""The periodic jobs: idle expiry, inactive mailboxes, the expiry warning and pruning."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from dateutil.relativedelta import relativedelta
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Mailbox, Status
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, jobs
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, Notice, NoticeKind, Protocol

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def switch_on(mailbox: Mailbox, when: datetime) -> None:
    with time_machine.travel(when, tick=False):
        assert actions.enable_access(mailbox, actor=Actor.user(mailbox))


def access_of(mailbox: Mailbox) -> ExternalAccess:
    return ExternalAccess.objects.get(mailbox=mailbox)


def run_at(when: datetime, job: str, **options: object) -> int:
    with time_machine.travel(when, tick=False):
        return jobs.run(job, **options)


def make_due_mailboxes(count: int, last_activity: datetime, prefix: str = "due") -> list[int]:
    """Mailboxes with access on, one live password each, last used at ``last_activity``."""
    mailboxes = Mailbox.objects.bulk_create(
        Mailbox(address=f"{prefix}{n}@inbox.lv", password="!") for n in range(count)
    )
    ExternalAccess.objects.bulk_create(
        ExternalAccess(
            mailbox=mailbox, enabled=True, enabled_at=last_activity, last_activity_at=last_activity
        )
        for mailbox in mailboxes
    )
    AppPassword.objects.bulk_create(
        AppPassword(mailbox=mailbox, password_hash="x", lookup_key=f"{prefix}-{mailbox.pk}")
        for mailbox in mailboxes
    )
    return [mailbox.pk for mailbox in mailboxes]


# Two months without use


def test_access_unused_for_two_months_stays_on_until_the_two_months_are_up(alice: Mailbox) -> None:
    switch_on(alice, T0)
    assert run_at(T0 + relativedelta(months=2) - MINUTE, "block_idle_access") == 0
    assert access_of(alice).enabled


def test_access_unused_for_two_months_is_blocked_when_they_are_up(alice: Mailbox) -> None:
    switch_on(alice, T0)
    assert run_at(T0 + relativedelta(months=2) + MINUTE, "block_idle_access") == 1

    access = access_of(alice)
    assert not access.enabled
    assert access.block == BlockReason.IDLE
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()
    event = AuditEvent.objects.get(mailbox=alice, action=AuditAction.ACCESS_BLOCKED)
    assert event.reason == BlockReason.IDLE
    assert event.actor_kind == "system"
    assert event.detail == {"revoked": 1}
    notice = Notice.objects.get(mailbox=alice)
    assert (notice.kind, notice.reason) == (NoticeKind.BLOCKED, BlockReason.IDLE)


def test_a_use_restarts_the_two_months(alice: Mailbox) -> None:
    switch_on(alice, T0)
    used = T0 + relativedelta(months=1)
    actions.record_use(alice.pk, Protocol.POP3, "192.0.2.7", when=used)

    assert run_at(T0 + relativedelta(months=2) + MINUTE, "block_idle_access") == 0
    assert run_at(used + relativedelta(months=2) - MINUTE, "block_idle_access") == 0
    assert access_of(alice).enabled
    assert run_at(used + relativedelta(months=2) + MINUTE, "block_idle_access") == 1
    assert access_of(alice).block == BlockReason.IDLE


def test_access_already_blocked_for_another_reason_is_left_alone(alice: Mailbox) -> None:
    switch_on(alice, T0)
    actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("smtp policy"))

    assert run_at(T0 + relativedelta(months=3), "block_idle_access") == 0
    assert access_of(alice).block == BlockReason.HOURLY_LIMIT
    assert Notice.objects.filter(mailbox=alice).count() == 1


def test_running_the_idle_job_twice_blocks_once(alice: Mailbox, bob: Mailbox) -> None:
    switch_on(alice, T0)
    switch_on(bob, T0)
    later = T0 + relativedelta(months=3)
    assert run_at(later, "block_idle_access") == 2
    assert run_at(later, "block_idle_access") == 0
    assert Notice.objects.count() == 2
    assert AuditEvent.objects.filter(action=AuditAction.ACCESS_BLOCKED).count() == 2


# The expiry warning, a week before


def test_no_warning_more_than_a_week_before_expiry(alice: Mailbox) -> None:
    switch_on(alice, T0)
    expiry = T0 + relativedelta(months=2)
    assert run_at(expiry - timedelta(days=7) - MINUTE, "warn_expiring_access") == 0
    assert not Notice.objects.exists()


def test_the_owner_is_warned_a_week_before_expiry_once(alice: Mailbox) -> None:
    switch_on(alice, T0)
    expiry = T0 + relativedelta(months=2)

    assert run_at(expiry - timedelta(days=7) + MINUTE, "warn_expiring_access") == 1
    assert run_at(expiry - timedelta(days=3), "warn_expiring_access") == 0

    notice = Notice.objects.get(mailbox=alice)
    assert notice.kind == NoticeKind.EXPIRY_WARNING
    access = access_of(alice)
    assert access.enabled
    assert access.expiry_warned_at == expiry - timedelta(days=7) + MINUTE
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.EXPIRY_WARNED).count() == 1


def test_using_access_after_the_warning_keeps_it_and_earns_a_new_warning_later(
    alice: Mailbox,
) -> None:
    switch_on(alice, T0)
    expiry = T0 + relativedelta(months=2)
    run_at(expiry - timedelta(days=6), "warn_expiring_access")
    used = expiry - timedelta(days=2)
    actions.record_use(alice.pk, Protocol.IMAP, "192.0.2.7", when=used)

    assert run_at(expiry + MINUTE, "block_idle_access") == 0
    assert run_at(used + relativedelta(months=2) - timedelta(days=6), "warn_expiring_access") == 1
    assert Notice.objects.filter(mailbox=alice, kind=NoticeKind.EXPIRY_WARNING).count() == 2


def test_expired_access_is_blocked_not_warned(alice: Mailbox) -> None:
    switch_on(alice, T0)
    assert run_at(T0 + relativedelta(months=2) + MINUTE, "warn_expiring_access") == 0


# Inactive mailboxes


def test_access_of_a_mailbox_that_became_inactive_is_blocked(alice: Mailbox, bob: Mailbox) -> None:
    switch_on(alice, T0)
    switch_on(bob, T0)
    actions.change_status(alice, Status.INACTIVE, actor=Actor.system("crm"))

    assert jobs.run("block_inactive_access") == 1
    assert access_of(alice).block == BlockReason.INACTIVE
    assert access_of(bob).enabled
    assert jobs.run("block_inactive_access") == 0


def test_a_mailbox_stays_active_until_nine_months_without_sign_in(alice: Mailbox) -> None:
    Mailbox.objects.filter(pk=alice.pk).update(last_login=T0)
    assert run_at(T0 + relativedelta(months=9) - MINUTE, "mark_inactive_mailboxes") == 0
    alice.refresh_from_db()
    assert alice.status == Status.ACTIVE


def test_a_mailbox_becomes_inactive_after_nine_months_without_sign_in(alice: Mailbox) -> None:
    Mailbox.objects.filter(pk=alice.pk).update(last_login=T0)
    switch_on(alice, T0)
    later = T0 + relativedelta(months=9) + MINUTE

    assert run_at(later, "mark_inactive_mailboxes") == 1
    alice.refresh_from_db()
    assert alice.status == Status.INACTIVE
    assert alice.status_changed_at == later
    assert AuditEvent.objects.filter(mailbox=alice, action=AuditAction.STATUS_CHANGED).exists()
    # The same `run_job all` goes on to block its access.
    assert run_at(later, "block_inactive_access") == 1
    assert access_of(alice).block == BlockReason.INACTIVE


def test_a_mailbox_never_signed_in_counts_from_its_creation(db: None) -> None:
    with time_machine.travel(T0, tick=False):
        mailbox = Mailbox.objects.create_user("never@inbox.lv", None)
    assert run_at(T0 + relativedelta(months=9) - MINUTE, "mark_inactive_mailboxes") == 0
    assert run_at(T0 + relativedelta(months=9) + MINUTE, "mark_inactive_mailboxes") == 1
    mailbox.refresh_from_db()
    assert mailbox.status == Status.INACTIVE


def test_marking_inactive_can_be_turned_off(alice: Mailbox, settings: object) -> None:
    settings.MAILBOX_INACTIVE_AFTER_MONTHS = 0  # type: ignore[attr-defined]
    Mailbox.objects.filter(pk=alice.pk).update(last_login=T0)
    assert run_at(T0 + relativedelta(years=3), "mark_inactive_mailboxes") == 0
    alice.refresh_from_db()
    assert alice.status == Status.ACTIVE


# Retention


def test_audit_rows_and_notices_past_their_retention_are_pruned(
    alice: Mailbox, settings: object
) -> None:
    settings.AUDIT_RETENTION_DAYS = 30  # type: ignore[attr-defined]
    settings.NOTICE_RETENTION_DAYS = 10  # type: ignore[attr-defined]
    switch_on(alice, T0)
    with time_machine.travel(T0 + timedelta(days=1), tick=False):
        actions.block_access(alice, BlockReason.SUPPORT, actor=Actor.system("support"))
    switch_on(alice, T0 + timedelta(days=25))

    assert run_at(T0 + timedelta(days=32), "prune_old_records", batch_size=1) == 4
    assert set(AuditEvent.objects.values_list("created_at", flat=True)) == {T0 + timedelta(days=25)}
    assert not Notice.objects.exists()


def test_the_audit_log_stays_append_only(alice: Mailbox) -> None:
    switch_on(alice, T0)
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(mailbox=alice).update(reason="")
    event = AuditEvent.objects.filter(mailbox=alice).first()
    assert event is not None
    with pytest.raises(TypeError):
        event.save()


def test_retention_zero_keeps_everything(alice: Mailbox, settings: object) -> None:
    settings.AUDIT_RETENTION_DAYS = 0  # type: ignore[attr-defined]
    switch_on(alice, T0)
    assert run_at(T0 + relativedelta(years=10), "prune_old_records") == 0
    assert AuditEvent.objects.filter(mailbox=alice).count() == 2


# At scale: batches, interruption, query counts


def test_a_job_interrupted_halfway_finishes_on_the_next_run_without_doubling(db: None) -> None:
    ids = make_due_mailboxes(5, T0)
    later = T0 + relativedelta(months=3)

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(done: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        run_at(later, "block_idle_access", batch_size=2, on_batch=stop_after_first_batch)
    assert ExternalAccess.objects.filter(enabled=False).count() == 2

    assert run_at(later, "block_idle_access", batch_size=2) == 3
    assert not ExternalAccess.objects.filter(pk__in=ids, enabled=True).exists()
    assert Notice.objects.count() == 5
    assert AuditEvent.objects.filter(action=AuditAction.ACCESS_BLOCKED).count() == 5
    assert set(Notice.objects.values_list("mailbox_id", flat=True)) == set(ids)


def test_every_mailbox_of_a_batch_gets_its_own_audit_row_notice_and_ended_passwords(
    db: None,
) -> None:
    """The batch's rows are written set-wise (common/bulk.py); each still names its mailbox,
    the system actor and the reason, and each notice its own mailbox's audit row."""
    ids = make_due_mailboxes(7, T0)
    AppPassword.objects.create(mailbox_id=ids[3], password_hash="x", lookup_key="second")
    assert run_at(T0 + relativedelta(months=3), "block_idle_access", batch_size=5) == 7

    events = {
        event.mailbox_id or 0: event
        for event in AuditEvent.objects.filter(action=AuditAction.ACCESS_BLOCKED)
    }
    assert sorted(events) == sorted(ids)
    addresses = dict(Mailbox.objects.filter(pk__in=ids).values_list("pk", "address"))
    for mailbox_id, event in events.items():
        assert event.address == addresses[mailbox_id]
        assert (event.reason, event.actor_kind, event.actor_id, event.actor_label) == (
            BlockReason.IDLE,
            "system",
            None,
            "job: idle two months",
        )
        assert event.detail == {"revoked": 2 if mailbox_id == ids[3] else 1}
        assert event.created_at == T0 + relativedelta(months=3)
    notices = Notice.objects.filter(mailbox_id__in=ids)
    assert sorted(
        (notice.mailbox_id, notice.key, notice.kind, notice.reason, notice.emailed_at)
        for notice in notices
    ) == sorted(
        (mailbox_id, f"block:{event.pk}", NoticeKind.BLOCKED, BlockReason.IDLE, None)
        for mailbox_id, event in events.items()
    )
    assert not AppPassword.objects.live().filter(mailbox_id__in=ids).exists()
    assert set(AppPassword.objects.values_list("revoked_at", flat=True)) == {
        T0 + relativedelta(months=3)
    }


# One SELECT ... FOR UPDATE, one UPDATE each for passwords and access, one INSERT each for
# audit rows and notices, and the savepoint around them (the test runs inside a transaction).
# On SQLite the password counts are one more SELECT; on PostgreSQL the passwords' UPDATE ...
# RETURNING counts them, the passdb table Dovecot reads is rewritten for the batch (one DELETE
# and one INSERT ... SELECT, mailaccess/passdb.py) and a SET LOCAL lets the page's COMMIT not
# wait for the disk. The run ends with a page that comes back empty.
QUERIES_PER_BATCH = 10 if connection.vendor == "postgresql" else 8
QUERIES_FOR_THE_EMPTY_PAGE = 3


@pytest.mark.parametrize("rows", [1, 10, 60])
def test_blocking_a_batch_takes_the_same_queries_whatever_its_size(
    db: None, rows: int, django_assert_num_queries: object
) -> None:
    make_due_mailboxes(rows, T0)
    with (
        time_machine.travel(T0 + relativedelta(months=3), tick=False),
        django_assert_num_queries(QUERIES_PER_BATCH + QUERIES_FOR_THE_EMPTY_PAGE),  # type: ignore[operator]
    ):
        assert jobs.block_idle_access(batch_size=rows) == rows


def test_every_batch_of_a_run_takes_the_same_queries(db: None) -> None:
    make_due_mailboxes(10, T0)
    per_batch: list[int] = []
    with CaptureQueriesContext(connection) as queries:

        def count(done: int) -> None:
            per_batch.append(len(queries) - sum(per_batch))

        assert (
            run_at(T0 + relativedelta(months=3), "block_idle_access", batch_size=3, on_batch=count)
            == 10
        )
    assert per_batch == [QUERIES_PER_BATCH] * 4


# What runs after the commit counts too: the auth-policy cache hook reads the page's addresses
# in one query (its Redis pipeline is no SQL). The notice hook is swapped for a recorder,
# because in production it only queues a task per 100 notices for a worker, while in tests
# Celery is eager and would send every e-mail here. A page of 1,000 runs on PostgreSQL only:
# SQLite caps the parameters of one statement at 999, so Django splits its INSERTs there.
QUERIES_AFTER_COMMIT = 1


@pytest.mark.parametrize("rows", [1, pytest.param(1000, marks=pytest.mark.postgres)])
def test_a_page_of_a_thousand_blocks_takes_the_queries_of_a_page_of_one_hooks_included(
    db: None,
    rows: int,
    monkeypatch: pytest.MonkeyPatch,
    django_assert_num_queries: object,
    django_capture_on_commit_callbacks: object,
) -> None:
    ids = make_due_mailboxes(rows, T0)
    queued: list[list[int]] = []
    monkeypatch.setattr(actions, "notice_created_hooks", [queued.append])
    with (
        time_machine.travel(T0 + relativedelta(months=3), tick=False),
        django_assert_num_queries(  # type: ignore[operator]
            QUERIES_PER_BATCH + QUERIES_FOR_THE_EMPTY_PAGE + QUERIES_AFTER_COMMIT
        ),
        django_capture_on_commit_callbacks(execute=True),  # type: ignore[operator]
    ):
        assert jobs.block_idle_access(batch_size=1000) == rows
    assert len(queued) == 1
    assert (
        sorted(Notice.objects.filter(pk__in=queued[0]).values_list("mailbox_id", flat=True)) == ids
    )


def test_the_run_job_command_runs_a_job_once(alice: Mailbox) -> None:
    from io import StringIO

    switch_on(alice, T0)
    out = StringIO()
    with time_machine.travel(T0 + relativedelta(months=3), tick=False):
        call_command("run_job", "all", stdout=out)
    assert "block_idle_access: 1" in out.getvalue()
    assert access_of(alice).block == BlockReason.IDLE


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_page_commits_without_waiting_for_the_disk_and_only_the_page() -> None:
    """The job's pages commit asynchronously (actions._commit_without_waiting_for_the_disk):
    a SET LOCAL, so the connection, which a worker's next task reuses, is as before."""
    make_due_mailboxes(3, T0)
    settings_seen: list[str] = []

    def seen(done: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            settings_seen.append(cursor.fetchone()[0])

    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        before = cursor.fetchone()[0]
    with CaptureQueriesContext(connection) as queries:
        assert (
            run_at(T0 + relativedelta(months=3), "block_idle_access", batch_size=2, on_batch=seen)
            == 3
        )
    assert [q["sql"] for q in queries].count("SET LOCAL synchronous_commit TO OFF") == 2
    assert settings_seen == [before, before]
