"""The five-minute rule counts programs, not networks (issue 22 §5).

A program is told apart by the device password it sends (``password_key``, in every request of
a login) and, where it sends one, its IMAP ID; only a request naming no password is counted per
client network. Through the real app, Redis and database, with the app's clock moved instead of
sleeping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import time_machine
from django.urls import reverse

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, activity, jobs, passwords
from mailaccess.mailserver.auth_policy import Command, check_program, parse_login_request
from mailaccess.models import AppPassword, PasswordActivity
from tests.conftest import needs_redis, signed_in_client
from tests.policy_client import START, Dovecot

THUNDERBIRD = '"name" "Thunderbird" "version" "115.0"'


def body(**extra: str) -> bytes:
    fields = {"login": "alice@inbox.lv", "protocol": "imap", "remote": "192.0.2.7", **extra}
    return json.dumps(fields).encode()


# --- the pure rule: which program a request is about ---------------------------------------------


def test_the_three_requests_of_a_login_name_one_program_by_its_password() -> None:
    before = parse_login_request(Command.ALLOW, body(password_key="9c4e"))
    after = parse_login_request(Command.ALLOW, body(password_key="9c4e", app_password="7"))
    report = parse_login_request(
        Command.REPORT, body(password_key="9c4e", app_password="7", success="true")
    )
    assert check_program(before) == check_program(after) == check_program(report)
    assert check_program(before) == ("pw:9c4e", True)


def test_two_passwords_behind_one_address_are_two_programs_and_so_are_two_imap_ids() -> None:
    phone = parse_login_request(Command.ALLOW, body(password_key="9c4e"))
    laptop = parse_login_request(Command.ALLOW, body(password_key="02c7"))
    assert check_program(phone) != check_program(laptop)
    # One password in two programs: their IMAP IDs tell them apart.
    shared = parse_login_request(Command.ALLOW, body(password_key="02c7", device_id=THUNDERBIRD))
    assert check_program(shared) == ("pw:02c7|Thunderbird 115.0", True)
    # Another network, the same program: still one allowance.
    travelling = parse_login_request(Command.ALLOW, body(password_key="9c4e", remote="203.0.113.5"))
    assert check_program(travelling) == check_program(phone)


def test_without_a_password_key_it_counts_per_network_and_program_name() -> None:
    plain = parse_login_request(Command.ALLOW, body())
    assert check_program(plain) == ("192.0.2.7", False)
    named = parse_login_request(Command.ALLOW, body(device_id=THUNDERBIRD))
    assert check_program(named) == ("192.0.2.7|Thunderbird 115.0", False)


# --- through the app, Redis and the database ------------------------------------------------------

pytestmark_e2e = [pytest.mark.e2e, needs_redis]


def check(
    dovecot: Dovecot,
    password: str,
    matched: AppPassword,
    *,
    device_id: str = "",
    connections: int = 1,
) -> dict[str, Any]:
    """One check of a program as Dovecot sends it with deploy/'s attributes: each connection an
    ``allow`` with the key, for a right password the passdb's id in the second ``allow`` and the
    ``report``. Returns the first refusal, or the last answer."""
    base = {
        "login": "alice@inbox.lv",
        "protocol": "imap",
        "remote": "192.0.2.10",
        "pwhash": "a1b",
        "session_id": "s",
        "device_id": device_id,
        "app_password": "",
        "password_key": passwords.policy_key(password),
    }
    reply: dict[str, Any] = {}
    for _connection in range(connections):
        reply = dovecot.post("allow", base).json()
        if reply["status"] < 0:
            dovecot.post("report", {**base, "success": False, "policy_reject": True})
            return reply
        verified = {**base, "app_password": str(matched.pk)}
        reply = dovecot.post("allow", verified).json()
        if reply["status"] < 0:
            dovecot.post("report", {**verified, "success": False, "policy_reject": True})
            return reply
        dovecot.post("report", {**verified, "success": True, "policy_reject": False})
    return reply


def two_passwords(alice: Mailbox) -> tuple[tuple[AppPassword, str], tuple[AppPassword, str]]:
    laptop_text = actions.enable_access(alice, actor=Actor.user(alice))
    assert laptop_text is not None
    laptop = AppPassword.objects.get(mailbox=alice)
    phone, phone_text = actions.create_app_password(
        alice, label="Phone", protocols={"imap"}, actor=Actor.user(alice)
    )
    return (laptop, laptop_text), (phone, phone_text)


@pytestmark_e2e[0]
@pytestmark_e2e[1]
def test_two_programs_behind_one_address_each_on_time_are_never_refused(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    (laptop, laptop_text), (phone, phone_text) = two_passwords(alice)
    # Two hours of a laptop (Thunderbird, three connections a check) and a phone (no IMAP ID)
    # behind one home router, each checking every five minutes on its own clock: the phone
    # two and a half minutes after the laptop, so never within one check of it.
    for minute in range(0, 120, 5):
        dovecot.now = START + minute * 60
        reply = check(dovecot, laptop_text, laptop, device_id=THUNDERBIRD, connections=3)
        assert reply["status"] == 0, (minute, reply)
        dovecot.now += 150
        assert check(dovecot, phone_text, phone)["status"] == 0, (minute, "phone")
    assert not PasswordActivity.objects.filter(kind="refused").exists()


@pytestmark_e2e[0]
@pytestmark_e2e[1]
def test_a_program_checking_every_minute_is_refused_from_its_second_early_check_saying_when(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    (laptop, laptop_text), (phone, phone_text) = two_passwords(alice)
    phone_id = '"name" "K-9 Mail" "version" "6.8"'
    answers = {}
    for minute in range(0, 12):
        dovecot.now = START + minute * 60  # 10:00 Riga time, then every minute
        answers[minute] = check(dovecot, phone_text, phone, device_id=phone_id)
        # The laptop behind the same router, on time, is never held up by the phone.
        if minute % 5 == 0:
            dovecot.now += 20
            assert check(dovecot, laptop_text, laptop)["status"] == 0, minute
    # On time, and one early check; the second early one and each after it are refused until
    # the program is on time again (10:05, 10:10).
    assert [minute for minute, reply in answers.items() if reply["status"] == 0] == [0, 1, 5, 10]
    assert answers[2]["status"] == -1
    assert "pārāk bieži" in answers[2]["msg"] and "reizi 5 minūtēs" in answers[2]["msg"]
    assert "vēlreiz pēc plkst. 10:05." in answers[2]["msg"]
    assert "vēlreiz pēc plkst. 10:10." in answers[6]["msg"]

    # The refusals are told in the panel against the program's password, with its name and
    # when it may check again.
    jobs.run("compact_activity")
    refused = PasswordActivity.objects.filter(kind="refused").order_by("retry_at")
    assert {row.app_password_id for row in refused} == {phone.pk}
    assert {row.client for row in refused} == {"K-9 Mail 6.8"}
    # Repeated refusals fold into one line, with the latest time to come back: 10:11's.
    assert [row.retry_at for row in refused] == [datetime.fromtimestamp(START + 900, UTC)]
    with time_machine.travel(datetime.fromtimestamp(START + 11 * 60, UTC)):
        page = signed_in_client(alice).get(reverse("mailaccess:mail_programs"))
    text = page.content.decode()
    phone_part = text[text.index(">Phone<") :]
    assert "K-9 Mail 6.8" in phone_part
    assert "Drīkst pārbaudīt vēlreiz pēc plkst. 10:15" in phone_part
    assert redis_db.xlen(activity.STREAM_KEY) == 0


@pytestmark_e2e[0]
@pytestmark_e2e[1]
def test_one_program_opening_connections_at_once_is_held_after_its_two_checks(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    # Per network it could open 60 (six checks of ten connections) before anything happened.
    (laptop, laptop_text), _phone = two_passwords(alice)
    for connection in range(20):
        assert check(dovecot, laptop_text, laptop)["status"] == 0, connection
        dovecot.now += 1
    refused = check(dovecot, laptop_text, laptop)
    assert refused["status"] == -1 and "vēlreiz pēc plkst. 10:05." in refused["msg"]
