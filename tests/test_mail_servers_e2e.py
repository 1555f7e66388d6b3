"""Dovecot and Postfix obey the switch: the passdb view, then the real servers end to end.

The first tests ask the view with the very query Dovecot is configured with (read from
deploy/dovecot/dovecot-sql.conf.ext); the end-to-end ones start Dovecot and Postfix from the
deploy/ templates (tests/mailservers.py) and log in with imaplib, poplib, smtplib and curl.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import secrets
import smtplib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, activity, passdb, passwords
from mailaccess.models import (
    ACCESS_OFF_SERVER_MESSAGE,
    AppPassword,
    BlockReason,
    ExternalAccess,
    ServerMessage,
)
from tests.conftest import csrf_post, signed_in_client
from tests.mailservers import (
    DEPLOY,
    MailServers,
    _render_module,
    curl,
    imap_error_text,
    imap_login,
    pop3_login,
    reached_by_actions,
    smtp_error_text,
    smtp_send,
)

WEB_PASSWORD = "e2e-web-password-1"
SQL_CONF = Path(__file__).resolve().parent.parent / "deploy" / "dovecot" / "dovecot-sql.conf.ext"


def latvian(message: Any) -> str:
    with translation.override("lv"):
        return str(message)


def off_reason_lv() -> str:
    return latvian(ACCESS_OFF_SERVER_MESSAGE)


# --- deploy/render.py --------------------------------------------------------------------------


def test_it_renders_every_template_from_the_example_site_file(tmp_path: Path) -> None:
    render = _render_module()

    written = render.render(render.read_site(DEPLOY / "site.env.example"), tmp_path)

    names = {path.relative_to(tmp_path).as_posix() for path in written}
    assert {"dovecot/dovecot.conf", "postfix/main.cf", "postfix/master.cf"} <= names
    for path in written:
        assert not render.PLACEHOLDER.search(path.read_text()), path
    assert "port = 993" in (tmp_path / "dovecot" / "dovecot.conf").read_text()


def test_it_refuses_to_render_with_a_value_missing_or_misspelt(tmp_path: Path) -> None:
    render = _render_module()
    values = render.read_site(DEPLOY / "site.env.example")

    with pytest.raises(render.RenderError, match="IMAPS_PORT"):
        render.render({k: v for k, v in values.items() if k != "IMAPS_PORT"}, tmp_path)
    with pytest.raises(render.RenderError, match="IMAP_PORT"):
        render.render({**values, "IMAP_PORT": "993"}, tmp_path)


# --- the translated server messages (any database) --------------------------------------------


@pytest.mark.django_db
def test_it_keeps_every_server_message_in_every_language_for_the_passdb() -> None:
    rows = {(row.language, row.code): row.text for row in ServerMessage.objects.all()}

    assert rows[("lv", "access_off")] == off_reason_lv()
    assert rows[("lv", "faulty_program")] == latvian(BlockReason.FAULTY_PROGRAM.server_message)
    with translation.override("en"):
        assert rows[("en", "support")] == str(BlockReason.SUPPORT.server_message)
    assert len(rows) == len(settings.LANGUAGES) * (len(BlockReason) + 1)


@pytest.mark.django_db
def test_it_brings_a_changed_or_lost_message_back_from_the_catalogues() -> None:
    ServerMessage.objects.filter(language="lv", code="access_off").update(text="stale")
    ServerMessage.objects.filter(language="en", code="idle").delete()
    ServerMessage.objects.create(language="de", code="access_off", text="gone")

    assert passdb.sync() == 2

    assert ServerMessage.objects.get(language="lv", code="access_off").text == off_reason_lv()
    assert ServerMessage.objects.filter(language="en", code="idle").exists()
    assert not ServerMessage.objects.filter(language="de").exists()
    assert passdb.sync() == 0


# --- the passdb view, asked with Dovecot's own query (PostgreSQL) ------------------------------


def dovecot_query() -> str:
    """password_query from the deployed file, with Dovecot's variables as SQL parameters."""
    line = next(
        line for line in SQL_CONF.read_text().splitlines() if line.startswith("password_query")
    )
    query = line.partition("=")[2].strip()
    for variable, parameter in [
        ("'%u'", "%(user)s"),
        ("'%{sha256:password}'", "%(key)s"),
        ("'%s'", "%(service)s"),
    ]:
        assert variable in query
        query = query.replace(variable, parameter)
    return query


