"""What each mail program needs, as data: the templates only render it.

Steps are translatable strings with ``%(name)s`` placeholders, filled per mailbox, so the
user's own address and server host appear wherever a user name or server goes.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from accounts.models import Mailbox
from mailaccess.models import Protocol

IMAP_PORT = 993
POP3_PORT = 995
SMTP_STARTTLS_PORT = 587
SMTP_SSL_PORT = 465


@dataclass(frozen=True)
class ServerRow:
    direction: Promise
    protocol: str
    host: str
    port: int
    encryption: Promise


def server_table(mailbox: Mailbox) -> list[ServerRow]:
    host = mailbox.mail_host
    incoming, outgoing = _("incoming mail"), _("outgoing mail")
    return [
        ServerRow(incoming, "IMAP", host, IMAP_PORT, _("SSL/TLS (required)")),
        ServerRow(incoming, "POP3", host, POP3_PORT, _("SSL/TLS (required)")),
        ServerRow(outgoing, "SMTP", host, SMTP_STARTTLS_PORT, _("STARTTLS")),
        ServerRow(outgoing, "SMTP", host, SMTP_SSL_PORT, _("SSL/TLS")),
    ]


# Steps shared by several programs: one translation each.
_USER_NAME = _("User name: %(address)s (the full address, not just the part before @).")
_PASSWORD = _(
    "Password: the mail-program password you were shown when you switched access on, "
    "not your web password."
)
_IMAP_SERVER = _("Incoming server (IMAP): %(host)s, port 993, encryption SSL/TLS.")
_POP3_SERVER = _("Incoming server (POP3): %(host)s, port 995, encryption SSL/TLS.")
_SMTP_SERVER = _(
    "Outgoing server (SMTP): %(host)s, port 587 with STARTTLS, or port 465 with SSL/TLS."
)
_SMTP_AUTH = _(
    "Switch on authentication for the outgoing server, with the same user name and password."
)
_LEAVE_ON_SERVER = _(
    "Tick “Leave a copy of messages on the server”. Without it, messages disappear from "
    "the web interface."
)
_CHECK_INTERVAL = _("Check for new mail no more often than every 5 minutes.")
_SWITCH_ON_FIRST = _(
    "First switch on “Allow external POP3/IMAP and SMTP access” in Settings and copy the "
    "password it shows."
)

# Steps of one program that fill in fields: named, so that a drawing can be matched to them.
_THUNDERBIRD_ACCOUNT = _(
    "Enter your name, the address %(address)s and the mail-program password, then "
    "choose “Configure manually”."
)
_OUTLOOK_ACCOUNT = _("In Outlook choose “File”, “Add Account”, enter %(address)s.")
_LIVE_MAIL_ACCOUNT = _(
    "Choose “Accounts”, “Email”, enter %(address)s and the mail-program password."
)
_THE_BAT_ACCOUNT = _("Choose “Account”, “New”, enter your name and %(address)s, protocol IMAP.")
_APPLE_ACCOUNT = _("Enter your name, %(address)s and the mail-program password; choose “Sign In”.")
_APPLE_SERVERS = _("Account type IMAP; incoming and outgoing mail server: %(host)s.")
_IOS_ACCOUNT = _("Enter your name, %(address)s and the mail-program password; tap “Next”.")
_IOS_SERVERS = _("Choose IMAP. Incoming and outgoing mail server: %(host)s.")


@dataclass(frozen=True)
class Figure:
    """A drawing of a program's form for one step: each field with the value it gets, the
    user's own address and host filled in (templates/mailaccess/_figure.html)."""

    caption: str
    fields: tuple[tuple[str, str], ...]

    # Label above its box, in a narrow drawing: on a phone it is shown near its own size.
    ROW = 60
    TOP = 46

    @property
    def rows(self) -> list[tuple[str, str, int]]:
        """Each field with the y of its row in the drawing."""
        return [
            (label, value, self.TOP + i * self.ROW) for i, (label, value) in enumerate(self.fields)
        ]

    @property
    def height(self) -> int:
        return self.TOP + len(self.fields) * self.ROW + 4


def _step_figure(step: Promise, mailbox: Mailbox) -> Figure | None:
    """The drawing of a step that fills in fields, or None for a step that only names a menu
    or gives advice (a drawing of a menu would imitate one version of each program and be
    wrong after its next release). Matched by identity: a lazy string compares by its text.

    The separate user-name and password steps get none: the server drawings above them
    already show both fields with their values.
    """
    host, address = mailbox.mail_host, mailbox.address
    login = ((str(_("User name")), address), (str(_("Password")), str(_("Mail-program password"))))
    if step is _IMAP_SERVER or step is _POP3_SERVER:
        protocol, port = ("IMAP", IMAP_PORT) if step is _IMAP_SERVER else ("POP3", POP3_PORT)
        return Figure(
            str(_("incoming mail")),
            (
                (str(_("Protocol")), protocol),
                (str(_("Server")), host),
                (str(_("Port")), str(port)),
                (str(_("Encryption")), "SSL/TLS"),
                *login,
            ),
        )
    if step is _SMTP_SERVER:
        return Figure(
            str(_("outgoing mail")),
            (
                (str(_("Server")), host),
                (str(_("Port")), str(SMTP_STARTTLS_PORT)),
                (str(_("Encryption")), "STARTTLS"),
                *login,
            ),
        )
    account = _account_figure(step, address)
    if account is not None:
        return account
    if step is _APPLE_SERVERS or step is _IOS_SERVERS:
        return Figure(
            str(_("incoming and outgoing mail")),
            (
                (str(_("Account type")), "IMAP"),
                (str(_("Incoming mail server")), host),
                (str(_("Outgoing mail server")), host),
                *login,
            ),
        )
    return None


