"""Postfix's policy delegation protocol, as pure functions: bytes in, requests and replies out.

A request is ``name=value`` lines ending in an empty line; the reply is ``action=...`` and an
empty line. Postfix keeps the connection open and sends the next request on it, one at a time.
Nothing here does I/O, so the server, the tests and the benchmark share exactly this code.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

# Postfix 3.7 sends about 40 attributes of at most a few hundred bytes (a recipient address
# is at most 254 characters, a TLS certificate subject a little more). Generous bounds that
# still stop a stray client from making us buffer without end.
MAX_LINE_BYTES = 4096
MAX_REQUEST_BYTES = 32 * 1024
MAX_ATTRIBUTES = 128
# SMTP reply lines are at most 512 bytes including the code that Postfix puts in front.
MAX_REPLY_TEXT = 400

_NAME = rb"[A-Za-z0-9_.\-]+"
_REQUEST_RE = re.compile(rb"(?:%s=[^\n]*\n)*%s=[^\n]*" % (_NAME, _NAME))
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


class ProtocolError(ValueError):
    """The peer does not speak the protocol: the connection cannot be trusted any further."""


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One request. Attributes we do not know are kept and ignored: Postfix adds new ones."""

    attributes: Mapping[str, str]

    def get(self, name: str) -> str:
        return self.attributes.get(name, "")

    @property
    def request(self) -> str:
        return self.get("request")

    @property
    def protocol_state(self) -> str:
        return self.get("protocol_state").upper()

    @property
    def sasl_username(self) -> str:
        """The authenticated login (a mailbox address), lower-case; empty when not signed in."""
        return self.get("sasl_username").strip().lower()

    @property
    def sender(self) -> str:
        return self.get("sender").strip().lower()

    @property
    def recipient(self) -> str:
        return self.get("recipient").strip().lower()

    @property
    def instance(self) -> str:
        return self.get("instance")

    @property
    def policy_context(self) -> str:
        return self.get("policy_context").strip().lower()


def parse_request(block: bytes) -> PolicyRequest:
    """Parse one request: its lines without the empty line that ends it.

    Checked in a few passes over the whole block (one regular expression, one decode)
    rather than line by line: the daemon parses every request Postfix sends.
    """
    if len(block) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    if not block:
        raise ProtocolError("empty request")
    lines = block.count(b"\n") + 1
    if lines > MAX_ATTRIBUTES:
        raise ProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
    if len(block) > MAX_LINE_BYTES and max(map(len, block.split(b"\n"))) > MAX_LINE_BYTES:
        raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
    if _REQUEST_RE.fullmatch(block) is None:
        raise ProtocolError("a line is not name=value")
    # Names are ASCII (checked above), so decoding cannot move a "=" or a line break.
    text = block.decode("utf-8", errors="replace")
    attributes = dict(line.split("=", 1) for line in text.split("\n"))
    if len(attributes) != lines:
        # Postfix never repeats an attribute: two requests ran together (a missing
        # empty line), and answering them as one would judge the wrong message.
        raise ProtocolError("an attribute repeated: missing empty line?")
    return PolicyRequest(attributes)


class RequestParser:
    """Splits a byte stream into requests; keeps a partial request until the rest arrives."""

    __slots__ = ("_buffer", "_scanned")

    def __init__(self) -> None:
        self._buffer = b""
        self._scanned = 0

    @property
    def pending(self) -> bool:
        """True while part of a request has arrived but not its end."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[PolicyRequest]:
        """Add received bytes; return the requests now complete, in order.

        Raises ProtocolError on garbage; the stream cannot be resynchronised after that.
        """
        buffer = self._buffer + data if self._buffer else data
        requests: list[PolicyRequest] = []
        start = 0
        while True:
            if buffer.startswith(b"\n", start):
                raise ProtocolError("empty request")
            end = buffer.find(b"\n\n", max(start, self._scanned - 1))
            if end < 0:
                break
            requests.append(parse_request(buffer[start:end]))
            start = end + 2
            self._scanned = start
        rest = buffer[start:]
        if len(rest) > MAX_REQUEST_BYTES:
            raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes")
        last_line = len(rest) - rest.rfind(b"\n") - 1
        if last_line > MAX_LINE_BYTES:
            raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
        self._buffer = rest
        self._scanned = len(rest)
        return requests


def reply_text(text: str) -> str:
    """Text fit for an SMTP reply: one line of printable ASCII.

    SMTP replies are 7-bit (RFC 5321) and Postfix replaces other bytes, so Latvian letters
    lose their marks ("ā" becomes "a"), which Latvian readers know from text messages.
    """
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    folded = _CONTROL_RE.sub(" ", folded).strip()
    return folded[:MAX_REPLY_TEXT]


def dunno() -> str:
    """No opinion: Postfix goes on with its other restrictions."""
    return "DUNNO"


def defer_if_permit(text: str) -> str:
    """A 4xx at DATA (``450 4.7.1``) unless a later restriction rejects outright."""
    return f"DEFER_IF_PERMIT {reply_text(text)}".rstrip()


def reject(text: str) -> str:
    """A 5xx: the message is refused for good."""
    return f"REJECT {reply_text(text)}".rstrip()


def format_reply(action: str) -> bytes:
    return b"action=" + action.encode("ascii", "replace") + b"\n\n"
