"""Web sign-in throttling: every attempt is counted before its password or code is checked.

The counters live in Django's cache: Redis in production (shared by every web process), the
process's own memory on the embedded default. Each attempt first adds one to its counters
(``cache.add`` then ``cache.incr``: atomic on both backends) and compares the *new* value with
the limit; only an attempt within every limit has its password checked. So fifty concurrent
guesses against a limit of ten get ten checks, not fifty: no two requests can read the same
count. An attempt whose password (or code) turns out right gives its count back, so the limits
are limits on failures. Each counter's window starts at its first attempt and lasts
``SIGN_IN_WINDOW_SECONDS``.

Which counters an attempt goes to depends on the browser:

- A browser the owner has completed a sign-in from carries a *device cookie* for that mailbox
  (OWASP's "Slow Down Online Guessing Attacks with Device Cookies"): signed with the
  ``SECRET_KEY``, naming a random device id, bound to the address and to the current web
  password hash (a new password voids every earlier cookie). Its attempts count only against
  that device's own limit, so no number of failures from elsewhere locks the owner out there.
- Every other browser counts against the mailbox address (as typed, whether or not such a
  mailbox exists: an unknown address and a wrong password behave alike) and against its client
  network: the IPv4 address, or the IPv6 /64, which is what one subscriber is given.

Trade-off: a stranger can still lock a mailbox's sign-in *from new browsers* for one window by
failing on purpose; the owner's known browsers are spared, and the per-network counter limits
how many mailboxes one client can do that to.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.models import Mailbox, normalize_address
from mailaccess.mailserver.auth_policy import client_network


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, for every web-side use (throttles, audit rows, the panel).

    REMOTE_ADDR only: a header like X-Forwarded-For is the client's to invent, which would
    let anyone dodge the per-IP throttle. Behind a proxy the server sets REMOTE_ADDR from it.
    """
    return request.META.get("REMOTE_ADDR")


DEVICE_COOKIE_PREFIX = "known_device_"
_DEVICE_SALT = "accounts.throttling.device"


def _mailbox_key(address: str) -> str:
    # Hashed: cache keys must be short and plain, and an address is neither guaranteed.
    digest = hashlib.sha256(normalize_address(address).encode()).hexdigest()[:32]
    return f"signin:mailbox:{digest}"


def _ip_key(ip: str | None) -> str:
    network, _address = client_network(ip or "")
    return f"signin:ip:{network or 'unknown'}"


def _device_key(device_id: str) -> str:
    return f"signin:device:{device_id}"


def _count_attempt(key: str) -> int:
    """Add this attempt to the counter and return the new count, atomically."""
    window = settings.SIGN_IN_WINDOW_SECONDS
    # add() starts the window only when no counter exists (SET NX on Redis).
    if cache.add(key, 1, timeout=window):
        return 1
    try:
        count = cache.incr(key)
    except ValueError:
        # The counter expired between add() and incr(): this attempt opens a new window.
        cache.add(key, 0, timeout=window)
        count = cache.incr(key)
    if count == 1:
        # Redis's INCR made the key itself (it expired after Django's existence check):
        # such a key has no expiry, and a counter must never outlive its window.
        cache.touch(key, window)
    return count


def _give_back(key: str) -> None:
    try:
        if cache.decr(key) <= 0:
            # Nothing left to count; and a key DECR created after an expiry has no expiry.
            cache.delete(key)
    except ValueError:
        pass  # the window has ended meanwhile: nothing to give back


@dataclass
class Attempt:
    """One counted attempt; ``refused`` when it is beyond a limit and must not be checked."""

    keys: list[str] = field(default_factory=list)
    refused: bool = False

    def succeeded(self) -> None:
        """The password or code was right: it was not a guess, so it does not count."""
        for key in self.keys:
            _give_back(key)
        self.keys = []


def attempt(address: str, ip: str | None, device: str | None) -> Attempt:
    """Count one attempt at ``address`` before its proof is checked.

    ``device`` is the id from a valid device cookie of this mailbox (``known_device``).
    """
    if device is not None:
        key = _device_key(device)
        return Attempt([key], _count_attempt(key) > settings.SIGN_IN_FAILURES_PER_DEVICE)
    mailbox_key, ip_key = _mailbox_key(address), _ip_key(ip)
    # Both are counted even when the first is over: a refused attempt is an attempt too.
    over_mailbox = _count_attempt(mailbox_key) > settings.SIGN_IN_FAILURES_PER_MAILBOX
    over_ip = _count_attempt(ip_key) > settings.SIGN_IN_FAILURES_PER_IP
    return Attempt([mailbox_key, ip_key], over_mailbox or over_ip)


def signed_in(device: str | None, address: str) -> None:
    """After a completed sign-in: the failures of the way the owner came in are forgiven.

    A known browser clears only its own counter: the owner signing in there must not hand a
    guesser elsewhere a fresh set of guesses. The per-network counter is never cleared:
    otherwise an attacker could reset it by signing in to a mailbox of their own.
    """
    cache.delete(_device_key(device) if device is not None else _mailbox_key(address))


def clear_mailbox(address: str) -> None:
    """After a new web password: guesses at the old one no longer matter."""
    cache.delete(_mailbox_key(address))


def window_minutes() -> int:
    return max(1, settings.SIGN_IN_WINDOW_SECONDS // 60)


# The device cookie: one per mailbox signed in from this browser, so a shared computer keeps
# each owner's. The cookie's name is a keyed hash of the address: it is found from the address
# typed, and says nothing about the mailbox to anyone without the SECRET_KEY.


def _cookie_name(address: str) -> str:
    digest = salted_hmac(_DEVICE_SALT, normalize_address(address), algorithm="sha256")
    return DEVICE_COOKIE_PREFIX + digest.hexdigest()[:16]


def _password_tag(address: str, password_hash: str) -> str:
    """Changes with the web password: a new password voids every device cookie issued before."""
    value = f"{normalize_address(address)}\n{password_hash}"
    return salted_hmac(_DEVICE_SALT, value, algorithm="sha256").hexdigest()[:32]


def known_device(request: HttpRequest, address: str, mailbox: Mailbox | None = None) -> str | None:
    """The device id of this browser's valid cookie for ``address``, or None."""
    name = _cookie_name(address)
    if name not in request.COOKIES:
        return None
    try:
        value = (
            request.get_signed_cookie(
                name, salt=_DEVICE_SALT, max_age=settings.SIGN_IN_DEVICE_COOKIE_DAYS * 86400
            )
            or ""
        )
    except (KeyError, signing.BadSignature):
        return None
    device, _sep, tag = value.partition(":")
    if mailbox is None:
        mailbox = Mailbox.objects.filter(address=normalize_address(address), is_active=True).first()
    if (
        mailbox is None
        or not device
        or not constant_time_compare(tag, _password_tag(mailbox.address, mailbox.password))
    ):
        return None
    return device


def remember_device(response: HttpResponse, mailbox: Mailbox) -> None:
    """Give this browser a fresh device cookie for ``mailbox`` (after a completed sign-in)."""
    value = f"{secrets.token_hex(16)}:{_password_tag(mailbox.address, mailbox.password)}"
    response.set_signed_cookie(
        _cookie_name(mailbox.address),
        value,
        salt=_DEVICE_SALT,
        max_age=settings.SIGN_IN_DEVICE_COOKIE_DAYS * 86400,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        # Sent only with the site's own requests: a sign-in forged from another site
        # cannot spend the owner's device allowance.
        samesite="Strict",
    )