def lookup(user: str, password: str, service: str) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            dovecot_query(),
            {"user": user, "key": passwords.lookup_key(password), "service": service},
        )
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def switch_on(mailbox: Mailbox) -> str:
    text = actions.enable_access(mailbox, actor=Actor.user(mailbox))
    assert text is not None
    return text


def switch_off(mailbox: Mailbox) -> None:
    assert actions.disable_access(mailbox, actor=Actor.user(mailbox))


SERVICES = ["imap", "pop3", "smtp"]


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("service", SERVICES)
def test_it_logs_in_the_app_password_while_access_is_on(alice: Mailbox, service: str) -> None:
    app_password = switch_on(alice)

    rows = lookup("alice@inbox.lv", app_password, service)

    assert len(rows) == 1
    assert rows[0]["nologin"] is None and rows[0]["reason"] is None
    assert passwords.verify(app_password, rows[0]["password"])


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("service", SERVICES)
def test_it_never_finds_the_web_password_or_a_wrong_one(alice: Mailbox, service: str) -> None:
    switch_on(alice)

    assert lookup("alice@inbox.lv", "alice-web-password-1", service) == []
    assert lookup("alice@inbox.lv", passwords.generate(), service) == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_does_not_log_in_one_mailbox_with_another_mailboxs_password(
    alice: Mailbox, bob: Mailbox
) -> None:
    switch_on(alice)
    bobs_password = switch_on(bob)

    assert lookup("alice@inbox.lv", bobs_password, "imap") == []


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("service", ["imap", "pop3"])
def test_it_tells_imap_and_pop3_why_after_switching_off_in_latvian(
    alice: Mailbox, service: str
) -> None:
    app_password = switch_on(alice)
    switch_off(alice)

    rows = lookup("alice@inbox.lv", app_password, service)

    assert len(rows) == 1
    assert rows[0]["nologin"] == "y"
    assert rows[0]["reason"] == off_reason_lv()
    assert passwords.verify(app_password, rows[0]["password"])


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_gives_smtp_the_refused_row_so_the_policy_can_say_why(alice: Mailbox) -> None:
    """Postfix ignores nologin: the auth policy refuses the verified login with the reason,
    and the SMTP policy daemon refuses its mail should the auth policy be down."""
    app_password = switch_on(alice)
    switch_off(alice)

    [row] = lookup("alice@inbox.lv", app_password, "smtp")

    assert (row["nologin"], row["reason"]) == ("y", off_reason_lv())


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("service", SERVICES)
def test_it_stops_explaining_to_a_password_ended_over_thirty_days_ago(
    alice: Mailbox, service: str
) -> None:
    app_password = switch_on(alice)
    switch_off(alice)
    AppPassword.objects.filter(mailbox=alice).update(
        revoked_at=timezone.now() - timedelta(days=30, minutes=1)
    )
    # The rows as an access action would have written them then (the table keeps the view's).
    passdb.refresh([alice.pk])

    assert lookup("alice@inbox.lv", app_password, service) == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_gives_the_block_reason_in_the_mailboxs_language(bob: Mailbox) -> None:
    app_password = switch_on(bob)
    actions.block_access(bob, BlockReason.FAULTY_PROGRAM, actor=Actor.system("test"))

    rows = lookup("bob@mail.ee", app_password, "imap")

    with translation.override("en"):
        english = str(BlockReason.FAULTY_PROGRAM.server_message)
    assert rows == [
        {
            "user": "bob@mail.ee",
            "password": rows[0]["password"],
            "nologin": "y",
            "reason": english,
            "app_password": AppPassword.objects.get(mailbox=bob).pk,
        }
    ]


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_keeps_the_block_reason_when_support_blocks_a_mailbox_already_off(
    alice: Mailbox,
) -> None:
    app_password = switch_on(alice)
    switch_off(alice)
    actions.block_access(alice, BlockReason.SUPPORT, actor=Actor.system("test"))

    [row] = lookup("alice@inbox.lv", app_password, "pop3")

    assert row["reason"] == latvian(BlockReason.SUPPORT.server_message)


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("service", SERVICES)
def test_it_fails_the_old_password_like_a_wrong_one_once_access_is_on_again(
    alice: Mailbox, service: str
) -> None:
    old = switch_on(alice)
    switch_off(alice)
    new = switch_on(alice)

    assert lookup("alice@inbox.lv", old, service) == []
    assert len(lookup("alice@inbox.lv", new, service)) == 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_explains_only_to_the_most_recently_ended_password(alice: Mailbox) -> None:
    older = switch_on(alice)
    switch_off(alice)
    recent = switch_on(alice)
    switch_off(alice)

    assert lookup("alice@inbox.lv", older, "imap") == []
    assert lookup("alice@inbox.lv", recent, "imap")[0]["nologin"] == "y"


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_honours_the_protocols_a_password_is_allowed(alice: Mailbox) -> None:
    app_password = switch_on(alice)
    AppPassword.objects.filter(mailbox=alice).update(allow_pop3=False, allow_smtp=False)
    passdb.refresh([alice.pk])  # as the action that sets a password's protocols does

    assert len(lookup("alice@inbox.lv", app_password, "imap")) == 1
    assert lookup("alice@inbox.lv", app_password, "pop3") == []
    assert lookup("alice@inbox.lv", app_password, "smtp") == []
    assert lookup("alice@inbox.lv", app_password, "sieve") == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_returns_one_row_among_several_live_passwords(alice: Mailbox) -> None:
    """Per-device passwords: the lookup key picks the one the program sent."""
    first = switch_on(alice)
    second = passwords.generate()
    AppPassword.objects.create(
        mailbox=alice,
        password_hash=passwords.dovecot_hash(second),
        lookup_key=passwords.lookup_key(second),
    )
    passdb.refresh([alice.pk])  # as create_app_password does

    [row_first] = lookup("alice@inbox.lv", first, "imap")
    [row_second] = lookup("alice@inbox.lv", second, "imap")

    assert passwords.verify(first, row_first["password"])
    assert passwords.verify(second, row_second["password"])


