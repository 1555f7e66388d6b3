"""Fences (issue 22, item 3): a device password may be limited to networks the owner lists.

The pure rules (parsing what the owner typed; the decision, made only once the password was
verified), the panel's form, and the auth policy served for real with Redis and the database.
The end-to-end test with real Dovecot is in ``test_fences_e2e.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import translation
from django.utils.html import escape
from django.utils.translation import gettext

from accounts.models import Mailbox
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, fences, passwords
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
    decide_allow,
    parse_login_request,
)
from mailaccess.models import AppPassword, Protocol
from tests.policy_client import Dovecot
from tests.test_app_passwords import PANEL, add, live, shown_password, switch_on
from tests.test_app_passwords_policy import login, with_redis

LIMITS = LoginLimits()
NOW = 1_800_000_000.0
ALL = frozenset(Protocol)


def fenced(*networks: str) -> MailboxState:
    phone = PasswordScope(id=7, key="9c4e", protocols=ALL, networks=fences.parse_networks(networks))
    return MailboxState(1, True, "", "free", "lv", passwords=(phone,))


def request(remote: str, *, verified: bool = True, protocol: str = "imap") -> Any:
    body = {"login": "a@inbox.lv", "protocol": protocol, "remote": remote, "password_key": "9c4e"}
    if verified:
        body["app_password"] = "7"
    return parse_login_request(Command.ALLOW, json.dumps(body).encode())


def outcome(state: MailboxState, remote: str, **kwargs: Any) -> Outcome:
    return decide_allow(
        request(remote, **kwargs), state, Counters(check_tokens=2), LIMITS, NOW
    ).outcome


# --- parsing what the owner typed ------------------------------------------------------------


def test_addresses_and_ranges_are_normalized_without_repeats() -> None:
    typed = (
        "192.0.2.10, 198.51.100.7/24;\n2001:db8:1:2::5/64 2001:DB8::1  192.0.2.10 "
        "::ffff:203.0.113.9"
    )
    assert fences.parse_networks(typed) == (
        "192.0.2.10/32",
        "198.51.100.0/24",
        "2001:db8:1:2::/64",
        "2001:db8::1/128",
        "203.0.113.9/32",
    )
    assert fences.parse_networks("  ") == ()


@pytest.mark.parametrize(
    "typed", ["192.0.2.300", "192.0.2.0/33", "example.com", "2001:db8::/129", "10.0.0.1-10.0.0.9"]
)
def test_anything_but_addresses_and_ranges_is_refused_naming_the_entry(typed: str) -> None:
    with pytest.raises(fences.FenceError) as refused:
        fences.parse_networks(f"192.0.2.1, {typed}")
    assert refused.value.value == typed


def test_a_fence_holds_at_most_so_many_networks() -> None:
    many = [f"10.0.{n}.0/24" for n in range(fences.MAX_NETWORKS + 1)]
    assert len(fences.parse_networks(many[:-1])) == fences.MAX_NETWORKS
    with pytest.raises(fences.FenceError):
        fences.parse_networks(many)


# --- the decision ----------------------------------------------------------------------------


def test_an_ipv4_fence_lets_in_its_range_only() -> None:
    state = fenced("127.0.0.0/30", "192.0.2.10")
    assert outcome(state, "127.0.0.3") == Outcome.ALLOW
    assert outcome(state, "192.0.2.10") == Outcome.ALLOW
    assert outcome(state, "::ffff:127.0.0.1") == Outcome.ALLOW
    assert outcome(state, "127.0.0.9") == Outcome.FENCED
    assert outcome(state, "192.0.2.11") == Outcome.FENCED
    assert outcome(state, "2001:db8::1") == Outcome.FENCED


def test_an_ipv6_fence_of_a_64_lets_in_the_whole_64() -> None:
    state = fenced("2001:db8:1:2::/64")
    assert outcome(state, "2001:db8:1:2:aaaa:bbbb:cccc:dddd") == Outcome.ALLOW
    assert outcome(state, "2001:db8:1:3::1") == Outcome.FENCED
    assert outcome(state, "192.0.2.1") == Outcome.FENCED


def test_no_fence_means_anywhere() -> None:
    for remote in ("127.0.0.9", "2001:db8::1", "198.51.100.1"):
        assert outcome(fenced(), remote) == Outcome.ALLOW


def test_a_fence_is_checked_for_smtp_auth_too() -> None:
    assert outcome(fenced("127.0.0.0/30"), "127.0.0.9", protocol="smtp") == Outcome.FENCED
    assert outcome(fenced("127.0.0.0/30"), "127.0.0.2", protocol="smtp") == Outcome.ALLOW


def test_a_fenced_client_without_an_address_is_refused() -> None:
    assert outcome(fenced("127.0.0.0/30"), "") == Outcome.FENCED


def test_a_fence_is_never_told_before_the_password_was_verified() -> None:
    # The first ``allow`` knows only the 16-bit key prefix, which a guess may share.
    assert outcome(fenced("127.0.0.0/30"), "127.0.0.9", verified=False) == Outcome.ALLOW


def test_the_fences_refusal_says_why_in_the_owners_language() -> None:
    verdict = decide_allow(
        request("127.0.0.9"), fenced("127.0.0.0/30"), Counters(check_tokens=2), LIMITS, NOW
    )
    reply = answer(verdict, "lv", LIMITS)
    assert reply["status"] == -1
    with translation.override("lv"):
        expected = gettext("This password may not be used from this network (%(address)s).")
    assert reply["msg"] == expected % {"address": "127.0.0.9"}
    assert "127.0.0.9" in reply["msg"] and reply["msg"].startswith("Šo paroli nedrīkst")


def test_the_cached_state_keeps_each_passwords_fence() -> None:
    state = fenced("2001:db8:1:2::/64", "127.0.0.0/30")
    unfenced = MailboxState(1, True, "", "free", "lv", passwords=(PasswordScope(3, "ab12", ALL),))
    for original in (state, unfenced):
        assert auth_policy_store.decode_state(auth_policy_store.encode_state(original)) == original


# --- the panel's form and the action ---------------------------------------------------------


def test_a_password_is_added_with_its_fence_normalized_and_audited(
    transactional_db: None, alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)

    response = add(alice_client, "iPhone", ["imap"], networks="192.0.2.7/24, 2001:db8::1")

    assert response.status_code == 200 and shown_password(response)
    phone = live(alice)[-1]
    assert phone.allowed_networks == ["192.0.2.0/24", "2001:db8::1/128"]
    with translation.override("lv"):
        shown = gettext("only from %(networks)s") % {"networks": "192.0.2.0/24, 2001:db8::1/128"}
    assert shown in alice_client.get(reverse(PANEL)).content.decode()
    event = AuditEvent.objects.filter(action=AuditAction.PASSWORD_CREATED).latest("pk")
    assert event.detail["networks"] == ["192.0.2.0/24", "2001:db8::1/128"]
    loaded = state_cache.load(alice.address)
    assert loaded is not None
    assert loaded.passwords[-1].networks == ("192.0.2.0/24", "2001:db8::1/128")


@pytest.mark.django_db
def test_a_malformed_fence_is_refused_with_a_clear_error_and_nothing_is_made(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    before = live(alice)

    response = add(alice_client, "iPhone", ["imap"], networks="192.0.2.10, 192.0.2.300")

    assert response.status_code == 400 and shown_password(response) is None
    with translation.override("lv"):
        error = gettext(
            "“%(value)s” is not an IP address or network range. Write them like 192.0.2.10, "
            "198.51.100.0/24 or 2001:db8::/64."
        ) % {"value": "192.0.2.300"}
    assert error.startswith("„192.0.2.300” nav IP adrese")
    assert escape(error) in response.content.decode()
    assert live(alice) == before


@pytest.mark.django_db
def test_the_action_refuses_a_malformed_fence_too(alice: Mailbox) -> None:
    switch_on(alice)
    with pytest.raises(actions.AccessError) as refused:
        actions.create_app_password(
            alice, label="x", protocols={"imap"}, networks=["nonsense"], actor=Actor.user(alice)
        )
    assert refused.value.code == "networks"
    assert AppPassword.objects.filter(mailbox=alice).count() == 1


# --- the auth policy served for real, with Redis and the database ----------------------------


@with_redis[0]
@with_redis[1]
def test_a_fenced_password_is_refused_from_outside_its_networks_with_the_reason(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    switch_on(alice)
    # The state is cached before the fence exists: creating the password invalidates it.
    assert dovecot.allow("alice@inbox.lv")["status"] == 0
    phone, text = actions.create_app_password(
        alice,
        label="iPhone",
        protocols={"imap", "smtp"},
        networks=["192.0.2.0/30"],
        actor=Actor.user(alice),
    )

    def second_allow(remote: str, protocol: str = "imap") -> dict[str, Any]:
        login(dovecot, protocol, text, None, remote=remote)  # the first allow and a report
        body = {
            "login": "alice@inbox.lv",
            "protocol": protocol,
            "remote": remote,
            "pwhash": "a1b",
            "session_id": "s",
            "device_id": "",
            "app_password": str(phone.pk),
            "password_key": passwords.policy_key(text),
        }
        answer: dict[str, Any] = dovecot.post("allow", body).json()
        return answer

    inside = second_allow("192.0.2.2")
    outside = second_allow("192.0.2.9")
    smtp_outside = second_allow("198.51.100.1", "smtp")

    assert inside["status"] == 0
    with translation.override("lv"):
        reason = gettext("This password may not be used from this network (%(address)s).")
    assert outside == {"status": -1, "msg": reason % {"address": "192.0.2.9"}}
    assert smtp_outside == {"status": -1, "msg": reason % {"address": "198.51.100.1"}}
