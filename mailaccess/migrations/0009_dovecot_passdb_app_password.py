"""The passdb view names the password that matched: ``app_password``, a Dovecot extra field.

Dovecot keeps a passdb's extra fields with the login, and the auth policy's ``allow`` after
the password check and its ``report`` send them back as ``%{passdb:app_password}`` (verified
on Dovecot 2.3.19): so each login's use is recorded against the very password that matched
(see mailaccess/mailserver/auth_policy.py). The field is NULL (absent) on ``nologin`` rows: a
refused login uses no password. Login processes and Postfix ignore extra fields they do not
know. ``CREATE OR REPLACE VIEW`` may only add columns at the end: the others stay as they were.
"""

import importlib

from django.db import migrations

CREATE_VIEW = """
CREATE OR REPLACE VIEW mailaccess_dovecot_passdb AS
SELECT m.address AS "user",
       p.lookup_key,
       s.service,
       p.password_hash AS password,
       CASE WHEN state.live THEN NULL ELSE 'y' END AS nologin,
       CASE WHEN state.live THEN NULL ELSE msg.text END AS reason,
       CASE WHEN state.live THEN p.id END AS app_password
FROM mailaccess_apppassword p
JOIN accounts_mailbox m ON m.id = p.mailbox_id
LEFT JOIN mailaccess_externalaccess a ON a.mailbox_id = p.mailbox_id
CROSS JOIN LATERAL (
    VALUES ('imap', p.allow_imap), ('pop3', p.allow_pop3), ('smtp', p.allow_smtp)
) AS s (service, allowed)
CROSS JOIN LATERAL (
    SELECT COALESCE(a.enabled AND a.block_reason = '', false) AS access_on,
           COALESCE(a.enabled AND a.block_reason = '', false) AND p.revoked_at IS NULL AS live
) AS state
LEFT JOIN mailaccess_servermessage msg
       ON msg.language = m.language
      AND msg.code = COALESCE(NULLIF(a.block_reason, ''), 'access_off')
WHERE s.allowed
  AND (state.live
       OR (NOT state.access_on
           AND s.service <> 'smtp'
           AND (p.revoked_at IS NULL
                OR NOT EXISTS (SELECT 1 FROM mailaccess_apppassword later
                               WHERE later.mailbox_id = p.mailbox_id
                                 AND later.revoked_at > p.revoked_at))))
"""


def _previous_view() -> str:
    return importlib.import_module("mailaccess.migrations.0007_dovecot_passdb_view").CREATE_VIEW


def create_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_VIEW)


def restore_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP VIEW IF EXISTS mailaccess_dovecot_passdb")
        schema_editor.execute(_previous_view())


class Migration(migrations.Migration):
    dependencies = [
        ("mailaccess", "0007_dovecot_passdb_view"),
        ("mailaccess", "0008_notice_unsent_index"),
    ]

    operations = [migrations.RunPython(create_view, restore_view)]
