"""Documents that let mail programs configure themselves from just an address.

- Thunderbird (and others: K-9/Thunderbird for Android, Evolution, KMail) fetch the
  "autoconfig" clientConfig XML;
- Outlook posts an Autodiscover (POX) request, and new Outlook first asks
  ``autodiscover.json`` where that endpoint is;
- Apple Mail on iOS and macOS installs a configuration profile (a plist).

Everything here is pure: building and parsing documents. The views live in
``mailaccess/autoconfig_views.py``. Every document names the same servers as the panel's
server table (``mailaccess/instructions.py``), so a program set up automatically and one set
up by hand end in the same place.
"""

from __future__ import annotations

import base64
import binascii
import plistlib
import secrets
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import cache
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import Mailbox, normalize_address
from mailaccess import passwords
from mailaccess.instructions import IMAP_PORT, SMTP_SSL_PORT
from mailaccess.models import AppPassword

# Host name prefixes under which a mail domain publishes its discovery endpoints
# (autoconfig.inbox.lv, autodiscover.inbox.lv): the domain is what follows them.
DISCOVERY_HOST_PREFIXES = ("autoconfig.", "autodiscover.")

# Shown by Thunderbird before it tries to log in: access is off by default, so the first
# login would fail with a puzzling error otherwise.
# The same words as the first step of every program's instructions: one translation.
ENABLE_INSTRUCTION = gettext_lazy(
    "First switch on “Allow external POP3/IMAP and SMTP access” in Settings and copy the "
    "password it shows."
)


@dataclass(frozen=True)
class MailDomain:
    """A hosted mail domain and the server its mail programs use."""

    name: str
    host: str

    @property
    def display_name(self) -> str:
        return self.name.capitalize()


def mail_domain(name: str) -> MailDomain | None:
    name = name.strip().lower().rstrip(".")
    host = settings.MAIL_DOMAINS.get(name)
    return MailDomain(name, host) if host else None


def domain_of_address(address: str) -> MailDomain | None:
    local, sep, domain = normalize_address(address).rpartition("@")
    if not sep or not local:
        return None
    return mail_domain(domain)


def domain_of_host(host: str) -> MailDomain | None:
    """``autoconfig.inbox.lv`` and ``inbox.lv`` itself both mean inbox.lv."""
    host = host.split(":", 1)[0].lower()
    for prefix in DISCOVERY_HOST_PREFIXES:
        if host.startswith(prefix):
            return mail_domain(host.removeprefix(prefix))
    return mail_domain(host)


def instructions_in_every_language() -> list[tuple[str, str]]:
    """(language code, text) of the switch-on instruction, for each language of the site."""
    texts = []
    for code, _name in settings.LANGUAGES:
        with translation.override(code):
            texts.append((code, str(ENABLE_INSTRUCTION)))
    return texts


# --- Outlook Autodiscover (POX), [MS-OXDSCLI] ---------------------------------------------

OUTLOOK_RESPONSE_SCHEMA = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
# Autodiscover request bodies are a few hundred bytes; anything much larger is not Outlook.
AUTODISCOVER_MAX_BODY = 16 * 1024


