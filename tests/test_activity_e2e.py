"""Issue 22, end to end with real Dovecot and the served auth policy: a login from a new
address produces the panel notice and the e-mail; "This was not me" ends that password and
its open IMAP session, then leads to changing the web password."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.core import mail
from django.urls import reverse

from mailaccess import activity, counters, jobs
from mailaccess.models import (
    ActivityKind,
    AppPassword,
    NewProgramAlert,
    Notice,
    NoticeKind,
    PasswordActivity,
)
from tests.conftest import csrf_post, signed_in_client
from tests.mailservers import IMAP4SSLFrom, MailServers
from tests.test_mail_servers_e2e import new_mailbox, switch_on
from tests.test_open_sessions_e2e import GONE_WITHIN, gone_within, open_imap, servers  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def take_in(events: int) -> None:
    """Run the job once the policy has buffered ``events``: Dovecot reports a login to the
    policy while it answers the client, so the report may land a moment after the login."""
    client = counters.sync_client()
    deadline = time.monotonic() + 5
    while client.xlen(activity.STREAM_KEY) < events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.run("compact_activity") == events


def test_a_login_from_a_new_address_alerts_and_not_me_ends_the_password_and_its_session(
    servers: MailServers,  # noqa: F811
    settings: Any,
) -> None:
    settings.PORTAL_URL = "https://portal.example"
    jobs.run("compact_activity")  # what earlier tests left in the stream
    mailbox = new_mailbox()
    password = switch_on(mailbox)

    # The mailbox's first login ever: recorded, no alert.
    first = open_imap(servers, mailbox.address, password)
    first.logout()
    take_in(1)
    [row] = PasswordActivity.objects.filter(mailbox=mailbox)
    assert row.kind == ActivityKind.SIGN_IN and row.ip == "127.0.0.1" and row.protocol == "imap"
    assert not Notice.objects.filter(mailbox=mailbox).exists() and mail.outbox == []

    # The same password from another address, and the session stays open.
    stranger = IMAP4SSLFrom(
        "127.0.0.1",
        servers.imaps_port,
        source="127.0.0.2",
        ssl_context=servers.tls.client_context(),
    )
    stranger.login(mailbox.address, password)
    stranger.select("INBOX")
    take_in(1)

    notice = Notice.objects.get(mailbox=mailbox, kind=NoticeKind.NEW_PROGRAM)
    alert = NewProgramAlert.objects.get(notice=notice)
    assert alert.ip == "127.0.0.2"
    [message] = mail.outbox
    assert message.to == [mailbox.address]
    assert "pieteicās jauna pasta programma" in message.subject
    assert "Adrese: 127.0.0.2" in message.body
    link = re.search(r"https://portal\.example(/\S+/not-me/\S+/)", str(message.body))
    assert link is not None

    owner = signed_in_client(mailbox)
    panel = owner.get(reverse("mailaccess:mail_programs")).content.decode()
    assert "Pieteicās jauna pasta programma." in panel and "127.0.0.2" in panel

    response = csrf_post(owner, link.group(1))
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:change_password")
    assert not AppPassword.objects.get(mailbox=mailbox).is_live
    assert gone_within(GONE_WITHIN, stranger.noop), servers.logs()
