"""The texts Dovecot's SQL passdb sends to a refused mail program, in the owner's language.

The passdb view (migrations ``0007_dovecot_passdb_view`` and
``0009_dovecot_passdb_app_password``) answers a right password of a switched-off or blocked
mailbox with ``nologin=y`` and a ``reason``, which IMAP and POP3 clients show. The reason must
be in the mailbox's language, and SQL cannot call gettext: so the translated texts are copied
into the ``ServerMessage`` table, one row per (language, code), and the view joins it on the
mailbox's language. The catalogues (the ``.po`` files) stay the single source: ``sync()`` runs
after every ``migrate`` (a post_migrate receiver, so a deploy, which migrates, always refreshes
it, and so does the test database) and as ``manage.py sync_server_messages`` for a
translation-only change.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import translation

from mailaccess.models import ACCESS_OFF_SERVER_MESSAGE, BlockReason, ServerMessage

ACCESS_OFF_CODE = "access_off"


def texts() -> dict[tuple[str, str], str]:
    """Every (language, code) the view may ask for, with its text from the catalogues."""
    result: dict[tuple[str, str], str] = {}
    for language, _name in settings.LANGUAGES:
        with translation.override(language):
            result[(language, ACCESS_OFF_CODE)] = str(ACCESS_OFF_SERVER_MESSAGE)
            for reason in BlockReason:
                result[(language, reason.value)] = str(reason.server_message)
    return result


def sync(using: str = DEFAULT_DB_ALIAS) -> int:
    """Make the table equal to the catalogues; returns how many rows were written."""
    wanted = texts()
    written = 0
    with transaction.atomic(using=using):
        current = {
            (row.language, row.code): row for row in ServerMessage.objects.using(using).all()
        }
        for key, text in wanted.items():
            row = current.pop(key, None)
            if row is None:
                ServerMessage.objects.using(using).create(language=key[0], code=key[1], text=text)
                written += 1
            elif row.text != text:
                row.text = text
                row.save(using=using, update_fields=["text"])
                written += 1
        stale = [row.pk for row in current.values()]
        if stale:
            ServerMessage.objects.using(using).filter(pk__in=stale).delete()
    return written


def sync_after_migrate(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """post_migrate receiver: refresh the texts once mailaccess's tables exist."""
    # A migrate that unapplied mailaccess's migrations leaves no table to fill.
    if ServerMessage._meta.db_table in connections[using].introspection.table_names():
        sync(using)
