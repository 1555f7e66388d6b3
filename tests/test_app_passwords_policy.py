"""The auth policy and per-device passwords: which password a request is about, its scopes,
and each password's last use.

What Dovecot 2.3.19 sends (checked against the real server, see deploy/dovecot/dovecot.conf):
``password_key`` (16 bits of the sent password's SHA-256) in every request, and
``app_password`` (the passdb's id of the password that matched) only in the ``allow`` after a
right password and in its ``report``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, passwords
from mailaccess.mailserver import auth_policy_store
from mailaccess.mailserver import state as state_cache
from mailaccess.mailserver.auth_policy import (
    Command,
    Counters,
    LoginLimits,
    MailboxState,
    Outcome,
    PasswordScope,
    answer,
    client_name,
    decide_allow,
    parse_login_request,
)
from mailaccess.models import AppPassword, ExternalAccess, Protocol
from tests.conftest import needs_redis
from tests.policy_client import START, Dovecot

LIMITS = LoginLimits()
NOW = 1_800_000_000.0
PHONE = PasswordScope(id=7, key="9c4e", protocols=frozenset({Protocol.IMAP}))
LAPTOP = PasswordScope(id=8, key="02c7", protocols=frozenset(Protocol))
ON = MailboxState(1, True, "", "free", "lv", passwords=(PHONE, LAPTOP))


def body(protocol: str, **extra: str) -> bytes:
    fields = {"login": "alice@inbox.lv", "protocol": protocol, "remote": "192.0.2.7", **extra}
    return ("{" + ",".join(f'"{key}":"{value}"' for key, value in fields.items()) + "}").encode()


# --- the pure rules ------------------------------------------------------------------------------


def test_it_reads_the_password_attributes_and_the_programs_name() -> None:
    device_id = r"\"name\" \"Thunderbird\" \"version\" \"115.0\""
    parsed = parse_login_request(
        Command.REPORT,
        body("imap", app_password="8", password_key="02C7", device_id=device_id),
    )

    assert parsed.app_password_id == 8
    assert parsed.password_key == "02c7"
    assert parsed.client == "Thunderbird 115.0"


@pytest.mark.parametrize(
    "device_id, name",
    [
        ('"name" "iPhone Mail" "os" "iOS"', "iPhone Mail"),
        ('"NAME" "K-9 \\"Mail\\"" "version" NIL', 'K-9 "Mail"'),
        ('"vendor" "Acme"', ""),
        ("NIL", ""),
        ("", ""),
        ('"name" "evil\u0007\u2028name"', "evilname"),
    ],
)
def test_the_programs_name_comes_from_its_imap_id_and_is_one_printable_line(
    device_id: str, name: str
) -> None:
    assert client_name(device_id) == name


@pytest.mark.parametrize("value", ["", "abc", "-1", "1.5", "99999999999999999999"])
def test_an_odd_password_id_is_ignored_not_an_error(value: str) -> None:
    assert (
        parse_login_request(Command.ALLOW, body("imap", app_password=value)).app_password_id is None
    )


def test_a_password_scoped_to_imap_is_refused_for_smtp_before_the_check_saying_so() -> None:
    request = parse_login_request(Command.ALLOW, body("smtp", password_key="9c4e"))

    verdict = decide_allow(request, ON, Counters(check_tokens=6), LIMITS, NOW)

    assert verdict.outcome == Outcome.WRONG_PROTOCOL
    reply = answer(verdict, "en", LIMITS)
    assert reply == {
        "status": -1,
        "msg": "This password is not for SMTP, only for IMAP. Add a password that allows SMTP "
        "in Settings.",
    }
    with translation.override("lv"):
        latvian = answer(verdict, "lv", LIMITS)["msg"]
    assert "SMTP" in latvian and "IMAP" in latvian and latvian != reply["msg"]


def test_a_password_is_let_in_for_the_protocols_it_allows() -> None:
    for protocol, key in [("imap", "9c4e"), ("smtp", "02c7"), ("pop3", "02c7")]:
        request = parse_login_request(Command.ALLOW, body(protocol, password_key=key))
        verdict = decide_allow(request, ON, Counters(check_tokens=6), LIMITS, NOW)
        assert verdict.outcome == Outcome.ALLOW, (protocol, key)


def test_after_the_check_the_passdbs_id_decides_not_the_key() -> None:
    by_id = parse_login_request(Command.ALLOW, body("pop3", app_password="7", password_key="02c7"))
    other = parse_login_request(Command.ALLOW, body("pop3", app_password="8", password_key="9c4e"))

    assert decide_allow(by_id, ON, Counters(check_tokens=6), LIMITS, NOW).status == -1
    assert decide_allow(other, ON, Counters(check_tokens=6), LIMITS, NOW).status == 0


def test_an_unknown_key_is_left_to_the_passdb() -> None:
    request = parse_login_request(Command.ALLOW, body("smtp", password_key="ffff"))
    assert decide_allow(request, ON, Counters(check_tokens=6), LIMITS, NOW).status == 0


def test_access_off_is_told_before_any_scope_once_the_password_was_verified() -> None:
    off = MailboxState(1, False, "", "free", "en", passwords=(PHONE,))
    before = parse_login_request(Command.ALLOW, body("smtp", password_key="9c4e"))
    after = parse_login_request(Command.ALLOW, body("smtp", app_password="11"))
    assert decide_allow(before, off, Counters(), LIMITS, NOW).outcome == Outcome.UNKNOWN
    assert decide_allow(after, off, Counters(), LIMITS, NOW).outcome == Outcome.ACCESS_OFF


def test_the_cached_state_keeps_each_passwords_scope() -> None:
    assert auth_policy_store.decode_state(auth_policy_store.encode_state(ON)) == ON


def test_the_state_loads_the_live_passwords_with_their_key_prefix(
    transactional_db: None, alice: Mailbox
) -> None:
    first = actions.enable_access(alice, actor=Actor.user(alice))
    assert first is not None
    phone, text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
    )
    revoked, _text = actions.create_app_password(
        alice, label="old", protocols={"smtp"}, actor=Actor.user(alice)
    )
    actions.revoke_app_password(alice, revoked.pk, actor=Actor.user(alice))

    loaded = state_cache.load("Alice@Inbox.lv")

    assert loaded is not None
    assert [(p.key, p.protocols) for p in loaded.passwords] == [
        (passwords.policy_key(first), frozenset(Protocol)),
        (passwords.policy_key(text), frozenset({Protocol.IMAP})),
    ]
    assert loaded.passwords[1].id == phone.pk


# --- the endpoint with Redis and the database ----------------------------------------------------

with_redis = [pytest.mark.e2e, needs_redis]


def login(
    dovecot: Dovecot, protocol: str, password: str, app_password: AppPassword | None, **extra: Any
) -> dict[str, Any]:
    """One login as Dovecot sends it with deploy/'s attributes: before the check only the key;
    for a right password, the passdb's id in the second ``allow`` and the ``report``."""
    base = {
        "login": "alice@inbox.lv",
        "protocol": protocol,
        "remote": "192.0.2.10",
        "pwhash": "a1b",
        "session_id": "s",
        "device_id": "",
        "app_password": "",
        "password_key": passwords.policy_key(password),
        **extra,
    }
    first: dict[str, Any] = dovecot.post("allow", base).json()
    if first["status"] < 0 or app_password is None:
        dovecot.post("report", {**base, "success": False, "policy_reject": first["status"] < 0})
        return first
    matched = {**base, "app_password": str(app_password.pk)}
    dovecot.post("allow", matched)
    dovecot.post("report", {**matched, "success": True, "policy_reject": False})
    return first


