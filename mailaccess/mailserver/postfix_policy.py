"""Postfix's policy delegation protocol, as pure functions: bytes in, requests and replies out.

A request is ``name=value`` lines ending in an empty line; the reply is ``action=...`` and an
empty line. Postfix keeps the connection open and sends the next request on it, one at a time.
Nothing here does I/O, so the server, the tests and the benchmark share exactly this code.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

# Postfix 3.7 sends about 40 attributes of at most a few hundred bytes (a recipient address
# is at most 254 characters, a TLS certificate subject a little more). Generous bounds that
# still stop a stray client from making us buffer without end.
MAX_LINE_BYTES = 4096
MAX_REQUEST_BYTES = 32 * 1024
MAX_ATTRIBUTES = 128
# SMTP reply lines are at most 512 bytes including the code that Postfix puts in front.
MAX_REPLY_TEXT = 400

_NAME = rb"[A-Za-z0-9_.\-]+"
# In a request's text (``PostfixRequest``: a line break in front of every line and one at the
# end), a line that does not start with a name and "=" (searching for the bad line is a
# third cheaper than matching every good one).
_BAD_LINE_RE = re.compile(rb"\n(?!%s=|\Z)" % _NAME)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


class ProtocolError(ValueError):
    """The peer does not speak the protocol: the connection cannot be trusted any further.

    ``requests``: the whole requests that came before the garbage in the same read; they are
    still answered, in order, before the connection is closed.
    """

    def __init__(self, message: str, requests: list[PostfixRequest] | None = None) -> None:
        super().__init__(message)
        self.requests: list[PostfixRequest] = requests or []


def _needle(name: str) -> bytes:
    return b"\n" + name.encode("ascii") + b"="


class PostfixRequest:
    """One request, decoded lazily: only the attributes the daemon reads are looked for.

    Attributes we do not know are kept (``get`` finds any of them) and ignored: Postfix adds
    new ones.
    """

    __slots__ = ("_text", "_values", "protocol_state", "request", "sasl_username")

    def __init__(self, text: bytes) -> None:
        """``text``: the request's lines, each with a line break in front and the last one
        with one after it too, so that every attribute is found as "\nname=" up to a "\n"."""
        self._text = text
        self._values: dict[str, str] = {}
        # Read for every request, so found (and checked to occur once, as ``get`` does) now,
        # and kept as plain attributes: every check reads them, some twice.
        self.request = self._find("request", b"\nrequest=")
        self.protocol_state = self._find("protocol_state", b"\nprotocol_state=").upper()
        # The authenticated login (a mailbox address), lower-case; empty when not signed in.
        self.sasl_username = self._find("sasl_username", b"\nsasl_username=").strip().lower()

    def _find(self, name: str, needle: bytes) -> str:
        # Postfix never repeats an attribute; a repeated one means two requests ran together
        # (a missing empty line), and answering them as one would judge the wrong message.
        # Decision: only the attributes the daemon reads are checked for repeats, when first
        # read; checking all ~40 was half the cost of parsing a request, and a repeat of an
        # attribute nobody reads cannot make the daemon judge the wrong message.
        text = self._text
        at = text.find(needle)
        if at < 0:
            value = ""
        else:
            start = at + len(needle)
            end = text.find(b"\n", start)
            if text.find(needle, end) >= 0:
                raise ProtocolError(f"attribute {name} repeated: missing empty line?")
            value = text[start:end].decode("utf-8", errors="replace")
        self._values[name] = value
        return value

    def get(self, name: str) -> str:
        """An attribute's value ("" when absent); raises ProtocolError when it is repeated."""
        value = self._values.get(name)
        if value is None:
            value = self._find(name, _needle(name))
        return value

    def first(self, name: str) -> str:
        """An attribute's first value, repeated or not: for the log line, which must not fail
        on a repeat of an attribute the decision never read (a repeat of one it read has
        already been refused by ``get``)."""
        value = self._values.get(name)
        if value is not None:
            return value
        needle = _needle(name)
        at = self._text.find(needle)
        if at < 0:
            return ""
        start = at + len(needle)
        return self._text[start : self._text.find(b"\n", start)].decode("utf-8", errors="replace")

    @property
    def attributes(self) -> Mapping[str, str]:
        """Every attribute, decoded (for logs and tests; the checks use ``get``)."""
        text = self._text[1:-1].decode("utf-8", errors="replace")
        return dict(line.split("=", 1) for line in text.split("\n"))

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


def parse_postfix_request(block: bytes) -> PostfixRequest:
    """Parse one request: its lines without the empty line that ends it.

    Checked in a few passes over the whole text (one regular expression, a few searches)
    rather than line by line: the daemon parses every request Postfix sends.
    """
    text = b"\n" + block + b"\n"
    _check_size(text)
    if _BAD_LINE_RE.search(text) is not None:
        raise ProtocolError("a line is not name=value")
    # Names are ASCII (checked above), so "\nname=" cannot match inside a multi-byte value.
    return PostfixRequest(text)


def _check_size(text: bytes) -> None:
    if len(text) > MAX_REQUEST_BYTES + 2:
        raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    if len(text) == 2:
        raise ProtocolError("empty request")
    if text.count(b"\n") > MAX_ATTRIBUTES:
        raise ProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
    if len(text) > MAX_LINE_BYTES and max(map(len, text.split(b"\n"))) > MAX_LINE_BYTES:
        raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")


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

    def feed(self, data: bytes) -> list[PostfixRequest]:
        """Add received bytes; return the requests now complete, in order.

        Raises ProtocolError on garbage; the stream cannot be resynchronised after that.
        """
        if not self._buffer and data.endswith(b"\n\n"):
            # The common case, one whole request in one read (as smtpd sends them). Its text
            # holds no empty line (which is a bad line) only when it is exactly one request;
            # anything else takes the general way below.
            text = b"\n" + data[:-1]
            if _BAD_LINE_RE.search(text) is None:
                _check_size(text)
                return [PostfixRequest(text)]
        buffer = self._buffer + data if self._buffer else data
        requests: list[PostfixRequest] = []
        start = 0
        try:
            while True:
                if buffer.startswith(b"\n", start):
                    raise ProtocolError("empty request")
                end = buffer.find(b"\n\n", max(start, self._scanned - 1))
                if end < 0:
                    break
                requests.append(parse_postfix_request(buffer[start:end]))
                start = end + 2
                self._scanned = start
        except ProtocolError as error:
            # Postfix waits for the answers to the requests it sent before the garbage.
            raise ProtocolError(str(error), requests) from None
        rest = buffer[start:]
        if len(rest) > MAX_REQUEST_BYTES:
            raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes", requests)
        last_line = len(rest) - rest.rfind(b"\n") - 1
        if last_line > MAX_LINE_BYTES:
            raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes", requests)
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
