"""SMTP sending limits through real Postfix: what a mail program sees when it sends too much.

Postfix runs from the deploy/ templates (tests/mailservers.py) with SMTP AUTH through Dovecot,
the auth policy served by ``manage.py auth_policy_server``, and the policy daemon as ``manage.py
smtp_policy_server`` in its own process, on the test database and Redis: Postfix asks it at DATA
and at END-OF-MESSAGE, as main.cf and master.cf say. The clients are smtplib on 587 (STARTTLS)
and 465 (implicit TLS).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.utils import translation

from accounts.models import Mailbox, Plan
from mailaccess import counters
from mailaccess.mailserver.postfix_policy import reply_text
from mailaccess.models import (
    AppPassword,
    BlockReason,
    ExternalAccess,
    Notice,
    SendingLimit,
)
from mailaccess.sending_limits import sending_panel
from tests.conftest import wait_until
from tests.mailservers import (
    MailServers,
    SmtpPolicyDaemon,
    free_port,
    send_message,
    smtp_error_text,
    smtp_session,
    switch_on,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MINUTE_DEFERRAL = re.compile(
    r"<DATA>: Data command rejected: Sasniegts limits: ne vairak ka 5 vestules minute\. "
    r"Sutiet velreiz pec (\d+) sekund"
)


@pytest.fixture
def servers(
    transactional_db: None,
    policy_server: Any,
    policy_redis: None,
    smtp_policy_daemon: Any,
    mail_servers_factory: Callable[..., MailServers],
) -> MailServers:
    return mail_servers_factory(policy=policy_server, smtp_policy=smtp_policy_daemon)


def set_limits(plan: Plan, per_minute: int | None, per_hour: int | None) -> None:
    """What support sets in the admin (Sending limits). The test daemon reads it at once."""
    SendingLimit.objects.update_or_create(
        plan=plan, defaults={"per_minute": per_minute, "per_hour": per_hour}
    )


def latvian(message: Any) -> str:
    with translation.override("lv"):
        return str(message)


def auth_policy_generation(mailbox: Mailbox) -> int:
    """How many access changes have cleared the state the auth policy caches in Redis."""
    return int(counters.sync_client().get(counters.generation_key(mailbox.address)) or 0)


def wait_until_blocked(mailbox: Mailbox, generation_before: int) -> ExternalAccess:
    """The daemon answers Postfix first and blocks right after, in the background: the block
    is complete once committed and, after the commit, cleared from the auth policy's cache."""

    def blocked() -> ExternalAccess | None:
        access = ExternalAccess.objects.get(mailbox=mailbox)
        if access.block_reason and auth_policy_generation(mailbox) > generation_before:
            return access
        return None

    return wait_until(blocked, 30, failure="the daemon did not block the mailbox")


