"""Ending a mailbox's open IMAP and POP3 sessions, through Dovecot's doveadm HTTP API.

A block, switching access off, or ending a password stops new logins at once (the passdb view
and the auth policy), but a session opened before stays open: an IMAP IDLE connection for days.
For a hijacked mailbox that is the whole point of blocking it. So those actions
(``mailaccess.actions``) call ``tasks.queue_end_sessions`` after their commit, and every Dovecot
server (``DOVEADM_API_URL``) is asked to ``kick`` the mailbox's address: Dovecot's own way to
end a user's sessions, which its anvil process tracks for every IMAP and POP3 login.

Ending *one* device's password ends every session of the mailbox. Dovecot 2.3's ``kick``
chooses sessions by login name and client address only (``doveadm kick user [ip]``): which
password a session logged in with is not among what anvil knows, and the password's last
client address may not be the address of a session it opened elsewhere. The mailbox's other
programs, whose passwords still work, reconnect by themselves (an IMAP client within seconds,
as after any server restart); the one whose password ended cannot.

The call runs in a thin Celery task (``tasks.end_sessions_of``: one per Dovecot server and
change, taking the mailbox ids, so a job's batch of a thousand blocks is one message per
server) that retries with back-off while Dovecot does not answer, so the web request never
waits for Dovecot. On the embedded default
(no broker, eager tasks) it runs once, here and now, bounded by ``DOVEADM_API_TIMEOUT``, and a
failure is logged, never raised: the committed block must not fail because a server is away.

Besides, the SMTP policy daemon refuses the mail of an already authenticated SMTP session of
a blocked or switched-off mailbox (``mailserver/smtp_policy.py``), which no kick can end.

The same API flushes the mailbox's entries from Dovecot's auth cache (``auth cache flush``,
``flush_auth_cache``): with the cache on (deploy/dovecot/dovecot.conf), Dovecot answers a
login from a cached passdb reply without asking PostgreSQL, so every access change must flush
the mailbox at once, or a switched-off mailbox logs in until the entry's TTL runs out whenever
the auth policy is down. ``tasks.queue_flush_auth_cache`` runs after every access change's
commit.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Addresses per task and per HTTP request (one "kick" command each, in one JSON array): a
# job's page of a thousand blocks is ten requests to each server.
ADDRESSES_PER_CALL = 100
# doveadm's exit code when nobody matched: no session was open, which is what we want.
EX_NOUSER = 68


class DoveadmError(OSError):
    """Dovecot did not answer, or answered with something other than "done": retry."""


def kick_commands(addresses: Sequence[str]) -> list[list[Any]]:
    """The doveadm HTTP API body: one ``kick`` per address, tagged with its position."""
    return [["kick", {"mask": [address]}, str(number)] for number, address in enumerate(addresses)]


def flush_commands(addresses: Sequence[str]) -> list[list[Any]]:
    """The doveadm HTTP API body: one ``auth cache flush`` for all the addresses. Dovecot
    removes every cache entry whose key starts with one of them (the login name, ``%u``)."""
    return [["authCacheFlush", {"user": list(addresses)}, "0"]]


def check_answer(answer: Any, count: int) -> None:
    """Raise DoveadmError unless every command was done or found nobody to kick."""
    if not isinstance(answer, list) or len(answer) != count:
        raise DoveadmError("unexpected answer from doveadm")
    for item in answer:
        if not isinstance(item, list) or len(item) != 3:
            raise DoveadmError("unexpected answer from doveadm")
        kind, detail = item[0], item[1]
        if kind == "doveadmResponse":
            continue
        if kind == "error" and isinstance(detail, dict) and detail.get("exitCode") == EX_NOUSER:
            continue
        raise DoveadmError(f"doveadm refused the command: {json.dumps(detail)[:200]}")


def call(url: str, commands: list[list[Any]], *, timeout: float | None = None) -> None:
    """Run ``commands`` on the Dovecot at ``url``; DoveadmError unless all were done."""
    if not url.startswith(("http://", "https://")):
        raise DoveadmError("DOVEADM_API_URL must be an http:// or https:// URL")
    key = base64.b64encode(settings.DOVEADM_API_KEY.encode()).decode()
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url,
        data=json.dumps(commands).encode(),
        method="POST",
        headers={"Authorization": f"X-Dovecot-API {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 (the scheme is checked above)
            request, timeout=settings.DOVEADM_API_TIMEOUT if timeout is None else timeout
        ) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise DoveadmError(f"doveadm answered HTTP {error.code}") from None
    except ValueError:
        raise DoveadmError("doveadm answered something other than JSON") from None
    check_answer(answer, len(commands))


def kick(url: str, addresses: Sequence[str], *, timeout: float | None = None) -> None:
    """End every IMAP and POP3 session of ``addresses`` on the Dovecot at ``url``."""
    call(url, kick_commands(addresses), timeout=timeout)


def flush_auth_cache(url: str, addresses: Sequence[str], *, timeout: float | None = None) -> None:
    """Remove ``addresses``' entries from the auth cache of the Dovecot at ``url``."""
    call(url, flush_commands(addresses), timeout=timeout)
