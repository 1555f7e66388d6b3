"""Writing the audit trail: every row is added here, and none is ever changed.

``mailaccess.actions`` audits each access change through ``record`` inside its own
transaction; ``accounts.actions`` audits sign-ins and two-factor changes through
``record_account_event``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction

from accounts.models import Mailbox
from audit.models import Actor, ActorKind, AuditAction, AuditEvent, is_justification
from common.bulk import insert_rows
from common.logging import Event

logger = logging.getLogger("audit")


def record(
    mailbox: Mailbox,
    action: str,
    actor: Actor,
    *,
    reason: str = "",
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
    justification: str = "",
) -> AuditEvent:
    justification = justification.strip()
    if actor.kind == ActorKind.SUPPORT and not is_justification(justification):
        # The admin's form asks for it; this is the guard for every other caller.
        raise ValueError("A support action needs a justification of 5 to 500 characters.")
    fields: dict[str, Any] = {"mailbox": mailbox.address, "actor": f"{actor.kind}:{actor.label}"}
    fields.update({"reason": reason or None, "ip": ip, **(detail or {})})
    # The log line, like the mail and the notices, only for what was committed.
    transaction.on_commit(lambda: logger.info(Event(f"access.{action}", fields)))
    return AuditEvent.objects.create(
        mailbox=mailbox,
        address=mailbox.address,
        action=action,
        reason=reason,
        actor_kind=actor.kind,
        actor=actor.mailbox,
        actor_label=actor.label,
        ip=ip,
        justification=justification,
        detail=detail or {},
    )


def record_many(
    rows: Sequence[tuple[int, str]],
    action: str,
    actor: Actor,
    now: datetime,
    *,
    reason: str = "",
    details: Sequence[dict[str, Any]],
) -> list[int]:
    """The rows of a batch of changes, written in one insert; returns their ids in order."""

    def log() -> None:
        for (_mailbox_id, address), detail in zip(rows, details, strict=True):
            fields = {"mailbox": address, "actor": f"{actor.kind}:{actor.label}"}
            logger.info(Event(f"access.{action}", {**fields, "reason": reason or None, **detail}))

    # One line per mailbox, as for a single action: support looks a mailbox up by its address.
    transaction.on_commit(log)
    return insert_rows(
        AuditEvent,
        per_row={
            "mailbox_id": [mailbox_id for mailbox_id, _address in rows],
            "address": [address for _mailbox_id, address in rows],
            "detail": details,
        },
        same={
            "action": action,
            "reason": reason,
            "actor_kind": actor.kind,
            "actor_id": actor.mailbox.pk if actor.mailbox is not None else None,
            "actor_label": actor.label,
            "created_at": now,
        },
    )


# Web-account events that change no access but belong in the owner's security trail.
ACCOUNT_EVENTS = {
    AuditAction.SIGNED_IN,
    AuditAction.TWO_FACTOR_ENABLED,
    AuditAction.TWO_FACTOR_DISABLED,
    AuditAction.RECOVERY_CODES_CREATED,
    AuditAction.RECOVERY_CODE_USED,
}


def record_account_event(
    mailbox: Mailbox, action: AuditAction, *, actor: Actor, ip: str | None = None
) -> AuditEvent:
    """Audit a sign-in or a two-factor change (accounts.actions calls this)."""
    if action not in ACCOUNT_EVENTS:
        raise ValueError(f"{action} is an access change: use its own action.")
    return record(mailbox, action, actor, ip=ip)
