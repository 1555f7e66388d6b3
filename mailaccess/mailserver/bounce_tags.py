"""Signed envelope senders (BATV-style): only a bounce of a message the mailbox really sent counts.

A bounce goes to the envelope sender (MAIL FROM) of the message it reports. Postfix's
submission services rewrite that address, for every message an authenticated mail program
sends, to a tagged one: ``alice@inbox.lv`` becomes ``prvs=TAG=alice@inbox.lv``, where TAG
holds the minute the message was sent, a random nonce and an HMAC of both and the address,
keyed with the portal's ``SECRET_KEY``. Postfix's cleanup asks ``SenderTagMap`` (a socketmap
table served by the policy daemon, ``sender_canonical_maps`` in master.cf) for the tagged
address; the provider's MX strips the tag before delivery (deploy/postfix-policy.md).

Why a stranger cannot make a bounce count (the hijack rule in ``smtp_policy``):

- Only a null-sender message to a tagged address whose HMAC verifies counts. Without the key
  the HMAC (48 bits) is guessed with a chance of 2^-48 per message sent to the MX: no number
  of connections or client addresses makes that feasible.
- A valid tag exists only for a message that the mailbox's own authenticated session sent
  with its own address as the envelope sender (submission refuses any other envelope sender:
  ``reject_authenticated_sender_login_mismatch``), so no other mailbox can mint tags for it.
- Each tag counts once, and only within an hour of the minute it names. Whoever saw tags
  (every recipient of a message sees its tag in Return-Path) can make at most as many
  bounces count as distinct messages of the mailbox they received that were sent in the last
  hour: to reach the limit (30) the mailbox itself must have sent them 30 messages within
  the hour. The free plan cannot send that many in an hour at all.

Cheap on the hot path: minting is one HMAC per message, in the cleanup lookup; verifying one
HMAC per null-sender message at END-OF-MESSAGE on port 25. The DATA check of submission does
not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from functools import lru_cache
from typing import cast

from django.conf import settings

log = logging.getLogger(__name__)

PREFIX = "prvs="
# Hex digits: the minute (epoch minutes, 7 digits until the year 2480), a nonce that makes
# the tags of two messages of one minute differ, and the HMAC.
STAMP_DIGITS = 7
NONCE_DIGITS = 5
MAC_DIGITS = 12
TAG_DIGITS = STAMP_DIGITS + NONCE_DIGITS + MAC_DIGITS
# A tag older than this is not believed: bounces of a spam run arrive within minutes (most are
# written by our own outbound Postfix when the remote server refuses at once), and the
# shorter a tag lives, the fewer a correspondent could ever replay.
TAG_LIFETIME_MS = 3_600_000
# A tag from the future (clocks of two hosts a little apart) is believed up to this much.
CLOCK_SKEW_MS = 120_000
# RFC 5321: a local part of at most 64 octets. A longer tagged address would be refused by
# some servers, so such a mailbox's mail goes out untagged (and its bounces do not count).
MAX_LOCAL_PART = 64

_TAGGED = re.compile(rf"prvs=([0-9a-f]{{{TAG_DIGITS}}})=(.+@.+)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _key(secret: str) -> bytes:
    # A key of its own, derived from SECRET_KEY as Django's salted_hmac does: a tag can never
    # be confused with another signature of the portal.
    return hashlib.sha256(b"mailportal.bounce-tag" + secret.encode()).digest()


def _mac(stamp_nonce: str, address: str) -> str:
    message = f"{stamp_nonce}={address.lower()}".encode()
    digest = hmac.new(_key(settings.SECRET_KEY), message, hashlib.sha256).hexdigest()
    return digest[:MAC_DIGITS]


def tag_sender(address: str, now_ms: int, nonce: int | None = None) -> str | None:
    """The tagged envelope sender for a message sent now, or None when it cannot be tagged."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or address.lower().startswith(PREFIX):
        return None
    if len(PREFIX) + TAG_DIGITS + 1 + len(local) > MAX_LOCAL_PART:
        return None
    if nonce is None:
        nonce = secrets.randbits(4 * NONCE_DIGITS)
    stamp_nonce = f"{now_ms // 60_000:0{STAMP_DIGITS}x}{nonce:0{NONCE_DIGITS}x}"
    return f"{PREFIX}{stamp_nonce}{_mac(stamp_nonce, address)}={address}"


def verify(recipient: str, now_ms: int) -> tuple[str, str, int] | None:
    """(mailbox address, tag, sent at in epoch ms) of a valid, fresh tagged address, or None."""
    match = _TAGGED.fullmatch(recipient)
    if match is None:
        return None
    tag = match[1].lower()
    address = match[2].lower()
    stamp_nonce = tag[: STAMP_DIGITS + NONCE_DIGITS]
    if not hmac.compare_digest(tag[STAMP_DIGITS + NONCE_DIGITS :], _mac(stamp_nonce, address)):
        return None
    sent_at = int(tag[:STAMP_DIGITS], 16) * 60_000
    if not now_ms - TAG_LIFETIME_MS < sent_at <= now_ms + CLOCK_SKEW_MS:
        return None
    return address, tag, sent_at


# -- the socketmap table Postfix's cleanup asks ------------------------------------------------
#
# Sendmail's socketmap protocol as Postfix speaks it (socketmap_table(5)): a request is the
# netstring "NAME KEY", the reply the netstring "OK VALUE" or "NOTFOUND ". Postfix keeps the
# connection open for further lookups.

MAX_NETSTRING = 10_000


def _netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def answer_lookup(request: bytes, now_ms: int) -> bytes:
    """The reply to one socketmap request (its netstring's content)."""
    _, _, key = request.decode("utf-8", errors="replace").partition(" ")
    tagged = tag_sender(key.strip(), now_ms)
    if tagged is None:
        return _netstring("NOTFOUND ")
    return _netstring(f"OK {tagged}")


class SenderTagMap(asyncio.Protocol):
    """One Postfix cleanup connection asking for tagged envelope senders."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self._buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self._buffer += data
        while True:
            length, colon, rest = self._buffer.partition(b":")
            if not colon:
                if len(self._buffer) > 10:
                    self._refuse("no netstring length")
                return
            if not length.isdigit() or int(length) > MAX_NETSTRING:
                self._refuse("bad netstring length")
                return
            size = int(length)
            if len(rest) < size + 1:
                return
            if rest[size : size + 1] != b",":
                self._refuse("netstring without its comma")
                return
            self._buffer = rest[size + 1 :]
            self.transport.write(answer_lookup(rest[:size], self._now_ms()))

    def _refuse(self, why: str) -> None:
        log.warning("sender tag map: %s; closing the connection", why)
        assert self.transport is not None
        self.transport.close()
        self._buffer = b""
