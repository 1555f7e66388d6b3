"""Sending limits on the web side: the Mail+ lifting date, the lifting job, the panel."""

from datetime import UTC, date, datetime

import pytest
import redis
import time_machine
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.models import Mailbox, Plan
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, sending_limits
from mailaccess.mailserver import sending_counters
from mailaccess.models import BlockReason
from mailaccess.sending_limits import RIGA, end_of_working_days

URL = reverse("mailaccess:mail_programs")
BILLING = Actor.system("billing")


def riga(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=RIGA)


def blocked_for_misuse(mailbox: Mailbox, reason: BlockReason = BlockReason.HOURLY_LIMIT) -> None:
    """The mailbox was blocked for sending too much (now, by the clock in force), then freed."""
    actions.block_access(mailbox, reason, actor=Actor.system("smtp policy"))
    actions.unblock_access(mailbox, actor=Actor.system("test"))


@pytest.mark.parametrize(
    ("upgraded", "lifted_by"),
    [
        # Monday: Tuesday and Wednesday are the two working days.
        (riga(2026, 11, 9, 15, 0), riga(2026, 11, 12)),
        # Friday: the weekend does not count.
        (riga(2026, 11, 13, 9, 0), riga(2026, 11, 18)),
        # Tuesday 17 November: the 18th is Proclamation Day, so Thursday and Friday.
        (riga(2026, 11, 17, 12, 0), riga(2026, 11, 21)),
        # Wednesday 23 December: 24-26 December are holidays, then a weekend.
        (riga(2026, 12, 23, 12, 0), riga(2026, 12, 30)),
        # 30 December: New Year's Eve and Day are holidays, 2-3 January a weekend.
        (riga(2026, 12, 30, 23, 59), riga(2027, 1, 6)),
    ],
)
def test_lifting_takes_at_most_two_latvian_working_days(
    upgraded: datetime, lifted_by: datetime
) -> None:
    assert end_of_working_days(upgraded, 2) == lifted_by


def test_the_working_days_count_in_riga_time() -> None:
    # 22:30 UTC on Friday is already Saturday in Riga.
    friday_night = datetime(2026, 11, 13, 22, 30, tzinfo=UTC)
    assert end_of_working_days(friday_night, 2) == riga(2026, 11, 18)


def test_upgrading_a_mailbox_in_good_standing_lifts_the_limits_at_once(alice: Mailbox) -> None:
    # An idle block long ago and one for unused access this week say nothing about misuse.
    with time_machine.travel(riga(2026, 9, 1, 12, 0)):
        blocked_for_misuse(alice)
    with time_machine.travel(riga(2026, 11, 14, 12, 0)):
        blocked_for_misuse(alice, BlockReason.IDLE)
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
        alice.refresh_from_db()
        assert alice.sending_limits_lift_at is None
        assert alice.sending_plan(riga(2026, 11, 17, 12, 0)) == Plan.PLUS
    event = AuditEvent.objects.get(mailbox=alice, action=AuditAction.PLAN_CHANGED)
    assert "sending_limits_lift_at" not in event.detail


@pytest.mark.parametrize(
    "reason",
    [
        BlockReason.HOURLY_LIMIT,
        BlockReason.COMPROMISED,
        BlockReason.FAULTY_PROGRAM,
        BlockReason.SUPPORT,
    ],
)
def test_a_misuse_block_in_the_last_30_days_keeps_the_two_working_days(
    alice: Mailbox, reason: BlockReason
) -> None:
    # A spammer, or whoever stole the password, must not buy their way past the limits.
    with time_machine.travel(riga(2026, 10, 19, 12, 0)):
        blocked_for_misuse(alice, reason)
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
        alice.refresh_from_db()
        assert alice.sending_limits_lift_at == riga(2026, 11, 21)


def test_a_stolen_password_not_yet_changed_keeps_the_wait_however_old(alice: Mailbox) -> None:
    with time_machine.travel(riga(2026, 6, 1, 12, 0)):
        actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("smtp policy"))
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
        alice.refresh_from_db()
        assert alice.sending_limits_lift_at == riga(2026, 11, 21)


def test_support_lifts_pending_limits_sooner_and_it_is_audited(alice: Mailbox) -> None:
    support = Actor.system("support desk")
    with time_machine.travel(riga(2026, 11, 10, 12, 0)):
        blocked_for_misuse(alice)
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
        assert actions.lift_sending_limits(alice, actor=support)
        assert not actions.lift_sending_limits(alice, actor=support)
        alice.refresh_from_db()
        assert alice.sending_limits_lift_at is None
        assert alice.sending_plan(riga(2026, 11, 17, 12, 0)) == Plan.PLUS
    event = AuditEvent.objects.get(mailbox=alice, action=AuditAction.SENDING_LIMITS_LIFTED)
    assert datetime.fromisoformat(event.detail["was_due"]) == riga(2026, 11, 21)


def test_upgrading_a_recently_blocked_mailbox_sets_the_lifting_date(alice: Mailbox) -> None:
    with time_machine.travel(riga(2026, 11, 16, 12, 0)):
        blocked_for_misuse(alice)
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
        alice.refresh_from_db()
        assert alice.sending_limits_lift_at == riga(2026, 11, 21)
        assert alice.sending_plan(riga(2026, 11, 20, 23, 59)) == Plan.FREE
        assert alice.sending_plan(riga(2026, 11, 21)) == Plan.PLUS
    event = AuditEvent.objects.get(mailbox=alice, action=AuditAction.PLAN_CHANGED)
    assert event.detail["sending_limits_lift_at"].startswith("2026-11-21")