# --- Dovecot and Postfix on the view, without the auth policy ----------------------------------


def new_mailbox(language: str = "lv") -> Mailbox:
    """A mailbox of its own per test: the policy's Redis state is keyed by address."""
    return Mailbox.objects.create_user(
        f"e2e-{secrets.token_hex(4)}@inbox.lv", WEB_PASSWORD, language=language
    )


@pytest.fixture
def plain_servers(transactional_db: None, mail_servers_factory: Any, settings: Any) -> MailServers:
    return reached_by_actions(mail_servers_factory(policy=None), settings)


@pytest.mark.e2e
@pytest.mark.postgres
def test_it_shows_the_reason_to_imap_and_pop3_only_after_the_right_password(
    plain_servers: MailServers,
) -> None:
    mailbox = new_mailbox()
    app_password = switch_on(mailbox)
    assert imap_login(plain_servers, mailbox.address, app_password)
    switch_off(mailbox)

    with pytest.raises(imaplib.IMAP4.error) as right:
        imap_login(plain_servers, mailbox.address, app_password, source="127.0.0.41")
    with pytest.raises(imaplib.IMAP4.error) as wrong:
        imap_login(plain_servers, mailbox.address, "wrong-password", source="127.0.0.42")
    with pytest.raises(poplib.error_proto) as pop3_right:
        pop3_login(plain_servers, mailbox.address, app_password, source="127.0.0.43")

    assert f"[CONTACTADMIN] {off_reason_lv()}" in imap_error_text(right.value)
    assert off_reason_lv() not in imap_error_text(wrong.value)
    assert "[AUTHENTICATIONFAILED]" in imap_error_text(wrong.value)
    pop3_text = pop3_right.value.args[0].decode()
    assert pop3_text == f"-ERR [AUTH] {off_reason_lv()}", plain_servers.logs()


# --- the whole scenario, with the auth policy served for real --------------------------------

PASSWORD_IN_PAGE = re.compile(r'<output id="new-password"[^>]*>([^<]+)</output>')


def panel_switch(client: Client, on: bool) -> str | None:
    """Tick or untick the switch in the panel; returns the password shown, if one is."""
    url = reverse("mailaccess:mail_programs")
    response = csrf_post(client, url, {"external_access": "on"} if on else {})
    assert response.status_code in (200, 302)
    match = PASSWORD_IN_PAGE.search(response.content.decode())
    return match.group(1).strip() if match else None


