"""A block ends the sessions already open (issue 18, item 3), with real Dovecot and Postfix.

A hijacker holding a stolen password keeps an IMAP IDLE or POP3 session open, or an SMTP
session that authenticated before the block. Blocking (by support, a job or a policy),
switching access off and ending one device's password end the IMAP and POP3 sessions within
seconds through Dovecot's doveadm HTTP API (mailaccess/sessions.py), and the SMTP policy
daemon refuses the next message of a blocked or switched-off mailbox.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import translation

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.mailserver.postfix_policy import reply_text
from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, AppPassword, BlockReason, ExternalAccess
from tests.conftest import wait_until
from tests.mailservers import (
    IMAP4SSLFrom,
    MailServers,
    POP3SSLFrom,
    imap_login,
    send_message,
    smtp_error_text,
    smtp_session,
)
from tests.test_mail_servers_e2e import new_mailbox, switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

GONE_WITHIN = 5.0  # seconds: "within seconds"


@pytest.fixture
def servers(
    transactional_db: None,
    policy_server: Any,
    policy_redis: None,
    smtp_policy_daemon: Any,
    mail_servers_factory: Callable[..., MailServers],
    settings: Any,
) -> MailServers:
    """Dovecot and Postfix with both policies; the actions of this process kick through the
    servers' doveadm API (no broker in the tests: the kick runs once, after commit)."""
    servers = mail_servers_factory(policy=policy_server, smtp_policy=smtp_policy_daemon)
    settings.DOVEADM_API_URL = [servers.doveadm_url]
    settings.DOVEADM_API_KEY = servers.doveadm_api_key
    return servers


def open_imap(servers: MailServers, user: str, password: str) -> IMAP4SSLFrom:
    context = servers.tls.client_context()
    client = IMAP4SSLFrom("127.0.0.1", servers.imaps_port, source="127.0.0.1", ssl_context=context)
    client.login(user, password)
    client.select("INBOX")
    return client


def open_pop3(servers: MailServers, user: str, password: str) -> POP3SSLFrom:
    client = POP3SSLFrom(
        "127.0.0.1", servers.pop3s_port, source="127.0.0.1", context=servers.tls.client_context()
    )
    client.user(user)
    client.pass_(password)
    return client


def gone_within(seconds: float, still_there: Callable[[], object]) -> bool:
    """Whether the session stops answering within ``seconds`` (polled, so no fixed sleep)."""

    def gone() -> bool:
        try:
            still_there()
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, poplib.error_proto, OSError, EOFError):
            return True
        return False

    try:
        return wait_until(gone, seconds, every=0.2)
    except AssertionError:
        return False


def test_blocking_a_mailbox_ends_its_open_imap_session(servers: MailServers) -> None:
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    session = open_imap(servers, mailbox.address, password)
    assert session.noop()[0] == "OK"

    actions.block_access(mailbox, BlockReason.SUPPORT, actor=Actor.system("test"))

    assert gone_within(GONE_WITHIN, session.noop), servers.logs()


def test_switching_access_off_ends_the_open_pop3_session(servers: MailServers) -> None:
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    session = open_pop3(servers, mailbox.address, password)
    assert session.stat() == (0, 0)

    actions.disable_access(mailbox, actor=Actor.user(mailbox))

    assert gone_within(GONE_WITHIN, session.noop), servers.logs()


def test_a_job_blocking_a_page_of_mailboxes_ends_all_their_sessions(
    servers: MailServers,
) -> None:
    first, second = new_mailbox(), new_mailbox()
    sessions = [open_imap(servers, m.address, switch_on(m)) for m in (first, second)]

    actions.block_access_many(
        ExternalAccess.objects.filter(mailbox__in=[first, second]),
        BlockReason.IDLE,
        actor=Actor.system("test"),
    )

    for session in sessions:
        assert gone_within(GONE_WITHIN, session.noop), servers.logs()


