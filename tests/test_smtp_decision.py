"""The SMTP policy's decision on its own: no Redis, no database, no daemon."""

from __future__ import annotations

import pytest

from mailaccess.mailserver.postfix_policy import parse_postfix_request
from mailaccess.mailserver.smtp_decision import (
    DUNNO,
    UNKNOWN_PLAN_LIMITS,
    Check,
    PlanLimits,
    Sender,
    bounce_flood,
    deferred_reply,
    fallback_action,
    is_bounce_sender,
    over_limit,
    refusal,
    refusal_reason,
    what_to_check,
)
from mailaccess.models import BlockReason
from mailaccess.sending_limits import Limits

NOW = 1_800_000_000_000
FREE = Limits(5, 15)


def sender(language: str = "en", refused: str = "") -> Sender:
    return Sender(1, "alice@inbox.lv", "free", None, language, b"", b"", refused=refused)


def request(**attributes: str) -> bytes:
    lines = {"request": "smtpd_access_policy", **attributes}
    return "\n".join(f"{name}={value}" for name, value in lines.items()).encode()


@pytest.mark.parametrize(
    ("state", "expected"),
    [("DATA", Check.DATA), ("END-OF-MESSAGE", Check.END_OF_MESSAGE), ("RCPT", None)],
)
def test_a_signed_in_sender_is_checked_at_data_and_counted_at_the_end(
    state: str, expected: Check | None
) -> None:
    asked = what_to_check(
        parse_postfix_request(request(protocol_state=state, sasl_username=" Alice@Inbox.LV"))
    )
    assert asked == (None if expected is None else (expected, "alice@inbox.lv"))


def test_only_a_bounce_to_a_tagged_sender_after_data_is_counted() -> None:
    bounce = {"protocol_state": "END-OF-MESSAGE", "sender": "", "recipient": "prvs=x@inbox.lv"}
    assert what_to_check(parse_postfix_request(request(**bounce))) == (
        Check.BOUNCE,
        "prvs=x@inbox.lv",
    )
    at_rcpt = {**bounce, "protocol_state": "RCPT"}
    plain = {**bounce, "recipient": "alice@inbox.lv"}
    not_a_bounce = {**bounce, "sender": "mallory@example.com"}
    on_submission = {**bounce, "policy_context": "submission"}
    for attributes in (at_rcpt, plain, not_a_bounce, on_submission):
        assert what_to_check(parse_postfix_request(request(**attributes))) is None
    other_request = parse_postfix_request(b"request=junk\nprotocol_state=DATA\nsasl_username=a")
    assert what_to_check(other_request) is None


def test_bounce_senders() -> None:
    assert is_bounce_sender("")
    assert is_bounce_sender("<>")
    assert is_bounce_sender("mailer-daemon@mx.example.com")
    assert not is_bounce_sender("alice@inbox.lv")


def test_a_blocked_or_switched_off_sender_is_refused_with_its_reason() -> None:
    assert refusal_reason(True, "") == ""
    assert refusal_reason(False, "") == "access_off"
    assert refusal_reason(False, BlockReason.HOURLY_LIMIT) == BlockReason.HOURLY_LIMIT
    assert refusal("access_off", "en").startswith("REJECT ")
    assert refusal(BlockReason.COMPROMISED, "en") != refusal("access_off", "en")


def test_a_sender_in_the_mail_plus_waiting_time_has_the_free_plan() -> None:
    waiting = Sender(1, "a@inbox.lv", "plus", NOW + 1, "lv", b"", b"")
    assert waiting.sending_plan(NOW) == "free"
    assert waiting.sending_plan(NOW + 1) == "plus"


def test_plan_limits_pass_the_hour_count_below_the_smallest_limit() -> None:
    assert PlanLimits.of(FREE).within_below == 5
    assert PlanLimits.of(Limits(None, 15)).within_below == 15
    assert PlanLimits.of(Limits(None, None)).within_below == 0
    assert UNKNOWN_PLAN_LIMITS.limits == FREE


def test_over_the_minute_limit_defers_and_remembers_until_when() -> None:
    refused = over_limit(sender(), FREE, [b"minute", 2500], NOW)
    assert refused.action.startswith("DEFER_IF_PERMIT Sending limit of 5 messages a minute")
    assert "3 seconds" in refused.action
    assert refused.deferred_until == NOW + 2500
    assert refused.block_sent_last_hour is None


def test_over_the_hour_limit_defers_without_remembering() -> None:
    refused = over_limit(sender(), FREE, [b"hour", 61_000], NOW)
    assert "15 messages an hour" in refused.action
    assert "2 minutes" in refused.action
    assert refused.deferred_until is None
    assert refused.block_sent_last_hour is None


def test_the_first_message_over_the_hourly_limit_rejects_and_asks_for_a_block() -> None:
    refused = over_limit(sender(), FREE, [b"hour_block", 0, 16], NOW)
    assert refused.action.startswith("REJECT ")
    assert refused.block_sent_last_hour == 16


def test_a_remembered_deferral_is_answered_until_it_ends() -> None:
    assert "1 second" in (deferred_reply(sender(), FREE, NOW + 400, NOW) or "")
    assert deferred_reply(sender(), FREE, NOW, NOW) is None
    assert deferred_reply(sender(), Limits(None, 15), NOW + 400, NOW) is None


def test_a_bounce_flood_names_the_bounces() -> None:
    assert bounce_flood([b"block", 30]) == 30
    assert bounce_flood([b"counted", 3]) is None


def test_without_redis_mail_goes_through_unless_told_to_defer() -> None:
    assert fallback_action("dunno") == DUNNO
    assert fallback_action("defer").startswith("DEFER_IF_PERMIT ")