@with_redis[0]
@with_redis[1]
def test_each_login_is_recorded_against_the_password_that_matched(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    first_text = actions.enable_access(alice, actor=Actor.user(alice))
    assert first_text is not None
    [first] = AppPassword.objects.filter(mailbox=alice)
    phone, phone_text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
    )
    device_id = '"name" "iOS Mail" "version" "17.1"'

    assert login(dovecot, "imap", phone_text, phone, device_id=device_id)["status"] == 0
    dovecot.now += 5
    # The same network, a second later: another device, so recorded too.
    assert login(dovecot, "smtp", first_text, first, remote="192.0.2.10")["status"] == 0
    assert dovecot.compact_activity() == 2

    phone.refresh_from_db()
    first.refresh_from_db()
    assert phone.last_used_at is not None and phone.last_used_at.timestamp() == START
    assert (phone.last_used_protocol, phone.last_used_ip) == ("imap", "192.0.2.10")
    assert phone.last_used_client == "iOS Mail 17.1"
    assert first.last_used_at is not None and first.last_used_at.timestamp() == START + 5
    assert (first.last_used_protocol, first.last_used_client) == ("smtp", "")
    access = ExternalAccess.objects.get(mailbox=alice)
    assert access.imap_last_used_at is not None and access.smtp_last_used_at is not None


