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
Values are quoted and their line breaks escaped, so a login name sent by a stranger cannot
forge a second log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Field names that may hold a secret: their values are never written.
_SECRET_NAME = re.compile(r"pass|hash|secret|token|api_?key|lookup_?key|session|cookie", re.I)
# Written only through short_id, so allowed although the name says "session".
_SHORTENED = frozenset({"session_prefix"})
_BARE = re.compile(r"[A-Za-z0-9_.@:/+\-*\[\]]+")


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
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def format_fields(fields: Mapping[str, Any]) -> str:
    parts = []
    for name, value in fields.items():
        secret = _SECRET_NAME.search(name) and name not in _SHORTENED
        shown = "[redacted]" if secret else format_value(value)
        parts.append(f"{name}={shown}")
    return " ".join(parts)


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
