"""The passdb table Dovecot reads stays exactly the view's rows through every access change.

The view ``mailaccess_dovecot_passdb`` defines who may log in; the table ``mailaccess_passdb``
(issue 23) is what Dovecot's query reads, one covering index lookup. The access actions
rewrite a mailbox's rows in their own transaction: after each change, here, the table must
equal the view, and Dovecot's query (as deploy/dovecot/dovecot-sql.conf.ext has it) must
answer every login exactly as the view would.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Mailbox, Status
from audit.models import Actor
from mailaccess import actions, passdb
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, ServerMessage

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SQL_CONF = Path(__file__).resolve().parent.parent / "deploy" / "dovecot" / "dovecot-sql.conf.ext"
TABLE_ROWS = """
SELECT mailbox_id, "user", lookup_key, service, password, nologin, reason, app_password,
       expires_at
FROM mailaccess_passdb
"""
VIEW_ROWS = """
SELECT p.mailbox_id, v."user", v.lookup_key, v.service, v.password, v.nologin, v.reason,
       v.app_password, p.revoked_at + interval '30 days'
FROM mailaccess_dovecot_passdb v JOIN mailaccess_apppassword p ON p.id = v.app_password
"""


def table_rows() -> set[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(TABLE_ROWS)
        return set(cursor.fetchall())


def view_rows() -> set[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(VIEW_ROWS)
        return set(cursor.fetchall())


def assert_exact() -> None:
    assert table_rows() == view_rows()


def dovecot_answer(user: str, password: str, service: str) -> list[tuple[Any, ...]]:
    """The rows Dovecot's configured query returns for a login."""
    query = re.search(r"^password_query = (.*)$", SQL_CONF.read_text(), re.MULTILINE)
    assert query
    text = (
        query.group(1)
        .replace("%{sha256:password}", hashlib.sha256(password.encode()).hexdigest())
        .replace("%u", user)
        .replace("%s", service)
    )
    with connection.cursor() as cursor:
        cursor.execute(text.replace("%", "%%"))
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def view_answer(user: str, password: str, service: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT "user", password, nologin, reason, app_password FROM mailaccess_dovecot_passdb'
            ' WHERE "user" = %s AND lookup_key = %s AND service = %s',
            [user, hashlib.sha256(password.encode()).hexdigest(), service],
        )
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def assert_same_answers(mailbox: Mailbox, passwords: list[str]) -> None:
    for password in [*passwords, "wrong"]:
        for service in ("imap", "pop3", "smtp"):
            assert dovecot_answer(mailbox.address, password, service) == view_answer(
                mailbox.address, password, service
            ), (password, service)


def test_every_access_change_keeps_the_table_exact(alice: Mailbox, bob: Mailbox) -> None:
    user = Actor.user(alice)
    staff = Actor.system("test")
    seen: list[str] = []

    first = actions.enable_access(alice, actor=user)
    assert first is not None
    seen.append(first)
    assert_exact()
    assert len(table_rows()) == 3
    second = actions.create_app_password(alice, label="phone", protocols={"imap"}, actor=user)
    seen.append(second[1])
    assert_exact()
    phone = AppPassword.objects.filter(mailbox=alice, label="phone").get()
    actions.revoke_app_password(alice, phone.pk, actor=user)
    assert_exact()
    actions.disable_access(alice, actor=user)
    assert_exact()
    # Switched off: the most recently ended password still answers, with the reason.
    assert any(row[5] == "y" and row[6] for row in table_rows())
    assert_same_answers(alice, seen)
    seen.append(actions.enable_access(alice, actor=user) or "")
    assert_exact()
    actions.block_access(alice, BlockReason.COMPROMISED, actor=staff)
    assert_exact()
    assert_same_answers(alice, seen)
    actions.unblock_access(alice, actor=staff)
    assert_exact()
    seen.append(actions.enable_access(alice, actor=user) or "")
    actions.enable_access(bob, actor=Actor.user(bob))
    assert_exact()
    actions.block_access_many(
        ExternalAccess.objects.filter(mailbox__in=[alice, bob]),
        BlockReason.COMPROMISED,
        actor=staff,
    )
    assert_exact()
    actions.mark_inactive_many(Mailbox.objects.filter(pk=bob.pk), actor=staff)
    actions.change_status(bob, Status.ACTIVE, actor=staff)
    assert_exact()
    assert_same_answers(alice, seen)


def test_the_reason_follows_the_mailboxs_language_and_the_catalogues(alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    actions.disable_access(alice, actor=Actor.user(alice))
    alice.language = "en"
    alice.save(update_fields=["language"])
    assert_exact()
    alice.language = "ru"
    alice.save()
    assert_exact()
    # A catalogue change reaches the refused rows through sync (manage.py sync_server_messages).
    ServerMessage.objects.filter(language="ru").update(text="stale")
    passdb.refresh([alice.pk])
    assert {row[6] for row in table_rows()} == {"stale"}
    passdb.sync()
    assert_exact()
    assert "stale" not in {row[6] for row in table_rows()}


def test_an_ended_password_stops_telling_why_after_30_days(alice: Mailbox) -> None:
    password = actions.enable_access(alice, actor=Actor.user(alice))
    assert password is not None
    actions.disable_access(alice, actor=Actor.user(alice))
    assert dovecot_answer(alice.address, password, "imap")
    # Ended 30 days ago less a second; the table copied its end then.
    AppPassword.objects.filter(mailbox=alice).update(
        revoked_at=timezone.now() - timedelta(days=30) + timedelta(seconds=1)
    )
    passdb.refresh([alice.pk])
    assert dovecot_answer(alice.address, password, "imap")
    # No action runs when the 30 days are over: the query's own clock refuses it then.
    time.sleep(1.5)
    assert dovecot_answer(alice.address, password, "imap") == []
    assert view_answer(alice.address, password, "imap") == []


def test_the_migration_fills_the_table_from_the_existing_rows(alice: Mailbox, bob: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    actions.enable_access(bob, actor=Actor.user(bob))
    actions.disable_access(bob, actor=Actor.user(bob))
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE mailaccess_passdb")
    assert table_rows() == set()
    migration = importlib.import_module("mailaccess.migrations.0013_dovecot_passdb_table")
    with transaction.atomic(), connection.schema_editor() as editor:
        migration.fill(None, editor)
    assert_exact()
    assert len(table_rows()) == 6
