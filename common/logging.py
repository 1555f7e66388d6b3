"""Structured logs: one line per decision or action, as ``key=value`` pairs (logfmt).

Chosen once, for every process (portal, auth policy, SMTP policy daemon, Celery): logfmt reads
as plain text in ``journalctl``, greps without a parser (``grep 'mailbox=alice@inbox.lv'``),
and Loki, Vector and Elastic's ingest pipelines all parse it. A line looks like

    time=2026-11-26T16:30:00.123Z level=info logger=mailaccess.auth_policy
    event=auth_policy.refused mailbox=alice@inbox.lv protocol=imap client_ip=192.0.2.10
    result=too_often

Use ``log_event(logger, "what.happened", mailbox=..., ...)``. The mailbox address is kept
(support searches by it); secrets never are: a field whose name says password, hash, key,
token or session is written as ``[redacted]`` whatever its value, so a careless call cannot leak
one. A session id appears only shortened by ``short_id``, as ``session_prefix``.
Values are quoted and every control character in them escaped (line breaks as ``\\n``, the
rest as ``\\xNN`` or ``\\uNNNN``: C0 and C1 controls, DEL, the Unicode line and paragraph
separators, and lone surrogates, which a UTF-8 log could not even be written with), so a login
name sent by a stranger can neither forge a second log line nor send escape sequences to the
terminal of whoever reads the log.

An error a stranger can cause on every request is logged through a ``Throttle``: one line a
second at most, saying how many were left out, so a flood cannot fill the disk with
tracebacks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Field names that may hold a secret: their values are never written.
_SECRET_NAME = re.compile(r"pass|hash|secret|token|api_?key|lookup_?key|session|cookie", re.I)
# Written only through short_id, so allowed although the name says "session".
_SHORTENED = frozenset({"session_prefix"})
_BARE = re.compile(r"[A-Za-z0-9_.@:/+\-*\[\]]+")
# What a quoted value must not hold as is: the quote and the backslash (escaped as \" and
# \\), and every character that is not text on one line.
_UNSAFE = re.compile(r'[\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    escaped = _ESCAPES.get(char)
    if escaped is None:
        code = ord(char)
        escaped = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return escaped


def short_id(value: str | None, keep: int = 6) -> str:
    """Enough of a session id to find its lines in Dovecot's log, never enough to reuse it."""
    if not value:
        return ""
    return value[:keep]


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if text and _BARE.fullmatch(text):
        return text
    return f'"{_UNSAFE.sub(_escape, text)}"'


def format_fields(fields: Mapping[str, Any]) -> str:
    parts = []
    for name, value in fields.items():
        secret = _SECRET_NAME.search(name) and name not in _SHORTENED
        shown = "[redacted]" if secret else format_value(value)
        parts.append(f"{name}={shown}")
    return " ".join(parts)


class Throttle:
    """Lets one log line through per ``seconds``; counts those it held back meanwhile."""

    __slots__ = ("_last", "_skipped", "seconds")

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self._last = -seconds
        self._skipped = 0

    def due(self) -> int | None:
        """None: skip this line. Otherwise log it, with the number left out since the last."""
        now = time.monotonic()
        if now - self._last < self.seconds:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped


class Event:
    """A log message rendered only when a handler writes it (cheap when filtered out)."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        rest = format_fields(self.fields)
        return f"event={self.name} {rest}" if rest else f"event={self.name}"


def log_event(
    logger: logging.Logger,
    name: str,
    level: int = logging.INFO,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """One structured line: ``event=<name>`` and the fields, in the order given."""
    if logger.isEnabledFor(level):
        logger.log(level, Event(name, fields), exc_info=exc_info)


class KeyValueFormatter(logging.Formatter):
    """``time= level= logger=`` and then the event's fields, or ``msg="..."`` for plain logs."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        head = (
            f"time={when.replace('+00:00', 'Z')} level={record.levelname.lower()} "
            f"logger={format_value(record.name)}"
        )
        if isinstance(record.msg, Event) and not record.args:
            line = f"{head} {record.msg}"
        else:
            line = f"{head} msg={format_value(record.getMessage())}"
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += f" exc={format_value(record.exc_text)}"
        return line
