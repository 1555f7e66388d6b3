"""``manage.py access_story``: everything support needs about one mailbox, and no secret."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command

from accounts.models import Mailbox
from audit.models import Actor, AuditEvent
from mailaccess import actions, counters
from mailaccess.models import AppPassword, BlockReason, Protocol
from tests.policy_client import closed_port, login


def story(address: str) -> str:
    out = StringIO()
    call_command("access_story", address, stdout=out)
    return out.getvalue()


def test_it_tells_the_whole_story_without_a_hash(alice: Mailbox, settings: Any) -> None:
    settings.MAILSERVER_REDIS_URL = f"redis://127.0.0.1:{closed_port()}/11"
    counters.sync_client.cache_clear()
    actions.enable_access(alice, actor=Actor.user(alice), ip="198.51.100.7")
    first = AppPassword.objects.get(mailbox=alice)
    actions.record_use(alice.pk, Protocol.IMAP, "192.0.2.10", app_password_id=first.pk)
    actions.block_access(alice, BlockReason.FAULTY_PROGRAM, actor=Actor.system("auth policy"))
    events = AuditEvent.objects.count()

    text = story("Alice@Inbox.lv")
    counters.sync_client.cache_clear()

    assert "Access story of alice@inbox.lv" in text
    assert "BLOCKED" in text and "faulty_program" in text
    assert "from 192.0.2.10" in text
    assert f"#{first.pk} " in text and "ended" in text
    assert "access switched on" in text and "by the mailbox owner alice@inbox.lv" in text
    assert "from 198.51.100.7" in text
    assert "access blocked" in text and "e-mailed never" in text
    assert "Redis" in text and "not reachable" in text
    for secret in (first.password_hash, first.lookup_key):
        assert secret not in text
    assert AuditEvent.objects.count() == events


@pytest.mark.e2e
def test_it_shows_what_the_auth_policy_counts_in_redis(alice: Mailbox, policy: str) -> None:
    client = redis.Redis.from_url(policy)
    actions.enable_access(alice, actor=Actor.user(alice))
    login(policy, "alice@inbox.lv")
    login(policy, "alice@inbox.lv", pwhash="bad1", right=False)
    keys = sorted(client.keys("*"))
    text = story("alice@inbox.lv")
    assert sorted(client.keys("*")) == keys  # read-only
    client.close()
    assert "cached state" in text and "on=1" in text
    assert "1 distinct in the last 15 min" in text
    assert "known network 192.0.2.10" in text
    assert "IMAP checks left" in text
    assert "SMTP messages sent" in text and "limits 5/min, 15/h" in text


def test_an_unknown_mailbox_is_an_error(db: None) -> None:
    with pytest.raises(CommandError, match=r"No mailbox nobody@inbox\.lv"):
        story("nobody@inbox.lv")