def _account_figure(step: Promise, address: str) -> Figure | None:
    """A new account's first form: the fields each program asks for there."""
    name = (str(_("Name")), str(_("Your name")))
    email = (str(_("E-mail address")), address)
    password = (str(_("Password")), str(_("Mail-program password")))
    # Pairs, not a dict: a lazy string hashes by its translated text.
    steps: tuple[tuple[Promise, tuple[tuple[str, str], ...]], ...] = (
        (_THUNDERBIRD_ACCOUNT, (name, email, password)),
        (_APPLE_ACCOUNT, (name, email, password)),
        (_IOS_ACCOUNT, (name, email, password)),
        (_LIVE_MAIL_ACCOUNT, (email, password)),
        (_OUTLOOK_ACCOUNT, (email,)),
        (_THE_BAT_ACCOUNT, (name, email, (str(_("Protocol")), "IMAP"))),
    )
    for account_step, account_fields in steps:
        if step is account_step:
            return Figure(str(_("new account")), account_fields)
    return None


@dataclass(frozen=True)
class Program:
    slug: str
    name: str
    protocol: Protocol
    steps: tuple[Promise, ...]

    def render_steps(self, mailbox: Mailbox) -> list[str]:
        values = {"address": mailbox.address, "host": mailbox.mail_host}
        return [str(step) % values for step in self.steps]

    def illustrated_steps(self, mailbox: Mailbox) -> list[tuple[str, Figure | None]]:
        """Each step's text, with a drawing of the form where a step fills in fields."""
        return list(
            zip(
                self.render_steps(mailbox),
                (_step_figure(step, mailbox) for step in self.steps),
                strict=True,
            )
        )


PROGRAMS: tuple[Program, ...] = (
    Program(
        "thunderbird-imap",
        "Mozilla Thunderbird",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _("In Thunderbird open the menu, choose “Account Settings”, then “Add Mail Account”."),
            _THUNDERBIRD_ACCOUNT,
            _IMAP_SERVER,
            _SMTP_SERVER,
            _USER_NAME,
            _("Authentication: “Normal password”. Choose “Done”."),
            _CHECK_INTERVAL,
        ),
    ),
    Program(
        "outlook-imap",
        "Microsoft Outlook",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _OUTLOOK_ACCOUNT,
            _("Open “Advanced options”, tick “Let me set up my account manually”, choose IMAP."),
            _IMAP_SERVER,
            _SMTP_SERVER,
            _USER_NAME,
            _PASSWORD,
            _SMTP_AUTH,
        ),
    ),
    Program(
        "windows-live-mail-imap",
        "Windows Live Mail",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _LIVE_MAIL_ACCOUNT,
            _("Tick “Manually configure server settings” and choose IMAP as the server type."),
            _IMAP_SERVER,
            _SMTP_SERVER,
            _USER_NAME,
            _SMTP_AUTH,
        ),
    ),
    Program(
        "outlook-pop3",
        "Microsoft Outlook",
        Protocol.POP3,
        (
            # Where a user of an old program looks: the provider's page named Outlook Express
            # here, and this product has no port without encryption for it.
            _(
                "Outlook Express cannot connect: it cannot use TLS 1.2, and there are no ports "
                "without encryption. Use a current program, such as Outlook or Thunderbird."
            ),
            _SWITCH_ON_FIRST,
            _("Add a new e-mail account and choose manual setup with POP3."),
            _POP3_SERVER,
            _SMTP_SERVER,
            _USER_NAME,
            _PASSWORD,
            _SMTP_AUTH,
            _LEAVE_ON_SERVER,
            _("POP3 can check one mailbox from only one device at a time."),
            _CHECK_INTERVAL,
        ),
    ),
    Program(
        "windows-mail",
        "Windows Mail",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _("Open “Settings”, “Manage accounts”, “Add account”, then “Advanced setup”."),
            _("Choose “Internet email” and the account type IMAP4."),
            _USER_NAME,
            _PASSWORD,
            _IMAP_SERVER,
            _SMTP_SERVER,
            _("Leave “Outgoing server requires authentication” and “Require SSL” ticked."),
        ),
    ),
    Program(
        "the-bat",
        "The Bat!",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _THE_BAT_ACCOUNT,
            _IMAP_SERVER,
            _SMTP_SERVER,
            _USER_NAME,
            _PASSWORD,
            _("Tick “My SMTP server requires authentication”."),
            _CHECK_INTERVAL,
        ),
    ),
    Program(
        "apple-mail",
        "Apple Mail (macOS)",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _("Choose “Mail”, “Add Account”, “Other Mail Account”."),
            _APPLE_ACCOUNT,
            _APPLE_SERVERS,
            _USER_NAME,
            _("Mail finds the ports by itself: IMAP 993 and SMTP 465 or 587, all encrypted."),
        ),
    ),
    Program(
        "ios-mail",
        "iOS Mail (iPhone, iPad)",
        Protocol.IMAP,
        (
            _SWITCH_ON_FIRST,
            _("Open “Settings”, “Mail”, “Accounts”, “Add Account”, “Other”, “Add Mail Account”."),
            _IOS_ACCOUNT,
            _IOS_SERVERS,
            _USER_NAME,
            _PASSWORD,
            _("Tap “Save”. iOS uses SSL on port 993 and 465 by itself."),
        ),
    ),
)

PROGRAMS_BY_SLUG = {program.slug: program for program in PROGRAMS}
