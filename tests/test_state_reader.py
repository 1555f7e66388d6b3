"""The auth policy's cache misses on PostgreSQL: one query on the event loop (state_reader.py).

The same state as the ORM's ``state.load`` for every kind of mailbox, and a burst of misses
(Redis lost its keys at thousands of logins a second) answered, not turned into the 503s that
make Dovecot let every login in without the policy.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import psycopg
import pytest

from accounts.models import Mailbox, Plan
from audit.models import Actor
from mailaccess import actions
from mailaccess.mailserver import state
from mailaccess.mailserver.asgi import AuthPolicyApp
from mailaccess.mailserver.redis_pipeline import RedisPipeline
from mailaccess.mailserver.state_reader import StateReader, connection_params
from mailaccess.models import AppPassword, BlockReason, ExternalAccess
from tests.conftest import needs_redis
from tests.policy_client import API_KEY

pytestmark = [pytest.mark.postgres]


def read(login: str) -> Any:
    async def go() -> Any:
        reader = StateReader(2)
        try:
            return await reader.load(login)
        finally:
            await reader.aclose()

    return asyncio.run(go())


def test_it_reads_the_same_state_as_the_orm(transactional_db: None) -> None:
    system = Actor.system("test")
    on = Mailbox.objects.create_user("on@inbox.lv", "x" * 12, plan=Plan.PLUS, language="ru")
    actions.enable_access(on, actor=system)
    actions.create_app_password(
        on,
        label="phone",
        protocols={"imap"},
        networks=["192.0.2.0/24", "2001:db8::/48"],
        actor=system,
    )
    ended, _text = actions.create_app_password(on, label="old", protocols={"smtp"}, actor=system)
    actions.revoke_app_password(on, ended.pk, actor=system)
    blocked = Mailbox.objects.create_user("blocked@mail.ee", "x" * 12)
    actions.enable_access(blocked, actor=system)
    actions.block_access(blocked, BlockReason.COMPROMISED, actor=system)
    never = Mailbox.objects.create_user("never@inbox.lv", "x" * 12)
    ExternalAccess.objects.filter(mailbox=never).delete()

    for login in ("on@inbox.lv", " ON@Inbox.LV ", "blocked@mail.ee", "never@inbox.lv"):
        assert read(login) == state.load(login), login
    assert read("nobody@inbox.lv") is None
    loaded = read("on@inbox.lv")
    assert len(loaded.passwords) == 2  # the revoked one is left out
    assert loaded.passwords[1].networks == ("192.0.2.0/24", "2001:db8::/48")
    assert loaded.language == "ru" and loaded.plan == Plan.PLUS


def test_a_read_that_outlives_the_wait_is_a_timeout_and_its_connection_is_dropped(
    transactional_db: None, settings: Any
) -> None:
    """A database that does not answer in time (here: a table lock held by another session)
    costs the request MAILSERVER_DATABASE_WAIT, not Dovecot's whole timeout, and the
    connection cut off mid-read is never handed to the next read."""
    Mailbox.objects.create_user("slow@inbox.lv", "x" * 12)
    settings.MAILSERVER_DATABASE_WAIT = 0.3
    params = connection_params()

    async def go() -> tuple[float, int, Any]:
        reader = StateReader(1)
        async with await psycopg.AsyncConnection.connect(**params) as locker:
            await locker.execute("LOCK TABLE accounts_mailbox IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await reader.load("slow@inbox.lv")
            waited = time.monotonic() - started
            idle = len(reader._idle)
            await locker.rollback()
        after = await reader.load("slow@inbox.lv")
        await reader.aclose()
        return waited, idle, after

    waited, idle, after = asyncio.run(go())
    assert 0.3 <= waited < 1.0
    assert idle == 0
    assert after is not None and after.mailbox_id


@needs_redis
@pytest.mark.e2e
def test_a_burst_of_misses_is_answered_not_failed_open(policy: str) -> None:
    """300 mailboxes log in at once with nothing cached (Redis restarted): each is answered
    with its own state within the wait, so Dovecot never falls back to no policy at all."""
    boxes = Mailbox.objects.bulk_create(
        Mailbox(address=f"burst{n}@inbox.lv", password="!", language="lv") for n in range(300)
    )
    ExternalAccess.objects.bulk_create(
        ExternalAccess(mailbox=box, enabled=n % 3 != 0) for n, box in enumerate(boxes)
    )
    assert not AppPassword.objects.exists()

    async def burst() -> list[httpx.Response]:
        app = AuthPolicyApp(client=RedisPipeline(policy, timeout=2, decode=True))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy") as http:
            replies = await asyncio.gather(
                *(
                    http.post(
                        "/auth-policy?command=allow",
                        content=json.dumps(
                            {
                                "login": f"burst{n}@inbox.lv",
                                "protocol": "imap",
                                "remote": "192.0.2.10",
                                "app_password": "1",
                            }
                        ),
                        headers={"X-API-Key": API_KEY},
                    )
                    for n in range(300)
                )
            )
        await app.aclose()
        return list(replies)

    replies = asyncio.run(burst())
    assert [reply.status_code for reply in replies] == [200] * 300
    # Each answer is that mailbox's own: a switched-off one (every third) hears why.
    refused = [n for n, reply in enumerate(replies) if reply.json()["status"] == -1]
    assert refused == list(range(0, 300, 3))