def test_it_defers_the_sixth_message_within_a_minute_and_says_when_to_retry(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    set_limits(Plan.FREE, per_minute=5, per_hour=15)
    mailbox = new_sender(Plan.FREE)
    address = mailbox.address
    app_password = switch_on(mailbox)

    # One mailbox, two programs (587 and 465): the limit counts the mailbox's messages.
    with smtp_session(servers, address, app_password, implicit_tls=False) as client:
        for number in range(3):
            assert send_message(client, address, f"message {number + 1}") == {}
    with smtp_session(servers, address, app_password, implicit_tls=True) as client:
        for number in range(3, 5):
            assert send_message(client, address, f"message {number + 1}") == {}
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            send_message(client, address, "message 6")

    # Refused at DATA, before the body is sent, temporarily, in the mailbox's language.
    assert deferred.value.smtp_code == 450, servers.logs()
    text = smtp_error_text(deferred.value)
    assert text.startswith("4.7.1 "), text
    retry = MINUTE_DEFERRAL.search(text)
    assert retry, text
    assert 1 <= int(retry[1]) <= 60
    # The five accepted messages were counted at END-OF-MESSAGE, the deferred one not; the
    # panel shows the same usage.
    panel = sending_panel(mailbox)
    assert panel is not None
    assert (panel.last_minute, panel.last_hour) == (5, 5)
    assert ExternalAccess.objects.get(mailbox=mailbox).enabled


def test_it_blocks_the_sixteenth_message_within_an_hour_and_then_refuses_smtp_auth(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    # Only the hourly rule is under test: the free plan's minute limit is taken away for this
    # test (as support could in the admin), so that 16 messages can go in a row instead of
    # over more than three minutes. The hourly limit stays the published 15.
    set_limits(Plan.FREE, per_minute=None, per_hour=15)
    mailbox = new_sender(Plan.FREE)
    address = mailbox.address
    app_password = switch_on(mailbox)

    with smtp_session(servers, address, app_password, implicit_tls=False) as client:
        for number in range(15):
            assert send_message(client, address, f"message {number + 1}") == {}
        generation = auth_policy_generation(mailbox)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send_message(client, address, "message 16")

    assert refused.value.smtp_code == 554, servers.logs()
    reason = latvian(BlockReason.HOURLY_LIMIT.server_message)
    assert reply_text(reason) in smtp_error_text(refused.value)

    # External access is switched off for the hourly limit: the password ends, the owner
    # gets a notice.
    access = wait_until_blocked(mailbox, generation)
    assert (access.enabled, access.block_reason) == (False, BlockReason.HOURLY_LIMIT)
    assert not AppPassword.objects.live().filter(mailbox=mailbox).exists()
    assert Notice.objects.filter(mailbox=mailbox, reason=BlockReason.HOURLY_LIMIT).exists()

    # The program's next SMTP AUTH is refused, and the auth policy says why (in Latvian:
    # Postfix passes UTF-8 through, smtputf8_enable = yes).
    with (
        pytest.raises(smtplib.SMTPAuthenticationError) as auth_refused,
        smtp_session(servers, address, app_password, implicit_tls=True, source="127.0.0.61"),
    ):
        pass
    assert auth_refused.value.smtp_code == 535
    assert reason in smtp_error_text(auth_refused.value), servers.logs()


def test_it_lets_a_mail_plus_mailbox_send_thirty_messages_in_a_row(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    set_limits(Plan.FREE, per_minute=5, per_hour=15)
    set_limits(Plan.PLUS, per_minute=None, per_hour=None)
    mailbox = new_sender(Plan.PLUS)
    address = mailbox.address
    app_password = switch_on(mailbox)

    with smtp_session(servers, address, app_password, implicit_tls=True) as client:
        for number in range(30):
            assert send_message(client, address, f"message {number + 1}") == {}

    access = ExternalAccess.objects.get(mailbox=mailbox)
    assert access.enabled and not access.block_reason
    assert sending_panel(mailbox) is None


def test_it_lets_mail_through_while_the_policy_daemon_does_not_answer(
    transactional_db: None,
    policy_server: Any,
    policy_redis: None,
    smtp_policy_daemon: SmtpPolicyDaemon,
    mail_servers_factory: Callable[..., MailServers],
    new_sender: Callable[[Plan], Mailbox],
) -> None:
    """main.cf's deliberate default (DUNNO): an outage of the daemon holds nobody's mail."""
    nobody_listens = SmtpPolicyDaemon(
        f"inet:127.0.0.1:{free_port()}", smtp_policy_daemon.redis_url, Path("/dev/null")
    )
    servers = mail_servers_factory(policy=policy_server, smtp_policy=nobody_listens)
    mailbox = new_sender(Plan.FREE)
    app_password = switch_on(mailbox)

    with smtp_session(servers, mailbox.address, app_password, implicit_tls=False) as client:
        assert send_message(client, mailbox.address) == {}

    assert "problem talking to server" in servers.postfix_log.read_text(), servers.logs()
