"""The database's view of a mailbox, cached in Redis so a policy decision needs no SQL.

The cache holds what a decision needs (mailbox id, access on/off, block reason, plan,
language, and each live password's id, key prefix and protocols) as a hash under the
mailbox's hash tag, read by the decision's Lua script in the same round trip as the counters.
The access actions invalidate it after commit (``MailaccessConfig.ready`` registers
``invalidate``), and so does a change of the mailbox's language (``actions.language_changed``), so a
switch-off is obeyed at once, not after a TTL; the TTL (an hour) only bounds what nothing
announces (a deleted mailbox, an invalidation lost to a Redis outage).

A reader that misses loads the row and writes it back only if no invalidation came in between:
each invalidation bumps a generation counter, and the write compares it
(``auth_policy_store.STORE_SCRIPT``). Without that, a switch-off committed while a miss was
loading could be overwritten by the older "on" for a whole TTL.

This module is the database's side (``load``, and ``invalidate`` after an access change); the
cache's keys and encoding are the auth policy store's (``auth_policy_store.py``), which reads
and writes it on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import close_old_connections
from redis.cluster import RedisCluster

from accounts.models import Mailbox, normalize_address
from common import metrics
from common.logging import log_event
from common.redis_urls import REDIS_ERRORS, Client
from mailaccess import passwords
from mailaccess.counters import generation_key, state_key, sync_client
from mailaccess.mailserver.auth_policy import MailboxState, PasswordScope
from mailaccess.models import AppPassword, Protocol

logger = logging.getLogger(__name__)

# A day is far longer than any load-and-store takes; the counter only has to outlive that.
GENERATION_TTL = 86400
# Every access change publishes the addresses here, after commit, with the invalidation: the
# SMTP policy daemon's processes forget their cached copy of those mailboxes at once. One
# message per change, the addresses one per line (``access_message``): a job's batch of
# thousands of blocks is one PUBLISH, which every subscribed process handles once, instead of
# one each. A single change's message is its address alone, as before batching.
ACCESS_CHANNEL = "mp:access-changed"
ACCESS_SEPARATOR = "\n"


def access_message(logins: Sequence[str]) -> str:
    """What ``invalidate_addresses`` publishes: the normalized addresses, one per line
    (an address has no line break: ``accounts.models.normalize_address``)."""
    return ACCESS_SEPARATOR.join(logins)


def changed_logins(message: str) -> list[str]:
    """The addresses of one ``ACCESS_CHANNEL`` message (the subscriber's side)."""
    return [login for login in message.split(ACCESS_SEPARATOR) if login]


def load(login: str) -> MailboxState | None:
    """The state from the database (sync: the policy server runs it in a thread)."""
    close_old_connections()
    row = (
        Mailbox.objects.filter(address=normalize_address(login))
        .values(
            "pk", "plan", "language", "external_access__enabled", "external_access__block_reason"
        )
        .first()
    )
    if row is None:
        return None
    live = AppPassword.objects.live().filter(mailbox_id=row["pk"])
    return MailboxState(
        mailbox_id=row["pk"],
        enabled=bool(row["external_access__enabled"]),
        block_reason=row["external_access__block_reason"] or "",
        plan=row["plan"],
        language=row["language"],
        passwords=tuple(
            PasswordScope(
                id=password.pk,
                key=password.lookup_key[: passwords.POLICY_KEY_HEX],
                protocols=frozenset(p for p in Protocol if getattr(password, f"allow_{p.value}")),
                networks=tuple(password.allowed_networks or ()),
            )
            for password in live.order_by("pk").only(
                "pk", "lookup_key", "allow_imap", "allow_pop3", "allow_smtp", "allowed_networks"
            )
        ),
    )


def invalidate_address(address: str, client: Client | None = None) -> None:
    invalidate_addresses([address], client)


def invalidate_addresses(addresses: Sequence[str], client: Client | None = None) -> None:
    client = client or sync_client()
    logins = [normalize_address(address) for address in addresses]
    if isinstance(client, RedisCluster):
        # A transaction cannot span slots (each address is a slot of its own), nor does
        # redis-py pipeline PUBLISH on a cluster. Each node runs its addresses' commands in
        # order, and the order suffices, the generation first: a load stored between the two
        # commands fails the generation check, and one stored before is deleted. The news
        # goes out after, once the cache is gone: any node forwards it to every node.
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for login in logins:
            pipe.incr(generation_key(login))
            pipe.expire(generation_key(login), GENERATION_TTL)
            pipe.delete(state_key(login))
        pipe.execute()
        client.publish(ACCESS_CHANNEL, access_message(logins))
        return
    pipe = client.pipeline(transaction=True)
    for login in logins:
        pipe.incr(generation_key(login))
        pipe.expire(generation_key(login), GENERATION_TTL)
        pipe.delete(state_key(login))
    pipe.publish(ACCESS_CHANNEL, access_message(logins))
    pipe.execute()


def invalidate(mailbox_ids: Sequence[int]) -> bool:
    """Forget these mailboxes' cached states (after an access change's commit); False, and
    logged, when Redis failed: the caller queues a retry (``tasks.queue_invalidate_states``).

    A Redis failure must not undo a committed switch-off in the panel. Until the retry
    succeeds the policy may answer from the old state for up to its TTL (an hour); the passdb
    table, which the same transaction changed, still refuses IMAP and POP3 at once.
    """
    addresses = list(Mailbox.objects.filter(pk__in=mailbox_ids).values_list("address", flat=True))
    if not addresses:
        return True
    try:
        invalidate_addresses(addresses)
    except REDIS_ERRORS as error:
        metrics.REDIS_ERRORS.labels(service="invalidation").inc()
        log_event(
            logger,
            "auth_policy.cache_not_invalidated",
            logging.WARNING,
            mailbox=",".join(addresses[:5]),
            error=type(error).__name__,
        )
        return False
    return True