def test_going_back_to_the_free_plan_applies_its_limits_at_once(alice: Mailbox) -> None:
    actions.change_plan(alice, Plan.PLUS, actor=BILLING)
    actions.change_plan(alice, Plan.FREE, actor=BILLING)
    alice.refresh_from_db()
    assert alice.sending_limits_lift_at is None
    assert alice.sending_plan(datetime.now(UTC)) == Plan.FREE


def test_the_job_lifts_the_limits_whose_date_has_come(alice: Mailbox, bob: Mailbox) -> None:
    with time_machine.travel(riga(2026, 11, 9, 12, 0)):
        blocked_for_misuse(alice)
        blocked_for_misuse(bob)
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
    with time_machine.travel(riga(2026, 11, 10, 12, 0)):
        actions.change_plan(bob, Plan.FREE, actor=BILLING)
        actions.change_plan(bob, Plan.PLUS, actor=BILLING)
    with time_machine.travel(riga(2026, 11, 12, 0, 30)):
        assert sending_limits.lift_due_sending_limits() == 1
        assert sending_limits.lift_due_sending_limits() == 0
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert alice.sending_limits_lift_at is None
    assert bob.sending_limits_lift_at == riga(2026, 11, 13)


@pytest.mark.e2e
def test_the_panel_shows_a_free_users_messages_against_the_limits(
    alice_client: Client, alice: Mailbox, test_redis: str
) -> None:
    script = redis.Redis.from_url(test_redis).register_script(sending_counters.SEND_SCRIPT)
    now = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
    for seconds_ago in (3000, 1200, 30, 10):
        at = int(now.timestamp() * 1000) - seconds_ago * 1000
        script(
            keys=sending_counters.send_keys(alice.address),
            args=sending_counters.send_args(count_it=True, now_ms=at, per_minute=5, per_hour=15),
        )
    with time_machine.travel(now, tick=False):
        page = alice_client.get(URL).content.decode()
    assert "Pēdējā minūtē nosūtītas 2 vēstules, atļautas ne vairāk kā 5." in page
    assert "Pēdējā stundā nosūtītas 4 vēstules, atļautas ne vairāk kā 15." in page


@pytest.mark.e2e
def test_the_panel_uses_latvian_plural_forms(
    alice_client: Client, alice: Mailbox, test_redis: str
) -> None:
    script = redis.Redis.from_url(test_redis).register_script(sending_counters.SEND_SCRIPT)
    now = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
    script(
        keys=sending_counters.send_keys(alice.address),
        args=sending_counters.send_args(
            count_it=True, now_ms=int(now.timestamp() * 1000) - 120_000, per_minute=5, per_hour=15
        ),
    )
    with time_machine.travel(now, tick=False):
        page = alice_client.get(URL).content.decode()
    assert "Pēdējā minūtē nosūtīts 0 vēstuļu" in page
    assert "Pēdējā stundā nosūtīta 1 vēstule" in page


def test_the_panel_still_works_when_redis_is_down(
    alice_client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from mailaccess import counters

    settings.MAILSERVER_REDIS_URL = "redis://127.0.0.1:21999/0"
    counters.sync_client.cache_clear()
    try:
        response = alice_client.get(URL)
    finally:
        counters.sync_client.cache_clear()
    assert response.status_code == 200
    assert "Nosūtīto vēstuļu skaitu šobrīd nevar parādīt." in response.content.decode()


def test_the_panel_shows_when_mail_plus_limits_will_be_lifted(
    bob_client: Client, bob: Mailbox, settings: Settings
) -> None:
    settings.MAILSERVER_REDIS_URL = "redis://127.0.0.1:21999/0"
    with time_machine.travel(riga(2026, 11, 17, 12, 0)):
        blocked_for_misuse(bob)
        actions.change_plan(bob, Plan.FREE, actor=BILLING)
        actions.change_plan(bob, Plan.PLUS, actor=BILLING)
        page = bob_client.get(URL).content.decode()
    assert "Lifted at the latest: 20 November 2026" in page
    # Which rule applies, and that support can shorten it.
    assert "was blocked for misuse in the last 30 days" in page
    assert "Customer support can lift them sooner." in page
    assert sending_limits.lift_day(riga(2026, 11, 21)) == date(2026, 11, 20)


def test_mail_plus_users_see_that_no_limit_applies(bob_client: Client) -> None:
    page = bob_client.get(URL).content.decode()
    assert "Inbox Mail+ has no limit on messages sent through mail programs." in page
    assert 'class="usage"' not in page


def test_a_compromised_mailbox_must_change_the_web_password_first(
    alice_client: Client, alice: Mailbox
) -> None:
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    page = alice_client.get(URL).content.decode()
    assert "Vispirms nomainiet web paroli." in page
    assert 'disabled aria-describedby="block-cure"' in page
    assert f'href="{reverse("accounts:change_password")}"' in page
    with pytest.raises(actions.AccessError):
        actions.enable_access(alice, actor=Actor.user(alice))


def test_the_hourly_beat_job_lifts_due_limits(alice: Mailbox) -> None:
    from django.conf import settings

    from mailaccess import tasks

    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "mailaccess.tasks.lift_due_sending_limits" in schedule
    with time_machine.travel(riga(2026, 11, 9, 12, 0)):
        blocked_for_misuse(alice)
        actions.change_plan(alice, Plan.PLUS, actor=BILLING)
    with time_machine.travel(riga(2026, 11, 12, 0, 30)):
        assert tasks.lift_due_sending_limits.apply().get() == 1
    alice.refresh_from_db()
    assert alice.sending_limits_lift_at is None
