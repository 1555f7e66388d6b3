"""The view Dovecot's SQL passdb reads (PostgreSQL only; production runs PostgreSQL).

Dovecot's query (deploy/dovecot/dovecot-sql.conf.ext) is

    SELECT "user", password, nologin, reason FROM mailaccess_dovecot_passdb
    WHERE "user" = '%u' AND lookup_key = '%{sha256:password}' AND service = '%s'

``lookup_key`` is unique and a password belongs to one mailbox, and ``service`` picks one of
the three rows each password expands to: so the query returns at most one row (two would make
Dovecot fail the login), found through the unique index. Dovecot then verifies ``password``
(``{SSHA512}``) itself. What the view holds for a password:

- live, and the mailbox's access on and not blocked: a plain row, the login goes ahead;
- access off or blocked: the live passwords (there should be none: switching off revokes them)
  and the mailbox's most recently revoked ones, those that stopped working when access went
  off, give ``nologin=y`` and the reason in the mailbox's language (the ServerMessage table,
  see mailaccess/passdb.py). IMAP and POP3 show it after the right password only; a wrong one
  finds no row and sees the generic failure. Older revoked passwords, and every revoked one
  once access is on again, find no row: they fail like a wrong password;
- a service the password is not allowed (allow_imap/pop3/smtp): no row;
- SMTP of a refused mailbox: no row. Postfix ignores ``nologin`` and would let the old
  password send mail; without a row SMTP AUTH fails even when the auth-policy service (which
  refuses SMTP AUTH with the reason before the password is checked) is down.
"""

from django.db import migrations

CREATE_VIEW = """
CREATE VIEW mailaccess_dovecot_passdb AS
SELECT m.address AS "user",
       p.lookup_key,
       s.service,
       p.password_hash AS password,
       CASE WHEN state.live THEN NULL ELSE 'y' END AS nologin,
       CASE WHEN state.live THEN NULL ELSE msg.text END AS reason
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


def create_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_VIEW)


def drop_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP VIEW IF EXISTS mailaccess_dovecot_passdb")


class Migration(migrations.Migration):
    dependencies = [("mailaccess", "0006_server_messages"), ("accounts", "0001_initial")]

    operations = [migrations.RunPython(create_view, drop_view)]
