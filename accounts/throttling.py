"""Web sign-in throttling: failed attempts counted per mailbox address and per client IP.

The counters live in Django's cache: Redis in production (shared by every web process), the
process's own memory on the embedded default. Each counter's window starts at its first
failure and lasts ``SIGN_IN_WINDOW_SECONDS``; once a counter reaches its limit, sign-in is
refused without even checking the password, so guessing gains nothing.

The per-mailbox counter is keyed by the address as typed (normalised), whether or not such a
mailbox exists: an unknown address and a wrong password behave exactly alike. Trade-off: a
stranger can lock a mailbox's web sign-in for one window by failing on purpose; the window is
short and the per-IP counter limits how many mailboxes one client can do that to.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache

from accounts.models import normalize_address


def _mailbox_key(address: str) -> str:
    # Hashed: cache keys must be short and plain, and an address is neither guaranteed.
    digest = hashlib.sha256(normalize_address(address).encode()).hexdigest()[:32]
    return f"signin:mailbox:{digest}"


def _ip_key(ip: str | None) -> str:
    return f"signin:ip:{ip or 'unknown'}"


def _count(key: str) -> int:
    return int(cache.get(key) or 0)


def _increment(key: str) -> None:
    # add() starts the window only if no counter exists; incr() keeps the expiry it has.
    cache.add(key, 0, timeout=settings.SIGN_IN_WINDOW_SECONDS)
    try:
        cache.incr(key)
    except ValueError:
        # The counter expired between add() and incr(): this failure opens a new window.
        cache.set(key, 1, timeout=settings.SIGN_IN_WINDOW_SECONDS)


def is_throttled(address: str, ip: str | None) -> bool:
    return (
        _count(_mailbox_key(address)) >= settings.SIGN_IN_FAILURES_PER_MAILBOX
        or _count(_ip_key(ip)) >= settings.SIGN_IN_FAILURES_PER_IP
    )


def record_failure(address: str, ip: str | None) -> None:
    _increment(_mailbox_key(address))
    _increment(_ip_key(ip))


def clear_mailbox(address: str) -> None:
    """After a successful sign-in or a new web password.

    The per-IP counter is never cleared: otherwise an attacker could reset it by signing in
    to a mailbox of their own between guesses.
    """
    cache.delete(_mailbox_key(address))


def window_minutes() -> int:
    return max(1, settings.SIGN_IN_WINDOW_SECONDS // 60)
