"""Notices by e-mail: what the owner reads, in their language, and its delivery exactly once.

``mailaccess.actions`` creates the Notice rows and announces them after commit;
``tasks.queue_notices`` is registered for that (apps.py) and hands them to Celery, which calls
``send_notice``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.urls import reverse
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from mailaccess import actions
from mailaccess.models import EXPIRY_WARNING_BEFORE, ExternalAccess, Notice, NoticeKind


def send_notice(notice_id: int, *, connection: Any = None) -> bool:
    """E-mail one notice unless it went out already; True if this call sent it."""
    return actions.deliver_notice(notice_id, lambda notice: message(notice, connection).send())


def message(notice: Notice, connection: Any = None) -> EmailMessage:
    mailbox = notice.mailbox
    with translation.override(mailbox.language):
        if notice.kind == NoticeKind.EXPIRY_WARNING:
            subject, paragraphs = _expiry_warning(notice)
        elif notice.kind == NoticeKind.NEW_PROGRAM:
            subject, paragraphs = _new_program(notice)
        else:
            subject, paragraphs = _blocked(notice)
        settings_url = settings.PORTAL_URL + reverse("mailaccess:mail_programs")
        body = "\n\n".join(
            [
                _("Hello,"),
                *paragraphs,
                _("Settings: %(url)s") % {"url": settings_url},
                _("This message was sent automatically; please do not reply to it."),
            ]
        )
    return EmailMessage(
        subject,
        body + "\n",
        to=[mailbox.address],
        connection=connection,
        headers={"Auto-Submitted": "auto-generated"},
    )


def _blocked(notice: Notice) -> tuple[str, list[str]]:
    address = notice.mailbox.address
    block = notice.block
    assert block is not None, "a block notice names its reason"
    return (
        _("POP3/IMAP access to %(address)s is blocked") % {"address": address},
        [
            _(
                "External POP3/IMAP and SMTP access to your mailbox %(address)s was switched "
                "off: mail programs can no longer sign in, and their password no longer works."
            )
            % {"address": address},
            _("Why: %(explanation)s") % {"explanation": block.explanation},
            _("What to do: %(cure)s") % {"cure": block.cure},
        ],
    )


def _expiry_warning(notice: Notice) -> tuple[str, list[str]]:
    address = notice.mailbox.address
    try:
        expires_at = notice.mailbox.external_access.expires_at
    except ExternalAccess.DoesNotExist:
        expires_at = None
    expires_on = formats.date_format(
        timezone.localtime(expires_at or notice.created_at + EXPIRY_WARNING_BEFORE), "DATE_FORMAT"
    )
    return (
        _("POP3/IMAP access to %(address)s will be switched off in a week") % {"address": address},
        [
            _(
                "No mail program has used POP3, IMAP or SMTP access to your mailbox %(address)s "
                "for almost two months. Access unused for two months is switched off "
                "automatically."
            )
            % {"address": address},
            # The date stands alone: in a sentence it would need the sentence's case.
            _("Switch-off date: %(date)s") % {"date": expires_on},
            _(
                "To keep it, check your mail with your mail program before then. If you no "
                "longer need it, you need not do anything."
            ),
        ],
    )


def _new_program(notice: Notice) -> tuple[str, list[str]]:
    """ "A new mail program signed in", with the signed "This was not me" link."""
    from mailaccess import activity

    alert = notice.new_program
    address = notice.mailbox.address
    url = settings.PORTAL_URL + reverse(
        "mailaccess:not_me", kwargs={"token": activity.not_me_token(alert)}
    )
    days = activity.NOT_ME_MAX_AGE.days
    return (
        _("A new mail program signed in to %(address)s") % {"address": address},
        [
            _(
                "A mail program signed in to your mailbox %(address)s from a network or as a "
                "program not seen with this password in the last 30 days."
            )
            % {"address": address},
            "\n".join(activity.alert_lines(alert)),
            _(
                "If this was you, you need not do anything. If it was not you, open this link "
                "and sign in: the password will stop working and its open sessions will end. "
                "Then change your web password."
            ),
            _("This was not me: %(url)s") % {"url": url},
            ngettext(
                "The link works once, for %(days)d day.",
                "The link works once, for %(days)d days.",
                days,
            )
            % {"days": days},
        ],
    )
