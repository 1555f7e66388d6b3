"""The auth policy's pure parts: what Dovecot sends, the rules, and what the user reads."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mailaccess.mailserver.auth_policy import (
    Command,
    Counters,
    LoginLimits,
    MailboxState,
    Outcome,
    RequestError,
    Verdict,
    answer,
    client_network,
    decide_allow,
    parse_command,
    parse_login_request,
    report_effects,
)
from mailaccess.models import Protocol

LIMITS = LoginLimits()
ON = MailboxState(mailbox_id=1, enabled=True, block_reason="", plan="free", language="lv")
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=ZoneInfo("Europe/Riga")).timestamp()

# What Dovecot 2.3 sends with its default auth_policy_request_attributes.
DOVECOT_BODY = (
    b'{"device_id":"","login":"Alice@Inbox.lv","protocol":"imap","pwhash":"4a1",'
    b'"remote":"192.0.2.7","session_id":"UqXuI3kF","tls":true}'
)


def request(  # type: ignore[no-untyped-def]
    protocol: str = "imap",
    remote: str = "192.0.2.7",
    command: str = "allow",
    verified: bool = False,
):
    """``verified``: the ``allow`` after the passdb matched a password (it names the password)."""
    password = ',"app_password":"7"' if verified else ""
    body = f'{{"login":"alice@inbox.lv","protocol":"{protocol}","remote":"{remote}"{password}}}'
    return parse_login_request(Command(command), body.encode())


def test_it_reads_what_dovecot_sends() -> None:
    parsed = parse_login_request(Command.ALLOW, DOVECOT_BODY)
    assert parsed.login == "alice@inbox.lv"
    assert parsed.protocol == Protocol.IMAP
    assert parsed.remote == "192.0.2.7"
    assert parsed.network == "192.0.2.7"
    assert parsed.pwhash == "4a1"
    assert parsed.session_id == "UqXuI3kF"


def test_a_report_carries_success_and_policy_reject() -> None:
    body = b'{"login":"a@inbox.lv","protocol":"pop3","success":true,"policy_reject":false}'
    parsed = parse_login_request(Command.REPORT, body)
    assert parsed.success and not parsed.policy_reject
    assert report_effects(parsed) == "success"


def test_a_login_the_policy_refused_counts_as_no_guess() -> None:
    body = b'{"login":"a@inbox.lv","success":false,"policy_reject":true}'
    assert report_effects(parse_login_request(Command.REPORT, body)) == "none"
    body = b'{"login":"a@inbox.lv","success":false,"policy_reject":false}'
    assert report_effects(parse_login_request(Command.REPORT, body)) == "failure"


@pytest.mark.parametrize(
    ("service", "protocol"),
    [
        ("imap", Protocol.IMAP),
        ("pop3", Protocol.POP3),
        ("smtp", Protocol.SMTP),
        ("submission", Protocol.SMTP),
        ("sieve", None),
    ],
)
def test_postfix_smtp_and_dovecot_submission_are_both_smtp(service: str, protocol: object) -> None:
    assert request(protocol=service).protocol == protocol


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'{"protocol":"imap"}', b'{"login": 5}', b"\xff\xfe"],
)
def test_malformed_requests_are_told_apart(body: bytes) -> None:
    with pytest.raises(RequestError):
        parse_login_request(Command.ALLOW, body)


def test_the_command_comes_from_the_query() -> None:
    assert parse_command(b"command=allow") == Command.ALLOW
    assert parse_command(b"command=report") == Command.REPORT
    for query in (b"", b"command=drop", b"command=allow&command=report"):
        with pytest.raises(RequestError):
            parse_command(query)


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_network("2001:db8:1:2:aa::1") == ("2001:db8:1:2::/64", "2001:db8:1:2:aa::1")
    assert client_network("::ffff:192.0.2.7") == ("192.0.2.7", "192.0.2.7")
    assert client_network("not an address") == (None, None)


def test_unknown_users_go_on_to_the_passdb_like_anyone() -> None:
    verdict = decide_allow(request(), None, Counters(), LIMITS, NOW)
    assert verdict == Verdict(Outcome.UNKNOWN, 0)


OFF = MailboxState(1, enabled=False, block_reason="", plan="free", language="lv")
BLOCKED = MailboxState(1, enabled=False, block_reason="compromised", plan="free", language="lv")


@pytest.mark.parametrize("state", [OFF, BLOCKED], ids=["off", "blocked"])
@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_before_the_password_is_verified_an_off_or_blocked_mailbox_is_an_unknown_address(
    state: MailboxState, protocol: str
) -> None:
    unknown = decide_allow(request(protocol), None, Counters(), LIMITS, NOW)

    verdict = decide_allow(request(protocol), state, Counters(), LIMITS, NOW)

    assert verdict == unknown == Verdict(Outcome.UNKNOWN, 0)
    assert answer(verdict, "lv", LIMITS) == {"status": 0, "msg": ""}


@pytest.mark.parametrize("state", [OFF, BLOCKED, None], ids=["off", "blocked", "unknown"])
def test_guessing_locks_off_blocked_and_unknown_addresses_alike(
    state: MailboxState | None,
) -> None:
    counters = Counters(mailbox_failures=10, mailbox_lock_seconds=600)
    reply = answer(decide_allow(request(), state, counters, LIMITS, NOW), "en", LIMITS)
    assert reply == {"status": -1, "msg": "Too many failed logins. Try again after 12:10."}


def test_access_off_is_refused_in_the_mailbox_language() -> None:
    off = OFF
    verdict = decide_allow(request("smtp", verified=True), off, Counters(), LIMITS, NOW)
    assert verdict.status == -1
    assert answer(verdict, "lv", LIMITS)["msg"].startswith("Ārējā POP3\\IMAP un SMTP pieeja")
    assert answer(verdict, "en", LIMITS)["msg"].startswith("External POP3/IMAP and SMTP access")


def test_a_block_is_refused_with_its_reason() -> None:
    blocked = MailboxState(
        1, enabled=False, block_reason="faulty_program", plan="free", language="en"
    )
    verdict = decide_allow(request(verified=True), blocked, Counters(), LIMITS, NOW)
    reply = answer(verdict, "en", LIMITS)
    assert reply["status"] == -1
    assert "too many connections" in reply["msg"]


def test_a_check_with_tokens_left_is_allowed() -> None:
    verdict = decide_allow(request(), ON, Counters(check_tokens=1.0), LIMITS, NOW)
    assert verdict.status == 0


def test_more_connections_of_a_check_under_way_are_allowed() -> None:
    counters = Counters(check_open=True, check_tokens=0.0)
    assert decide_allow(request(), ON, counters, LIMITS, NOW).status == 0


def test_a_program_a_little_early_is_delayed_until_its_turn() -> None:
    # 0.98 of a check saved: the next one is due in 0.02 * 300 = 6 seconds.
    verdict = decide_allow(request(), ON, Counters(check_tokens=0.98), LIMITS, NOW)
    assert verdict == Verdict(Outcome.DELAYED, 6)


def test_checking_too_often_is_refused_saying_when_to_come_back() -> None:
    verdict = decide_allow(request("pop3"), ON, Counters(check_tokens=0.5), LIMITS, NOW)
    reply = answer(verdict, "en", LIMITS)
    assert reply["status"] == -1
    # Half a check saved: the next is due in 150 s, at 12:02:30, so "after 12:03".
    assert reply["msg"] == (
        "Mail is checked too often: at most once in 5 minutes is allowed. Try again after 12:03."
    )
    assert "12:03" in answer(verdict, "lv", LIMITS)["msg"]


def test_sending_is_not_a_mail_check() -> None:
    verdict = decide_allow(request("smtp"), ON, Counters(check_tokens=0.0), LIMITS, NOW)
    assert verdict.status == 0


def test_password_guessing_locks_strangers_out_for_a_while() -> None:
    counters = Counters(mailbox_failures=10, mailbox_lock_seconds=600)
    verdict = decide_allow(request(), ON, counters, LIMITS, NOW)
    reply = answer(verdict, "en", LIMITS)
    assert reply == {"status": -1, "msg": "Too many failed logins. Try again after 12:10."}


def test_a_guessing_network_is_locked_out() -> None:
    counters = Counters(check_tokens=6, ip_failures=30, ip_lock_seconds=300)
    assert decide_allow(request(), ON, counters, LIMITS, NOW).outcome == Outcome.GUESSING


def test_the_owners_usual_network_is_never_locked_out() -> None:
    counters = Counters(check_tokens=6, mailbox_failures=50, ip_failures=500, known_network=True)
    assert decide_allow(request(), ON, counters, LIMITS, NOW).status == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000,
        b'{"login": ' + b"[" * 5000 + b"}",
        b'{"login": "alice\\u0000@inbox.lv", "protocol": "imap"}',
        b'{"login": "\\ud800@inbox.lv", "protocol": "imap"}',
        b'{"login": "alice\\u001b[2J@inbox.lv"}',
        b'{"login": "alice\\n@inbox.lv"}',
        b'{"login": "alice\x7f@inbox.lv"}',
    ],
    ids=[
        "nested",
        "nested-login",
        "nul",
        "lone-surrogate",
        "escape",
        "line-break",
        "raw-del",
    ],
)
def test_deep_nesting_control_characters_and_lone_surrogates_are_bad_requests(
    body: bytes,
) -> None:
    with pytest.raises(RequestError):
        parse_login_request(Command.ALLOW, body)


def test_escaped_letters_in_a_login_are_fine() -> None:
    body = b'{"login": "J\\u0101nis@inbox.lv", "protocol": "imap", "session_id": "\\ud83d\\ude00"}'
    assert parse_login_request(Command.ALLOW, body).login == "jānis@inbox.lv"
