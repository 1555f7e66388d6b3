"""Dovecot's auth cache is on (deploy/dovecot/dovecot.conf), and every access change flushes the
mailbox's entries through the doveadm HTTP API right after its commit (tasks.py,
``queue_flush_auth_cache``), with real Dovecot and PostgreSQL.

Without the flush a switched-off mailbox whose passdb reply is cached logs in until the entry's
TTL runs out whenever the auth policy is down (``auth_policy_reject_on_fail = no``): nothing
else would refuse it. So each test here logs in first (the reply is cached, which the test
checks by emptying the mailbox's passdb rows behind the portal's back), changes access through
the actions, and wants the login refused within a second.
"""

from __future__ import annotations

import imaplib
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.models import AppPassword, BlockReason
from tests.mailservers import (
    MailServers,
    PolicyServer,
    free_port,
    imap_login,
    reached_by_actions,
)
from tests.test_mail_servers_e2e import new_mailbox, switch_on

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

WITHIN = 1.0  # seconds


@pytest.fixture
def policy_down(
    transactional_db: None, mail_servers_factory: Any, settings: Any, tmp_path: Any
) -> MailServers:
    """Dovecot whose auth policy does not answer (nothing listens on its port): as when the
    policy service is down in production, Dovecot goes on without it (reject_on_fail = no)."""
    dead = PolicyServer(
        f"http://127.0.0.1:{free_port()}/auth-policy", "unused", "", tmp_path / "none.log"
    )
    return reached_by_actions(mail_servers_factory(policy=dead), settings)


@pytest.fixture
def policy_up(
    transactional_db: None,
    policy_server: PolicyServer,
    policy_redis: None,
    mail_servers_factory: Any,
    settings: Any,
) -> MailServers:
    return reached_by_actions(mail_servers_factory(policy=policy_server), settings)


def logs_in(servers: MailServers, mailbox: Mailbox, password: str) -> bool:
    try:
        imap_login(servers, mailbox.address, password)
    except imaplib.IMAP4.error:
        return False
    return True


def cached(servers: MailServers, mailbox: Mailbox, password: str) -> None:
    """Log in, then check that the next login is answered from the cache: with the mailbox's
    passdb rows gone, only a cached reply lets it in. The rows are put back as they were."""
    assert logs_in(servers, mailbox, password), servers.logs()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE kept AS SELECT * FROM mailaccess_passdb WHERE mailbox_id = %s",
            [mailbox.pk],
        )
        cursor.execute("DELETE FROM mailaccess_passdb WHERE mailbox_id = %s", [mailbox.pk])
        try:
            assert logs_in(servers, mailbox, password), "not answered from the auth cache"
        finally:
            cursor.execute("INSERT INTO mailaccess_passdb SELECT * FROM kept")
            cursor.execute("DROP TABLE kept")


def refused_within(seconds: float, servers: MailServers, mailbox: Mailbox, password: str) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not logs_in(servers, mailbox, password):
            return True
        time.sleep(0.05)
    return False


CHANGES: dict[str, Callable[[Mailbox], object]] = {
    "switched off": lambda mailbox: actions.disable_access(mailbox, actor=Actor.user(mailbox)),
    "blocked": lambda mailbox: actions.block_access(
        mailbox, BlockReason.SUPPORT, actor=Actor.system("test")
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_cached_mailbox_is_refused_at_once_while_the_policy_is_down(
    policy_down: MailServers, change: str
) -> None:
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    cached(policy_down, mailbox, password)

    CHANGES[change](mailbox)

    assert refused_within(WITHIN, policy_down, mailbox, password), policy_down.logs()


def test_a_cached_mailbox_is_refused_at_once_with_the_policy_up(policy_up: MailServers) -> None:
    mailbox = new_mailbox()
    password = switch_on(mailbox)
    cached(policy_up, mailbox, password)

    actions.disable_access(mailbox, actor=Actor.user(mailbox))

    assert refused_within(WITHIN, policy_up, mailbox, password), policy_up.logs()


def test_an_ended_password_is_refused_at_once_and_a_new_one_works_at_once(
    policy_down: MailServers,
) -> None:
    mailbox = new_mailbox()
    first = switch_on(mailbox)
    cached(policy_down, mailbox, first)

    _, second = actions.create_app_password(
        mailbox, label="phone", protocols={"imap", "pop3", "smtp"}, actor=Actor.user(mailbox)
    )
    assert logs_in(policy_down, mailbox, second), policy_down.logs()
    assert logs_in(policy_down, mailbox, first)

    oldest = AppPassword.objects.live().filter(mailbox=mailbox).order_by("created_at").first()
    assert oldest is not None
    assert actions.revoke_app_password(mailbox, oldest.pk, actor=Actor.user(mailbox))
    assert refused_within(WITHIN, policy_down, mailbox, first), policy_down.logs()
    assert logs_in(policy_down, mailbox, second)


def test_switching_access_back_on_lets_the_new_password_in_at_once(
    policy_down: MailServers,
) -> None:
    mailbox = new_mailbox()
    old = switch_on(mailbox)
    cached(policy_down, mailbox, old)
    actions.disable_access(mailbox, actor=Actor.user(mailbox))
    assert refused_within(WITHIN, policy_down, mailbox, old)

    new = switch_on(mailbox)

    assert logs_in(policy_down, mailbox, new), policy_down.logs()
    assert not logs_in(policy_down, mailbox, old)