class AutodiscoverError(Exception):
    """A request the spec answers with an error code: 600 or 601."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_request() -> AutodiscoverError:
    return AutodiscoverError(600, "Invalid Request")


def parse_autodiscover_request(body: bytes) -> str:
    """The e-mail address an Outlook Autodiscover request asks about.

    defusedxml refuses entity declarations, so a "billion laughs" body is an invalid request
    instead of gigabytes of memory. Raises AutodiscoverError 600 for anything malformed and
    601 when the client wants a response schema we do not serve (mobilesync is ActiveSync).
    """
    if not body or len(body) > AUTODISCOVER_MAX_BODY:
        raise invalid_request()
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as error:
        raise invalid_request() from error
    if _local_name(root.tag) != "Autodiscover":
        raise invalid_request()
    request = _child(root, "Request")
    if request is None:
        raise invalid_request()
    address_element = _child(request, "EMailAddress")
    schema_element = _child(request, "AcceptableResponseSchema")
    address = (address_element.text or "").strip() if address_element is not None else ""
    schema = (schema_element.text or "").strip() if schema_element is not None else ""
    if not address or "@" not in address:
        raise invalid_request()
    if schema != OUTLOOK_RESPONSE_SCHEMA:
        raise AutodiscoverError(601, "Requested schema version not supported")
    return normalize_address(address)


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    """A child by local name: clients differ in how they spell the namespace."""
    for child in element:
        if _local_name(child.tag) == name:
            return child
    return None


# --- Apple configuration profiles ---------------------------------------------------------

PROFILE_CONTENT_TYPE = "application/x-apple-aspen-config"


def apple_profile(mailbox: Mailbox, password: str | None = None) -> bytes:
    """A .mobileconfig that adds an IMAP account to iOS or macOS Mail.

    Without a password the device asks for it while installing. The identifiers are derived
    from the address, so installing a newer profile replaces the older one instead of adding
    a second account.
    """
    host = mailbox.mail_host
    address = mailbox.address
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}")
    reverse_domain = ".".join(reversed(mailbox.domain.split(".")))
    account: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse_domain}.mail.{base}.account",
        "PayloadUUID": str(uuid.uuid5(base, "account")).upper(),
        "PayloadDisplayName": address,
        "PayloadDescription": _("Mail account %(address)s") % {"address": address},
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerHostName": host,
        "IncomingMailServerPortNumber": IMAP_PORT,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": host,
        # 465 is implicit TLS (RFC 8314); Apple Mail falls back to 587 itself if it must.
        "OutgoingMailServerPortNumber": SMTP_SSL_PORT,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if password is not None:
        account["IncomingPassword"] = password
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse_domain}.mail.{base}",
        "PayloadUUID": str(base).upper(),
        "PayloadDisplayName": _("Mail: %(address)s") % {"address": address},
        "PayloadDescription": _(
            "Adds the mailbox %(address)s to Mail. Mail checks for new messages with IMAP "
            "and sends through SMTP, both encrypted."
        )
        % {"address": address},
        "PayloadOrganization": mailbox.domain.capitalize(),
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# One-time profile with the new password inside.
#
# Design: the password is encrypted with a one-time pad (random bytes as long as the
# password, XOR). The cache keeps the ciphertext, for PROFILE_PASSWORD_MINUTES, under a
# random id; the owner's session keeps the pad under the same id. The download link names
# only the id, so no URL, access log, proxy log or browser history ever holds anything of
# the password: a logged link is a name for two halves that live in two other places (the
# cache, usually Redis, and the session table in PostgreSQL), only for this one session and
# only until the first download, refusal or expiry. A cache dump alone is ciphertext without
# its key; a session row alone is a key without its ciphertext. A one-time pad needs no
# crypto library and, used once, cannot be broken.
#
# Every claim ends the stash, whether it gives the password or not: a refused link (another
# session or mailbox, sudo mode over, a second try) is never worth keeping, and a secret
# nobody is going to fetch should not wait ten minutes in Redis. The password must also
# still be live: switching access off and on again makes an unused link useless.

_STASH_PREFIX = "apple-profile:"
_PADS_SESSION_KEY = "apple_profile_pads"
# secrets.token_urlsafe(18): what a link may name. Anything else is not looked up at all.
_STASH_ID_LENGTH = 24
_STASH_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _stash_key(stash_id: str) -> str:
    return _STASH_PREFIX + stash_id


def _is_stash_id(text: str) -> bool:
    return len(text) == _STASH_ID_LENGTH and set(text) <= _STASH_ID_CHARS


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def profile_password_minutes() -> int:
    return int(settings.APPLE_PROFILE_PASSWORD_MINUTES)


def profile_password_lifetime() -> timedelta:
    return timedelta(minutes=profile_password_minutes())


def stash_profile_password(session: SessionBase, mailbox: Mailbox, password: str) -> str:
    """Keep the new password for one download in this session; return the id for the link."""
    secret = password.encode()
    pad = secrets.token_bytes(len(secret))
    stash_id = secrets.token_urlsafe(18)
    lifetime = profile_password_lifetime()
    expires = (timezone.now() + lifetime).timestamp()
    cache.set(
        _stash_key(stash_id),
        {
            "mailbox": mailbox.pk,
            "ciphertext": _b64(_xor(secret, pad)),
            # The cache's own expiry may run on another clock (Redis): check ours too.
            "expires": expires,
        },
        timeout=int(lifetime.total_seconds()),
    )
    now = timezone.now().timestamp()
    pads = {
        kept_id: kept
        for kept_id, kept in _session_pads(session).items()
        if kept.get("expires", 0) > now
    }
    pads[stash_id] = {"pad": _b64(pad), "expires": expires}
    session[_PADS_SESSION_KEY] = pads
    return stash_id


def _session_pads(session: SessionBase) -> dict[str, dict[str, Any]]:
    pads = session.get(_PADS_SESSION_KEY)
    return dict(pads) if isinstance(pads, dict) else {}


def _take_pad(session: SessionBase, stash_id: str) -> str | None:
    pads = _session_pads(session)
    kept = pads.pop(stash_id, None)
    if kept is not None:
        session[_PADS_SESSION_KEY] = pads
    return kept.get("pad") if isinstance(kept, dict) else None


def end_profile_stash(session: SessionBase, stash_id: str) -> None:
    """Forget a download that will not happen: both halves, at once."""
    if not _is_stash_id(stash_id):
        return
    _take_pad(session, stash_id)
    cache.delete(_stash_key(stash_id))


def claim_profile_password(session: SessionBase, mailbox: Mailbox, stash_id: str) -> str | None:
    """The stashed password, once: any claim ends the stash. None when gone or not ours."""
    if not _is_stash_id(stash_id):
        return None
    pad_text = _take_pad(session, stash_id)
    key = _stash_key(stash_id)
    stashed = cache.get(key)
    # delete() says whether it removed the key: of two simultaneous downloads only one wins.
    if not cache.delete(key) or pad_text is None:
        return None
    if not isinstance(stashed, dict) or stashed.get("mailbox") != mailbox.pk:
        return None
    if timezone.now().timestamp() >= stashed["expires"]:
        return None
    try:
        password = _xor(_unb64(stashed["ciphertext"]), _unb64(pad_text)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    live = AppPassword.objects.live().filter(
        mailbox=mailbox, lookup_key=passwords.lookup_key(password)
    )
    return password if live.exists() else None
