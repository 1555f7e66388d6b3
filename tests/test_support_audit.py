"""Support actions are recorded with who, when, from where and why (threats.md: the curious
insider must never act without it).

Every support action in the admin asks for a justification and the audit row keeps it with
the staff member's client address; the mailbox page, the audit log and `access_story` show
both.
"""

from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox, Plan
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, counters
from mailaccess.models import BlockReason
from tests import test_admin
from tests.conftest import csrf_post
from tests.policy_client import closed_port
from tests.test_admin import CHANGELIST, access_of, action_url, bulk, change_url, last_event

# The support member and the signed-in admin client of the admin's own tests.
staff = test_admin.staff
staff_client = test_admin.staff_client
alice_on = test_admin.alice_on

STAFF_ADDRESS = "203.0.113.45"
WHY = "Ticket 4711: the owner reports a stolen phone."

# slug -> (form fields besides the justification, the audit action it writes)
SUPPORT_ACTIONS = {
    "block": ({"reason": "support"}, AuditAction.ACCESS_BLOCKED),
    "compromised": ({}, AuditAction.ACCESS_BLOCKED),
    "unblock": ({}, AuditAction.ACCESS_UNBLOCKED),
    "end-passwords": ({}, AuditAction.ACCESS_DISABLED),
    "change-plan": ({"plan": "plus"}, AuditAction.PLAN_CHANGED),
}


def something_to_change(alice: Mailbox, slug: str) -> None:
    if slug == "unblock":
        actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    else:
        actions.enable_access(alice, actor=Actor.user(alice))


@pytest.mark.parametrize("slug", SUPPORT_ACTIONS)
def test_every_support_action_records_the_staff_address_and_the_justification(
    staff_client: Client, staff: Mailbox, alice: Mailbox, slug: str
) -> None:
    something_to_change(alice, slug)
    fields, audit_action = SUPPORT_ACTIONS[slug]
    response = csrf_post(
        staff_client,
        action_url(alice, slug),
        {**fields, "justification": f"  {WHY}\n"},
        REMOTE_ADDR=STAFF_ADDRESS,
    )
    assert response.status_code == 302
    event = last_event(alice)
    assert (event.action, event.actor, event.ip, event.justification) == (
        audit_action,
        staff,
        STAFF_ADDRESS,
        WHY,
    )


@pytest.mark.parametrize("slug", SUPPORT_ACTIONS)
@pytest.mark.parametrize("justification", [None, "", "    ", "ok", "x" * 501])
def test_a_support_action_without_a_real_justification_changes_nothing(
    staff_client: Client, alice: Mailbox, slug: str, justification: str | None
) -> None:
    something_to_change(alice, slug)
    fields, _audit_action = SUPPORT_ACTIONS[slug]
    data = dict(fields) if justification is None else {**fields, "justification": justification}
    events = AuditEvent.objects.count()
    response = csrf_post(staff_client, action_url(alice, slug), data)
    assert response.status_code == 400
    assert AuditEvent.objects.count() == events
    alice.refresh_from_db()
    assert alice.plan == Plan.FREE


def test_the_justification_errors_are_in_the_staff_members_language(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    url = action_url(alice, "end-passwords")
    missing = csrf_post(staff_client, url, {}).content.decode()
    assert "Norādiet iemeslu: atbalsta darbības tiek reģistrētas ar pamatojumu." in missing
    short = csrf_post(staff_client, url, {"justification": "ok"}).content.decode()
    assert "Norādiet iemeslu vismaz 5 rakstzīmēs." in short
    long = csrf_post(staff_client, url, {"justification": "x" * 501}).content.decode()
    assert "Ne vairāk kā 500 rakstzīmes." in long
    assert access_of(alice).enabled


def test_a_bulk_action_asks_why_and_records_it_for_each_mailbox(
    staff_client: Client, staff: Mailbox, alice: Mailbox, bob: Mailbox
) -> None:
    for mailbox in (alice, bob):
        actions.enable_access(mailbox, actor=Actor.user(mailbox))
    refused = bulk(
        staff_client,
        "support_block",
        [alice, bob],
        reason="support",
        confirm="yes",
        justification="",
    )
    assert refused.status_code == 200
    assert 'name="justification"' in refused.content.decode()
    assert access_of(alice).enabled and access_of(bob).enabled

    csrf_post(
        staff_client,
        CHANGELIST,
        {
            "action": "support_block",
            ACTION_CHECKBOX_NAME: [str(alice.pk), str(bob.pk)],
            "reason": "support",
            "confirm": "yes",
            "justification": WHY,
        },
        REMOTE_ADDR=STAFF_ADDRESS,
    )
    for mailbox in (alice, bob):
        event = last_event(mailbox)
        assert (event.action, event.actor, event.ip, event.justification) == (
            AuditAction.ACCESS_BLOCKED,
            staff,
            STAFF_ADDRESS,
            WHY,
        )


def test_no_caller_of_the_actions_can_act_as_support_without_a_reason(
    staff: Mailbox, alice: Mailbox
) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    support = Actor.support(staff)
    with pytest.raises(ValueError, match="justification"):
        actions.block_access(alice, BlockReason.SUPPORT, actor=support)
    with pytest.raises(ValueError, match="justification"):
        actions.change_plan(alice, Plan.PLUS, actor=support, justification="ok")
    assert access_of(alice).enabled
    alice.refresh_from_db()
    assert alice.plan == Plan.FREE
    # The owner and the system act without one, as before.
    assert actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("idle expiry"))


def test_the_audit_trail_shows_where_from_and_why(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    csrf_post(
        staff_client,
        action_url(alice, "block"),
        {"reason": "support", "justification": "Spam complaint <b>#12</b>"},
        REMOTE_ADDR=STAFF_ADDRESS,
    )
    mailbox_page = staff_client.get(change_url(alice)).content.decode()
    audit_log = staff_client.get(reverse("admin:audit_auditevent_changelist"))
    for page in (mailbox_page, audit_log.content.decode()):
        assert STAFF_ADDRESS in page
        assert "Spam complaint &lt;b&gt;#12&lt;/b&gt;" in page
        assert "<b>#12</b>" not in page


def test_access_story_shows_where_from_and_why(
    staff: Mailbox, alice: Mailbox, settings: Any
) -> None:
    settings.MAILSERVER_REDIS_URL = f"redis://127.0.0.1:{closed_port()}/11"
    counters.sync_client.cache_clear()
    actions.enable_access(alice, actor=Actor.user(alice))
    actions.block_access(
        alice,
        BlockReason.SUPPORT,
        actor=Actor.support(staff),
        ip=STAFF_ADDRESS,
        justification="Ticket 4711:\nthe owner asked.",
    )
    out = StringIO()
    call_command("access_story", alice.address, stdout=out)
    counters.sync_client.cache_clear()
    line = next(line for line in out.getvalue().splitlines() if "access blocked" in line)
    assert f"by support staff {staff.address}" in line
    assert f"from {STAFF_ADDRESS}" in line
    assert "why: Ticket 4711: the owner asked." in line
