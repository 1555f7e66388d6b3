"""A fenced password with real Dovecot and Postfix (issue 22, item 3, "Done means").

The password may be used from 127.0.0.0/30: it logs in over IMAP from 127.0.0.1, and is
refused from 127.0.0.9 over IMAP, POP3 and SMTP AUTH (Postfix asks Dovecot, whose auth policy
request carries the client's address) with the fence's reason in the owner's language.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib

import pytest
from django.utils import translation
from django.utils.translation import gettext

from audit.models import Actor
from mailaccess import actions
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


def fence_reason(address: str) -> str:
    with translation.override("lv"):
        return gettext("This password may not be used from this network (%(address)s).") % {
            "address": address
        }


def test_a_fenced_password_is_refused_from_outside_its_networks_with_the_fences_reason(
    policy_servers: MailServers,
) -> None:
    mailbox = new_mailbox("lv")
    switch_on(mailbox)
    _phone, text = actions.create_app_password(
        mailbox,
        label="iPhone",
        protocols={"imap", "pop3", "smtp"},
        networks=["127.0.0.0/30"],
        actor=Actor.user(mailbox),
    )
    address = mailbox.address

    assert imap_login(policy_servers, address, text, source="127.0.0.1")

    with pytest.raises(imaplib.IMAP4.error) as imap_refused:
        imap_login(policy_servers, address, text, source="127.0.0.9")
    assert fence_reason("127.0.0.9") in imap_error_text(imap_refused.value), policy_servers.logs()

    with pytest.raises(poplib.error_proto) as pop3_refused:
        pop3_login(policy_servers, address, text, source="127.0.0.10")
    assert fence_reason("127.0.0.10") in bytes(pop3_refused.value.args[0]).decode()

    with pytest.raises(smtplib.SMTPAuthenticationError) as smtp_refused:
        smtp_send(policy_servers, address, text, implicit_tls=True, source="127.0.0.11")
    assert smtp_refused.value.smtp_code == 535
    assert fence_reason("127.0.0.11") in smtp_error_text(smtp_refused.value), policy_servers.logs()
    # From inside the fence it sends too.
    smtp_send(policy_servers, address, text, implicit_tls=True, source="127.0.0.2")
