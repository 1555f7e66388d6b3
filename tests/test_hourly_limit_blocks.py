"""The access action behind the SMTP policy's hourly block: the third in a day is a
compromised mailbox. Through ``actions``, as the daemon calls it, with its audit rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import override_settings

from accounts.models import Mailbox
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions
from mailaccess.models import BlockReason, ExternalAccess

pytestmark = pytest.mark.django_db

MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
DAEMON = Actor.system("smtp-policy-daemon")


def block_and_switch_on(mailbox: Mailbox, sent: int = 16) -> BlockReason:
    reason = actions.block_for_hourly_limit(mailbox, sent_last_hour=sent, actor=DAEMON)
    if reason == BlockReason.HOURLY_LIMIT:
        actions.enable_access(mailbox, actor=Actor.user(mailbox))
    return reason


def blocks_of(mailbox: Mailbox) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(mailbox=mailbox, action=AuditAction.ACCESS_BLOCKED).order_by("pk")
    )


def test_the_third_hourly_block_within_a_day_blocks_as_compromised(alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    with time_machine.travel(MONDAY, tick=False) as traveller:
        assert block_and_switch_on(alice, 16) == BlockReason.HOURLY_LIMIT
        traveller.shift(3600)
        assert block_and_switch_on(alice, 17) == BlockReason.HOURLY_LIMIT
        traveller.shift(3600)
        assert block_and_switch_on(alice, 18) == BlockReason.COMPROMISED

    access = ExternalAccess.objects.get(mailbox=alice)
    assert not access.enabled
    assert access.block_reason == BlockReason.COMPROMISED
    assert access.requires_password_change
    audit = blocks_of(alice)
    assert [event.reason for event in audit] == [
        BlockReason.HOURLY_LIMIT,
        BlockReason.HOURLY_LIMIT,
        BlockReason.COMPROMISED,
    ]
    assert [event.detail["hourly_blocks_24h"] for event in audit] == [1, 2, 3]
    assert [event.detail["sent_last_hour"] for event in audit] == [16, 17, 18]
    assert {event.actor_label for event in audit} == {"smtp-policy-daemon"}


def test_hourly_blocks_older_than_a_day_do_not_count(alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    with time_machine.travel(MONDAY, tick=False) as traveller:
        block_and_switch_on(alice)
        block_and_switch_on(alice)
        traveller.shift(timedelta(hours=24, seconds=1))
        assert block_and_switch_on(alice) == BlockReason.HOURLY_LIMIT
    assert blocks_of(alice)[-1].detail["hourly_blocks_24h"] == 1


@override_settings(SMTP_POLICY_HOURLY_BLOCKS_BEFORE_COMPROMISED=2)
def test_the_number_of_blocks_is_a_setting(alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    assert block_and_switch_on(alice) == BlockReason.HOURLY_LIMIT
    assert block_and_switch_on(alice) == BlockReason.COMPROMISED
