"""One password per device, end to end: the panel, real Dovecot and Postfix, the served policy.

Dovecot and Postfix start from the deploy/ templates (tests/mailservers.py), so the passdb query,
the auth-policy attributes and ``imap_id_retain`` under test are the ones deployed.
"""

from __future__ import annotations

import html
import imaplib
import poplib
import re
import smtplib
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, activity
from mailaccess.models import AppPassword
from tests.conftest import signed_in_client
from tests.mailservers import (
    IMAP4SSLFrom,
    MailServers,
    imap_error_text,
    imap_login,
    pop3_login,
    reached_by_actions,
    smtp_error_text,
    smtp_send,
)
from tests.test_mail_servers_e2e import lookup, new_mailbox

PANEL = "mailaccess:mail_programs"
PASSWORD_IN_PAGE = re.compile(r'<output id="new-password"[^>]*>([^<]+)</output>')
SCOPE_MESSAGE = (
    "This password is not for %(protocol)s, only for %(allowed)s. Add a password that allows "
    "%(protocol)s in Settings."
)


def latvian_scope_message(protocol: str, allowed: str) -> str:
    with translation.override("lv"):
        return gettext(SCOPE_MESSAGE) % {"protocol": protocol, "allowed": allowed}


def post_panel_form(client: Client, url: str, data: dict[str, Any]) -> str:
    """Send a form of the panel like a browser; returns the page answered."""
    page = client.get(reverse(PANEL)).content.decode()
    once = re.search(r'name="once" value="([^"]+)"', page)
    fields = {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    if once:
        fields.setdefault("once", once[1])
    response = client.post(url, fields, follow=True)
    assert response.status_code == 200, response.content.decode()[:500]
    return response.content.decode()


def shown_password(page: str) -> str:
    match = PASSWORD_IN_PAGE.search(page)
    assert match, "the panel showed no password"
    return match.group(1).strip()


def last_use_in_panel(client: Client, app_password: AppPassword) -> str:
    page = client.get(reverse(PANEL)).content.decode()
    row = re.search(
        rf'<tr id="app-password-{app_password.pk}">.*?<td class="last-use"[^>]*>(.*?)</td>',
        page,
        re.S,
    )
    assert row, f"password {app_password.pk} is not listed"
    return html.unescape(re.sub(r"\s+", " ", row[1])).strip()


def imap_login_as(
    servers: MailServers, user: str, password: str, program: str, source: str = "127.0.0.1"
) -> None:
    """Log in the way iOS Mail does: IMAP ID with the program's name first, then LOGIN."""
    with IMAP4SSLFrom(
        "127.0.0.1", servers.imaps_port, source=source, ssl_context=servers.tls.client_context()
    ) as client:
        client.xatom("ID", f'("name" "{program}" "version" "17.1")')
        client.login(user, password)
        client.logout()


@pytest.fixture
def policy_servers(
    transactional_db: None,
    policy_server: Any,
    policy_redis: None,
    mail_servers_factory: Any,
    settings: Any,
) -> MailServers:
    return reached_by_actions(mail_servers_factory(policy=policy_server), settings)


@pytest.mark.e2e
@pytest.mark.postgres
def test_each_device_has_its_own_password_scoped_revocable_and_with_its_last_use(
    policy_servers: MailServers,
) -> None:
    servers = policy_servers
    mailbox = new_mailbox()
    address = mailbox.address
    client = signed_in_client(mailbox)

    # Access on: the first password, for every protocol. Then one for the phone, IMAP only.
    first_text = shown_password(post_panel_form(client, reverse(PANEL), {"external_access": "on"}))
    phone_page = post_panel_form(
        client, reverse("mailaccess:add_app_password"), {"label": "iPhone", "protocols": ["imap"]}
    )
    phone_text = shown_password(phone_page)
    first, phone = AppPassword.objects.live().filter(mailbox=mailbox).order_by("pk")
    assert phone.label == "iPhone" and first_text != phone_text

    # Both log in to IMAP.
    assert imap_login(servers, address, first_text)
    imap_login_as(servers, address, phone_text, "iOS Mail")

    # The phone's password is refused by SMTP AUTH (both ports) and POP3, saying why.
    reason = latvian_scope_message("SMTP", "IMAP")
    for source, implicit_tls in [("127.0.0.21", False), ("127.0.0.22", True)]:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp_send(servers, address, phone_text, implicit_tls=implicit_tls, source=source)
        assert refused.value.smtp_code == 535
        assert reason in smtp_error_text(refused.value), servers.logs()
    with pytest.raises(poplib.error_proto) as pop3_refused:
        pop3_login(servers, address, phone_text, source="127.0.0.23")
    assert latvian_scope_message("POP3", "IMAP") in pop3_refused.value.args[0].decode()
    # The first password sends.
    smtp_send(servers, address, first_text, implicit_tls=True)

    # The panel shows each one's last use: protocol, client IP and, from IMAP ID, the program
    # (written by the minutely activity job, run here as Celery beat would).
    activity.compact()
    phone_use = last_use_in_panel(client, phone)
    assert "IMAP" in phone_use and "127.0.0.1" in phone_use and "iOS Mail 17.1" in phone_use, (
        phone_use,
        servers.logs(),
    )
    first_use = last_use_in_panel(client, first)
    assert "SMTP" in first_use and "127.0.0.1" in first_use, (first_use, servers.logs())

    # Revoking the first leaves the phone's working.
    post_panel_form(client, reverse("mailaccess:revoke_app_password", args=[first.pk]), {})
    with pytest.raises(imaplib.IMAP4.error) as old_refused:
        imap_login(servers, address, first_text, source="127.0.0.24")
    assert "[AUTHENTICATIONFAILED]" in imap_error_text(old_refused.value)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp_send(servers, address, first_text, implicit_tls=True, source="127.0.0.25")
    imap_login_as(servers, address, phone_text, "iOS Mail")

    # Switching off ends the phone's too, with the reason.
    post_panel_form(client, reverse(PANEL), {})
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(servers, address, phone_text, source="127.0.0.26")


# --- the passdb view names the password that matched (PostgreSQL) --------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_passdb_names_the_matching_password_only_while_it_works(alice: Mailbox) -> None:
    first = actions.enable_access(alice, actor=Actor.user(alice))
    assert first is not None
    phone, phone_text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
    )
    first_row = AppPassword.objects.live().filter(mailbox=alice).exclude(pk=phone.pk).get()

    [row] = lookup("alice@inbox.lv", phone_text, "imap")
    assert row["app_password"] == phone.pk
    assert lookup("alice@inbox.lv", phone_text, "smtp") == []
    assert lookup("alice@inbox.lv", first, "smtp")[0]["app_password"] == first_row.pk

    actions.revoke_app_password(alice, phone.pk, actor=Actor.user(alice))
    assert lookup("alice@inbox.lv", phone_text, "imap") == []
    assert len(lookup("alice@inbox.lv", first, "imap")) == 1

    actions.disable_access(alice, actor=Actor.user(alice))
    [refused] = lookup("alice@inbox.lv", first, "imap")
    # Named on a refused row too: the policy's allow after the check learns from it that the
    # password was verified, and only then tells why (migration 0012).
    assert refused["nologin"] == "y" and refused["app_password"] == first_row.pk
