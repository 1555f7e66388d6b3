"""Bounce floods through real Postfix: who can get a mailbox blocked as compromised.

Postfix runs from the deploy/ templates (tests/mailservers.py): the submission services tag
the envelope sender of every message through the policy daemon's socketmap, and an MX on
"port 25" (deploy/postfix/mx-inbound.*.cf) asks the daemon after DATA. A stranger is an SMTP
client of that MX from several 127.0.0.x addresses; a spam run is a mailbox sending through
submission to nowhere.e2e.test, which refuses everything, so Postfix's own "Mail Delivery
System" writes the bounces and hands them to the MX, as the Internet would.
"""

from __future__ import annotations

import re
import secrets
import smtplib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from accounts.models import Mailbox, Plan
from mailaccess.mailserver import bounce_tags, sending_counters
from mailaccess.models import BlockReason, ExternalAccess, Notice
from tests.conftest import wait_until
from tests.mailservers import MailServers, send_message, smtp_session, switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

STRANGERS = [f"127.0.0.{n}" for n in range(71, 76)]


@pytest.fixture
def servers(
    transactional_db: None,
    policy_server: Any,
    policy_redis: None,
    smtp_policy_daemon: Any,
    mail_servers_factory: Callable[..., MailServers],
) -> MailServers:
    return mail_servers_factory(policy=policy_server, smtp_policy=smtp_policy_daemon)


def bounces_counted(servers: MailServers, address: str) -> int:
    assert servers.smtp_policy is not None
    client = redis.Redis.from_url(servers.smtp_policy.redis_url)
    return int(client.zcard(sending_counters.bounces_key(address)))


def tags_sent(servers: MailServers, address: str, count: int) -> list[str]:
    """The tagged envelope senders Postfix gave the mailbox's messages (from its log)."""
    pattern = re.compile(rf"from=<(prvs=[0-9a-f]{{24}}={re.escape(address)})>")

    def found() -> list[str] | None:
        tags = sorted(set(pattern.findall(servers.postfix_log.read_text())))
        return tags if len(tags) >= count else None

    return wait_until(
        found, 30, failure=lambda: f"no tagged envelope sender in Postfix's log\n{servers.logs()}"
    )


def stranger(servers: MailServers, source: str) -> smtplib.SMTP:
    try:
        client = smtplib.SMTP("127.0.0.1", servers.mx_port, timeout=30, source_address=(source, 0))
    except (OSError, smtplib.SMTPException) as error:
        raise AssertionError(f"the MX does not answer: {error}\n{servers.logs()}") from error
    client.ehlo("stranger.example")
    return client


def delivery_report(recipient: str, number: int) -> str:
    """A whole, well-formed delivery status notification, as any MTA writes one."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\n"
        f"To: {recipient}\r\n"
        f"Subject: Undelivered Mail Returned to Sender ({number})\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example\r\n\r\n"
        f"Final-Recipient: rfc822; nobody{number}@example.org\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
    )


def settle() -> None:
    """Blocks are written in the background right after the daemon answers: long enough
    for one to show, had it been started."""
    time.sleep(1.5)


def test_thirty_rcpts_without_data_from_several_clients_block_nobody(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    victim = new_sender(Plan.FREE)
    address = victim.address
    app_password = switch_on(victim)
    with smtp_session(servers, address, app_password, implicit_tls=False) as client:
        assert send_message(client, address) == {}
    [tag] = tags_sent(servers, address, 1)

    # 50 null-sender RCPTs from five clients, never a DATA: 40 to the plain address, and 10
    # even to the real tag (the stranger received that message).
    for number in range(50):
        with stranger(servers, STRANGERS[number % len(STRANGERS)]) as client:
            assert client.mail("")[0] == 250
            assert client.rcpt(address if number % 5 else tag)[0] == 250
            client.rset()
    settle()

    assert bounces_counted(servers, address) == 0
    access = ExternalAccess.objects.get(mailbox=victim)
    assert access.enabled and not access.block_reason, servers.logs()


def test_forged_delivery_reports_do_not_block_a_mailbox_that_sent_one_message(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    victim = new_sender(Plan.PLUS)
    address = victim.address
    app_password = switch_on(victim)
    with smtp_session(servers, address, app_password, implicit_tls=True) as client:
        assert send_message(client, address) == {}
    [tag] = tags_sent(servers, address, 1)
    now = int(time.time() * 1000)
    forged_tags = [
        # A tag of the right shape with a guessed HMAC.
        f"prvs={tag[5:17]}{secrets.token_hex(6)}={address}",
        # A validly signed tag from two hours ago (stale), and the real one for another mailbox.
        bounce_tags.tag_sender(address, now - 2 * 3_600_000),
        tag.replace(address, f"other-{address}"),
    ]
    # 44 whole delivery reports, from the null sender and from MAILER-DAEMON, five clients:
    # 30 to the plain address, 9 to forged tags, 5 to the real one.
    recipients = [address] * 30 + forged_tags * 3 + [tag] * 5
    for number, recipient in enumerate(recipients):
        assert recipient is not None
        sender = "" if number % 2 else "MAILER-DAEMON@mx.example"
        with stranger(servers, STRANGERS[number % len(STRANGERS)]) as client:
            assert client.sendmail(sender, [recipient], delivery_report(recipient, number)) == {}
    settle()

    # The real tag counted once, however often it came back; nothing else counted.
    assert bounces_counted(servers, address) == 1
    access = ExternalAccess.objects.get(mailbox=victim)
    assert access.enabled and not access.block_reason, servers.logs()


def test_a_mail_program_cannot_send_with_another_mailboxs_envelope_sender(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    """Otherwise one mailbox could have tags minted for another and make its bounces count."""
    sender, other = new_sender(Plan.PLUS), new_sender(Plan.PLUS)
    app_password = switch_on(sender)
    with (
        smtp_session(servers, sender.address, app_password, implicit_tls=True) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        send_message(client, other.address)
    # Refused at RCPT (Postfix delays a sender's refusal to the first recipient).
    [(code, text)] = refused.value.recipients.values()
    assert (code, b"not owned by user" in text) == (553, True), servers.logs()
    # Its own address, in any case, is its own; and the null sender (read receipts) has no
    # owner to mismatch.
    with smtp_session(servers, sender.address, app_password, implicit_tls=True) as client:
        assert send_message(client, sender.address.upper()) == {}
        assert send_message(client, "") == {}


def test_a_mailbox_sending_spam_that_bounces_is_blocked_as_compromised(
    servers: MailServers, new_sender: Callable[[Plan], Mailbox]
) -> None:
    spammer = new_sender(Plan.PLUS)
    address = spammer.address
    app_password = switch_on(spammer)

    with smtp_session(servers, address, app_password, implicit_tls=True) as client:
        for number in range(30):
            to = [f"victim{number}-{n}@nowhere.e2e.test" for n in range(3)]
            body = f"From: {address}\r\nSubject: offer {number}\r\n\r\nBuy now.\r\n"
            assert client.sendmail(address, to, body) == {}

    # Postfix bounces each message to its tagged envelope sender, through the MX.
    access = wait_until(
        lambda: ExternalAccess.objects.filter(mailbox=spammer, block_reason__gt="").first(),
        60,
        every=0.2,
        failure=servers.logs,
    )
    assert access.block_reason == BlockReason.COMPROMISED, servers.logs()
    assert access.requires_password_change
    assert Notice.objects.filter(mailbox=spammer, reason=BlockReason.COMPROMISED).exists()