def panel_uses(client: Client) -> list[str]:
    page = client.get(reverse("mailaccess:mail_programs")).content.decode()
    block = re.search(r'<ul class="uses">(.*?)</ul>', page, re.S)
    return (
        [
            re.sub(r"\s+", " ", item).strip()
            for item in re.findall(r"<li>(.*?)</li>", block[1], re.S)
        ]
        if block
        else []
    )


@pytest.mark.e2e
@pytest.mark.postgres
def test_it_lets_mail_programs_in_only_while_the_switch_is_on(
    policy_servers: MailServers,
) -> None:
    servers = policy_servers
    mailbox = new_mailbox()
    address = mailbox.address
    client = signed_in_client(mailbox)

    # The owner switches access on in the panel and copies the password shown once.
    app_password = panel_switch(client, on=True)
    assert app_password, "the panel showed no password"

    # IMAP over TLS, POP3 over TLS, SMTP AUTH on 587 (STARTTLS) and 465: all let in.
    assert imap_login(servers, address, app_password)
    assert pop3_login(servers, address, app_password) == (0, 0)
    smtp_send(servers, address, app_password, implicit_tls=False)
    smtp_send(servers, address, app_password, implicit_tls=True)
    listing = curl(
        f"imaps://127.0.0.1:{servers.imaps_port}/",
        "--user",
        f"{address}:{app_password}",
        servers=servers,
    )
    assert "INBOX" in listing.stdout
    curl(
        f"pop3s://127.0.0.1:{servers.pop3s_port}/",
        "--user",
        f"{address}:{app_password}",
        servers=servers,
    )

    # The web password works nowhere (each try from its own address: no delays pile up).
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(servers, address, WEB_PASSWORD, source="127.0.0.11")
    with pytest.raises(poplib.error_proto):
        pop3_login(servers, address, WEB_PASSWORD, source="127.0.0.12")
    for source, implicit_tls in [("127.0.0.13", False), ("127.0.0.14", True)]:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp_send(servers, address, WEB_PASSWORD, implicit_tls=implicit_tls, source=source)
    web_by_curl = curl(
        f"smtps://127.0.0.1:{servers.submissions_port}", "--user", f"{address}:{WEB_PASSWORD}",
        "--mail-from", address, "--mail-rcpt", "someone@example.org", "--upload-file", "-",
        "--interface", "127.0.0.15", servers=servers, check=False, input="Subject: x\r\n\r\nx\r\n",
    )  # fmt: skip
    assert web_by_curl.returncode == 67  # CURLE_LOGIN_DENIED

    # The panel shows the last use of each protocol, reported by the policy and written by
    # the minutely activity job (run here as Celery beat would).
    activity.compact()
    uses = panel_uses(client)
    for protocol in ("IMAP", "POP3", "SMTP"):
        assert any(protocol in use and "127.0.0.1" in use for use in uses), (uses, servers.logs())

    # Switched off: IMAP and SMTP AUTH say why, in Latvian.
    assert panel_switch(client, on=False) is None
    with pytest.raises(imaplib.IMAP4.error) as imap_refused:
        imap_login(servers, address, app_password, source="127.0.0.16")
    assert off_reason_lv() in imap_error_text(imap_refused.value), servers.logs()
    with pytest.raises(smtplib.SMTPAuthenticationError) as smtp_refused:
        smtp_send(servers, address, app_password, implicit_tls=False, source="127.0.0.17")
    assert smtp_refused.value.smtp_code == 535
    assert off_reason_lv() in smtp_error_text(smtp_refused.value), servers.logs()

    # Switched on again: a new password works, the old one no longer does.
    new_password = panel_switch(client, on=True)
    assert new_password and new_password != app_password
    with pytest.raises(imaplib.IMAP4.error) as old_refused:
        imap_login(servers, address, app_password, source="127.0.0.18")
    assert off_reason_lv() not in imap_error_text(old_refused.value)
    assert imap_login(servers, address, new_password)
    smtp_send(servers, address, new_password, implicit_tls=True)
    assert ExternalAccess.objects.get(mailbox=mailbox).enabled