@with_redis[0]
@with_redis[1]
def test_a_password_scoped_to_imap_is_refused_smtp_auth_with_the_reason(
    dovecot: Dovecot, bob: Mailbox
) -> None:
    actions.enable_access(bob, actor=Actor.user(bob))
    phone, phone_text = actions.create_app_password(
        bob, label="iPhone", protocols={"imap"}, actor=Actor.user(bob)
    )
    bob_login = {"login": "bob@mail.ee"}

    reply = login(dovecot, "smtp", phone_text, None, **bob_login)

    assert reply["status"] == -1
    assert reply["msg"].startswith("This password is not for SMTP, only for IMAP.")
    assert login(dovecot, "imap", phone_text, phone, **bob_login)["status"] == 0
    dovecot.compact_activity()
    phone.refresh_from_db()
    assert phone.last_used_protocol == "imap"


@with_redis[0]
@with_redis[1]
def test_a_new_language_reaches_the_mail_servers_messages_at_once(
    dovecot: Dovecot, bob: Mailbox
) -> None:
    """The policy caches a mailbox's state for an hour; the language its refusals are written
    in is part of it, and switching language in the page header must not wait for that."""
    actions.enable_access(bob, actor=Actor.user(bob))
    _phone, phone_text = actions.create_app_password(
        bob, label="iPhone", protocols={"imap"}, actor=Actor.user(bob)
    )
    bob_login = {"login": "bob@mail.ee"}
    english = login(dovecot, "smtp", phone_text, None, **bob_login)["msg"]
    assert english.startswith("This password is not for SMTP")

    client = Client()
    client.force_login(bob)
    client.post(reverse("set_language"), {"language": "lv", "next": "/"})
    bob.refresh_from_db()
    assert bob.language == "lv"

    latvian = login(dovecot, "smtp", phone_text, None, **bob_login)["msg"]
    with translation.override("lv"):
        expected = gettext(
            "This password is not for %(protocol)s, only for %(allowed)s. Add a password "
            "that allows %(protocol)s in Settings."
        ) % {"protocol": "SMTP", "allowed": "IMAP"}
    assert latvian == expected != english


@with_redis[0]
@with_redis[1]
def test_a_new_or_revoked_password_is_known_to_the_policy_at_once(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    # The state is cached now, before the phone's password exists.
    assert dovecot.allow("alice@inbox.lv")["status"] == 0
    phone, phone_text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
    )

    assert login(dovecot, "smtp", phone_text, None)["status"] == -1

    actions.revoke_app_password(alice, phone.pk, actor=Actor.user(alice))
    # Revoked: the passdb fails it like any wrong password; the policy no longer names it.
    assert login(dovecot, "smtp", phone_text, None)["status"] == 0