def test_ending_one_device_password_ends_its_session_and_the_others_log_in_again(
    servers: MailServers,
) -> None:
    mailbox = new_mailbox()
    laptop = switch_on(mailbox)
    phone, phone_text = actions.create_app_password(
        mailbox, label="phone", protocols={"imap"}, actor=Actor.user(mailbox)
    )
    phone_session = open_imap(servers, mailbox.address, phone_text)

    assert actions.revoke_app_password(mailbox, phone.pk, actor=Actor.user(mailbox))

    assert gone_within(GONE_WITHIN, phone_session.noop), servers.logs()
    # Dovecot 2.3 kicks by login name: the laptop's session ended too, and it gets back in.
    assert imap_login(servers, mailbox.address, laptop)
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(servers, mailbox.address, phone_text, source="127.0.0.61")


def latvian(message: Any) -> str:
    with translation.override("lv"):
        return reply_text(str(message))


@pytest.mark.parametrize("how", ["blocked", "switched_off"])
def test_an_open_smtp_session_sends_no_more_mail_once_the_mailbox_is_blocked(
    servers: MailServers, how: str
) -> None:
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    with smtp_session(servers, mailbox.address, password, implicit_tls=True) as client:
        assert send_message(client, mailbox.address) == {}

        if how == "blocked":
            actions.block_access(mailbox, BlockReason.COMPROMISED, actor=Actor.system("test"))
            reason = latvian(BlockReason.COMPROMISED.server_message)
        else:
            actions.disable_access(mailbox, actor=Actor.user(mailbox))
            reason = latvian(ACCESS_OFF_SERVER_MESSAGE)

        with pytest.raises(smtplib.SMTPDataError) as refused:
            send_message(client, mailbox.address, subject="after the block")
    assert refused.value.smtp_code == 554, servers.logs()
    assert reason in smtp_error_text(refused.value), servers.logs()


@pytest.fixture
def servers_without_auth_policy(
    transactional_db: None,
    smtp_policy_daemon: Any,
    mail_servers_factory: Callable[..., MailServers],
    settings: Any,
) -> MailServers:
    settings.DOVEADM_API_URL = []
    return mail_servers_factory(policy=None, smtp_policy=smtp_policy_daemon)


def test_without_the_auth_policy_the_just_ended_password_sends_nothing(
    servers_without_auth_policy: MailServers,
) -> None:
    """Postfix ignores nologin, and the passdb has a row for the just-ended password (so the
    auth policy can tell its owner why): with the auth policy down (reject_on_fail = no),
    SMTP AUTH succeeds, and the SMTP policy daemon refuses the message."""
    servers = servers_without_auth_policy
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    actions.block_access(mailbox, BlockReason.COMPROMISED, actor=Actor.system("test"))

    with (
        smtp_session(servers, mailbox.address, password, implicit_tls=True) as client,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        send_message(client, mailbox.address)

    assert refused.value.smtp_code == 554, servers.logs()
    assert latvian(BlockReason.COMPROMISED.server_message) in smtp_error_text(refused.value)


# --- Dovecot away: the block does not wait for it ---------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A doveadm URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/doveadm/v1"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.django_db(transaction=True)
def test_a_dovecot_that_does_not_answer_holds_the_block_only_for_the_short_timeout(
    silent_server: str, settings: Any
) -> None:
    settings.DOVEADM_API_URL = [silent_server]
    settings.DOVEADM_API_KEY = "key"
    settings.DOVEADM_API_TIMEOUT = 0.5
    settings.CELERY_TASK_ALWAYS_EAGER = True
    mailbox = Mailbox.objects.create_user("hijacked@inbox.lv", "web-password-1")
    switch_on(mailbox)

    started = time.monotonic()
    actions.block_access(mailbox, BlockReason.COMPROMISED, actor=Actor.system("test"))

    assert time.monotonic() - started < 2.0
    assert not AppPassword.objects.live().filter(mailbox=mailbox).exists()
