"""The passdb view tells why only after the password was verified, on SMTP too (issue 18).

What changes from 0009:

- A refused row (``nologin=y``: access off or blocked, the password live or the one most
  recently ended) now names its password in ``app_password`` too. That extra field comes
  back to the auth policy only in the ``allow`` Dovecot sends *after* the password checked
  out, so it tells the policy "this login's password was verified": only then does the
  policy answer with the reason (``auth_policy.decide_allow``); before the check, and for
  every wrong password, the policy answers exactly as for an unknown address. The policy
  does not record a use for such a login (its report script ignores mailboxes whose access
  is off).
- SMTP gets the refused rows as well. Postfix ignores ``nologin``, so the reason reaches a
  mail program's SMTP AUTH only through the auth policy's ``allow`` after the check, which
  refuses it with the reason (``535 5.7.8 ... <reason>``). When the auth-policy service is
  down (``auth_policy_reject_on_fail = no``), the just-ended password of a refused mailbox
  gets through SMTP AUTH; the SMTP policy daemon then refuses its DATA and END-OF-MESSAGE
  (``smtp_policy``: a blocked or switched-off sender is refused at every stage). Only with
  both policy services down at once could that password send: deploy/README.md says so.
- The most recently ended password is verified for 30 days after
  it ended, then fails like any wrong password. Where its hash lives: in its own AppPassword
  row, the ``{SSHA512}`` Dovecot verifies anyway, so telling the reason costs the same
  passdb lookup and one hash check as a live login, and nothing new is stored. Why 30 days:
  a mail program retries every few minutes, so its owner hears why within the hour; a laptop
  back from a month away still does; past that, whoever still sends that password is more
  likely to be someone who took it than the owner, and deserves no reason.
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
       p.id AS app_password
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
           AND (p.revoked_at IS NULL
                OR (p.revoked_at > now() - interval '30 days'
                    AND NOT EXISTS (SELECT 1 FROM mailaccess_apppassword later
                                    WHERE later.mailbox_id = p.mailbox_id
                                      AND later.revoked_at > p.revoked_at)))))
"""


def _previous_view() -> str:
    return importlib.import_module(
        "mailaccess.migrations.0009_dovecot_passdb_app_password"
    ).CREATE_VIEW


def create_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_VIEW)


def restore_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_previous_view())


class Migration(migrations.Migration):
    dependencies = [("mailaccess", "0011_audit_support_justification")]

    operations = [migrations.RunPython(create_view, restore_view)]
