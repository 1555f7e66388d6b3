"""No oracle: a refused mailbox tells why only to its own verified password (issue 18, item 2).

Played as a stranger would, against real Dovecot (IMAP, POP3) and Postfix (SMTP AUTH through
Dovecot SASL) with the auth policy served for real: a wrong password for a mailbox whose access
is off, blocked, or blocked as compromised is answered byte for byte as an unknown address
is, through the same code path (the passdb's lookup finds no row; no hash is checked), so no
faster or slower; the owner's program, holding the password that just ended, hears why in the
owner's language.
"""

from __future__ import annotations

import imaplib
import itertools
import poplib
import smtplib
import statistics
import time
from collections.abc import Callable

import pytest
from django.utils import translation

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, BlockReason
from tests.mailservers import (
    MailServers,
    imap_error_text,
    imap_login,
    pop3_login,
    smtp_error_text,
    smtp_send,
)
from tests.test_mail_servers_e2e import new_mailbox, switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

# Dovecot's anvil slows down repeated failures from one address: each attempt gets its own.
_sources = (f"127.0.{a}.{b}" for a, b in itertools.product(range(100, 200), range(2, 250)))
WRONG = "not-the-password-1"


def source() -> str:
    return next(_sources)


def refused_mailbox(state: str, language: str = "lv") -> tuple[Mailbox, str]:
    """A mailbox in ``state`` and the password that ended when it got there."""
    mailbox = new_mailbox(language)
    password = switch_on(mailbox)
    if state == "off":
        actions.disable_access(mailbox, actor=Actor.user(mailbox))
    else:
        reason = BlockReason.COMPROMISED if state == "compromised" else BlockReason.SUPPORT
        actions.block_access(mailbox, reason, actor=Actor.system("test"))
    return mailbox, password


def reason_text(state: str, language: str) -> str:
    with translation.override(language):
        if state == "off":
            return str(ACCESS_OFF_SERVER_MESSAGE)
        if state == "compromised":
            return str(BlockReason.COMPROMISED.server_message)
        return str(BlockReason.SUPPORT.server_message)


def imap_refusal(servers: MailServers, user: str, password: str) -> str:
    with pytest.raises(imaplib.IMAP4.error) as refused:
        imap_login(servers, user, password, source=source())
    return imap_error_text(refused.value)


def pop3_refusal(servers: MailServers, user: str, password: str) -> str:
    with pytest.raises(poplib.error_proto) as refused:
        pop3_login(servers, user, password, source=source())
    return bytes(refused.value.args[0]).decode()


def smtp_refusal(servers: MailServers, user: str, password: str) -> str:
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp_send(servers, user, password, implicit_tls=True, source=source())
    return f"{refused.value.smtp_code} {smtp_error_text(refused.value)}"


REFUSALS: dict[str, Callable[[MailServers, str, str], str]] = {
    "imap": imap_refusal,
    "pop3": pop3_refusal,
    "smtp": smtp_refusal,
}


@pytest.mark.parametrize("state", ["off", "blocked", "compromised"])
def test_a_wrong_password_for_a_refused_mailbox_is_answered_as_an_unknown_address(
    policy_servers: MailServers,
    state: str,
) -> None:
    mailbox, _password = refused_mailbox(state)
    unknown = f"nobody-{mailbox.address}"

    for protocol, refusal in REFUSALS.items():
        expected = refusal(policy_servers, unknown, WRONG)
        answered = refusal(policy_servers, mailbox.address, WRONG)

        assert answered == expected, (protocol, policy_servers.logs())
        assert reason_text(state, "lv") not in answered


@pytest.mark.parametrize("state", ["off", "blocked", "compromised"])
def test_the_password_that_just_ended_hears_why_in_the_owners_language(
    policy_servers: MailServers,
    state: str,
) -> None:
    mailbox, password = refused_mailbox(state, language="en")
    reason = reason_text(state, "en")

    for protocol, refusal in REFUSALS.items():
        answered = refusal(policy_servers, mailbox.address, password)

        assert reason in answered, (protocol, answered, policy_servers.logs())


def _login_seconds(servers: MailServers, user: str) -> float:
    started = time.perf_counter()
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(servers, user, WRONG, source=source())
    return time.perf_counter() - started


def _passdb_lookups(servers: MailServers, user: str) -> int:
    """Dovecot's passdb lookups that found no row for ``user`` (auth_verbose logs each)."""
    return sum(
        1
        for line in servers.dovecot_log.read_text(errors="replace").splitlines()
        if f"sql({user}," in line and "unknown user" in line
    )


def test_a_refused_mailbox_fails_no_faster_or_slower_than_an_unknown_address(
    policy_servers: MailServers,
) -> None:
    """Timing without flakiness: first the same code path (every attempt, for both, is one
    passdb lookup that finds no row, so no hash check either way), then the medians of many
    interleaved attempts within a bound far above the machine's noise."""
    mailbox, _password = refused_mailbox("compromised")
    unknown = f"nobody-{mailbox.address}"
    attempts = 15
    times: dict[str, list[float]] = {mailbox.address: [], unknown: []}
    for _attempt in range(attempts):
        for user in times:
            times[user].append(_login_seconds(policy_servers, user))

    assert _passdb_lookups(policy_servers, mailbox.address) == attempts, policy_servers.logs()
    assert _passdb_lookups(policy_servers, unknown) == attempts, policy_servers.logs()
    refused, stranger = (statistics.median(times[user]) for user in times)
    assert abs(refused - stranger) < max(0.05, 0.5 * min(refused, stranger)), times
