"""Support staff in the admin: what they see on a mailbox page and what they may do."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox, Plan
from audit.models import Actor, ActorKind, AuditAction, AuditEvent
from mailaccess import actions
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, Notice
from tests.conftest import csrf_post
from tests.otp import verified_client

CHANGELIST = reverse("admin:accounts_mailbox_changelist")
# Every support action says why (tests/test_support_audit.py).
WHY = "Ticket 4711: the owner asked us to."


def change_url(mailbox: Mailbox) -> str:
    return reverse("admin:accounts_mailbox_change", args=[mailbox.pk])


def action_url(mailbox: Mailbox, slug: str) -> str:
    return reverse("admin:accounts_mailbox_support_action", args=[mailbox.pk, slug])


@pytest.fixture
def staff(db: None) -> Mailbox:
    member = Mailbox.objects.create_user(
        "support@inbox.lv", "support-web-password-1", is_staff=True
    )
    member.groups.add(Group.objects.get(name="support"))
    return member


@pytest.fixture
def staff_client(staff: Mailbox) -> Client:
    return verified_client(staff, enforce_csrf_checks=True)


@pytest.fixture
def outsider_client(db: None) -> Client:
    """Staff who can sign in to the admin but are not in the support group."""
    outsider = Mailbox.objects.create_user(
        "intern@inbox.lv", "intern-web-password-1", is_staff=True
    )
    return verified_client(outsider, enforce_csrf_checks=True)


@pytest.fixture
def superuser_client(db: None) -> Client:
    root = Mailbox.objects.create_superuser("root@inbox.lv", "root-web-password-1")
    return verified_client(root, enforce_csrf_checks=True)


@pytest.fixture
def alice_on(alice: Mailbox) -> str:
    """Alice has switched access on; returns her mail-program password."""
    password = actions.enable_access(alice, actor=Actor.user(alice))
    assert password
    return password


def access_of(mailbox: Mailbox) -> ExternalAccess:
    return ExternalAccess.objects.get(mailbox=mailbox)


def last_event(mailbox: Mailbox) -> AuditEvent:
    return AuditEvent.objects.filter(mailbox=mailbox).first()  # type: ignore[return-value]


def bulk(client: Client, action: str, mailboxes: list[Mailbox], **data: str):  # type: ignore[no-untyped-def]
    """Pick an admin action on the changelist; with confirm=yes, answer its confirmation."""
    return csrf_post(
        client,
        CHANGELIST,
        {
            "action": action,
            ACTION_CHECKBOX_NAME: [str(m.pk) for m in mailboxes],
            "justification": WHY,
            **data,
        },
    )


def test_the_support_group_holds_exactly_the_support_rights(db: None) -> None:
    codenames = set(
        Group.objects.get(name="support").permissions.values_list("codename", flat=True)
    )
    assert codenames == {
        "view_mailbox",
        "view_externalaccess",
        "view_apppassword",
        "view_auditevent",
        "view_notice",
        "view_sendinglimit",
        "view_passwordactivity",
        "view_newprogramalert",
        "block_access",
        "unblock_access",
        "disable_access",
        "change_plan",
        "view_support_dashboard",
    }


def test_the_mailbox_page_shows_access_passwords_and_audit_trail_but_never_a_hash(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    app_password = AppPassword.objects.get(mailbox=alice)
    AppPassword.objects.filter(pk=app_password.pk).update(label="Outlook at home")
    page = staff_client.get(change_url(alice)).content.decode()
    assert "Outlook at home" in page
    assert "IMAP, POP3, SMTP" in page
    assert 'id="support-audit"' in page
    assert str(AuditAction.ACCESS_ENABLED.label) in page
    assert app_password.password_hash not in page
    assert app_password.lookup_key not in page
    assert alice_on not in page


def test_the_password_admin_never_shows_a_hash_even_to_a_superuser(
    superuser_client: Client, alice: Mailbox, alice_on: str
) -> None:
    app_password = AppPassword.objects.get(mailbox=alice)
    for url in (
        reverse("admin:mailaccess_apppassword_changelist"),
        reverse("admin:mailaccess_apppassword_change", args=[app_password.pk]),
    ):
        response = superuser_client.get(url)
        assert response.status_code == 200
        page = response.content.decode()
        assert app_password.password_hash not in page
        assert app_password.lookup_key not in page
        assert "password_hash" not in page


def test_blocking_asks_first_then_blocks_notifies_and_names_the_staff_member(
    staff_client: Client, staff: Mailbox, alice: Mailbox, alice_on: str
) -> None:
    confirmation = staff_client.get(action_url(alice, "block"))
    assert confirmation.status_code == 200
    assert 'name="reason"' in confirmation.content.decode()
    assert access_of(alice).enabled, "asking changes nothing"

    response = csrf_post(
        staff_client, action_url(alice, "block"), {"reason": "faulty_program", "justification": WHY}
    )
    assert response.status_code == 302
    access = access_of(alice)
    assert not access.enabled
    assert access.block_reason == BlockReason.FAULTY_PROGRAM
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()
    assert Notice.objects.filter(mailbox=alice, reason=BlockReason.FAULTY_PROGRAM).count() == 1
    event = last_event(alice)
    assert event.action == AuditAction.ACCESS_BLOCKED
    assert (event.actor_kind, event.actor, event.actor_label) == (
        ActorKind.SUPPORT,
        staff,
        "support@inbox.lv",
    )


def test_a_block_with_an_unknown_reason_changes_nothing(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    response = csrf_post(
        staff_client, action_url(alice, "block"), {"reason": "because", "justification": WHY}
    )
    assert response.status_code == 400
    assert access_of(alice).enabled
    assert not Notice.objects.exists()


def test_marking_compromised_forces_a_web_password_change(
    staff_client: Client, staff: Mailbox, alice: Mailbox, alice_on: str
) -> None:
    csrf_post(staff_client, action_url(alice, "compromised"), {"justification": WHY})
    access = access_of(alice)
    assert access.block_reason == BlockReason.COMPROMISED
    assert access.requires_password_change
    assert last_event(alice).actor == staff
    with pytest.raises(actions.AccessError):
        actions.enable_access(alice, actor=Actor.user(alice))


def test_lifting_a_block_leaves_access_off_for_the_owner_to_switch_on(
    staff_client: Client, staff: Mailbox, alice: Mailbox
) -> None:
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    csrf_post(staff_client, action_url(alice, "unblock"), {"justification": WHY})
    access = access_of(alice)
    assert (access.block_reason, access.requires_password_change, access.enabled) == (
        "",
        False,
        False,
    )
    event = last_event(alice)
    assert (event.action, event.actor) == (AuditAction.ACCESS_UNBLOCKED, staff)


def test_ending_all_passwords_switches_access_off(
    staff_client: Client, staff: Mailbox, alice: Mailbox, alice_on: str
) -> None:
    csrf_post(staff_client, action_url(alice, "end-passwords"), {"justification": WHY})
    assert not access_of(alice).enabled
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()
    event = last_event(alice)
    assert (event.action, event.actor, event.ip) == (
        AuditAction.ACCESS_DISABLED,
        staff,
        "127.0.0.1",
    )


def test_changing_the_plan_is_audited(staff_client: Client, staff: Mailbox, alice: Mailbox) -> None:
    actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("smtp policy"))
    csrf_post(
        staff_client, action_url(alice, "change-plan"), {"plan": "plus", "justification": WHY}
    )
    alice.refresh_from_db()
    assert alice.plan == Plan.PLUS
    event = last_event(alice)
    assert (event.action, event.actor) == (AuditAction.PLAN_CHANGED, staff)
    assert (event.detail["from"], event.detail["to"]) == ("free", "plus")
    # Blocked for sending too much just now: the upgrade lifts the free sending limits only
    # within two working days, and the row says when.
    assert event.detail["sending_limits_lift_at"]


def test_support_lifts_the_free_limits_of_an_upgrade_sooner(
    staff_client: Client, staff: Mailbox, alice: Mailbox
) -> None:
    actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("smtp policy"))
    actions.change_plan(alice, Plan.PLUS, actor=Actor.system("billing"))
    alice.refresh_from_db()
    assert alice.sending_limits_lift_at is not None
    page = staff_client.get(change_url(alice)).content.decode()
    assert action_url(alice, "lift-sending-limits") in page
    csrf_post(staff_client, action_url(alice, "lift-sending-limits"), {"justification": WHY})
    alice.refresh_from_db()
    assert alice.sending_limits_lift_at is None
    event = last_event(alice)
    assert (event.action, event.actor) == (AuditAction.SENDING_LIMITS_LIFTED, staff)


def test_lifting_limits_needs_the_plan_permission(outsider_client: Client, alice: Mailbox) -> None:
    actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("smtp policy"))
    actions.change_plan(alice, Plan.PLUS, actor=Actor.system("billing"))
    url = action_url(alice, "lift-sending-limits")
    assert outsider_client.get(url).status_code == 403
    outsider_client.get(reverse("admin:index"))
    token = outsider_client.cookies["csrftoken"].value
    response = outsider_client.post(url, {"justification": WHY, "csrfmiddlewaretoken": token})
    assert response.status_code == 403
    alice.refresh_from_db()
    assert alice.sending_limits_lift_at is not None


def test_an_action_posted_without_the_csrf_token_is_refused(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    response = staff_client.post(action_url(alice, "block"), {"reason": "support"})
    assert response.status_code == 403
    assert access_of(alice).enabled


def test_a_bulk_action_posted_without_the_csrf_token_is_refused(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    response = staff_client.post(
        CHANGELIST,
        {"action": "support_end_passwords", ACTION_CHECKBOX_NAME: [alice.pk], "confirm": "yes"},
    )
    assert response.status_code == 403
    assert access_of(alice).enabled


def test_staff_outside_the_support_group_can_neither_see_nor_act(
    outsider_client: Client, alice: Mailbox, alice_on: str
) -> None:
    assert outsider_client.get(change_url(alice)).status_code == 403
    assert outsider_client.get(action_url(alice, "block")).status_code == 403
    outsider_client.get(reverse("admin:index"))
    token = outsider_client.cookies["csrftoken"].value
    response = outsider_client.post(
        action_url(alice, "block"), {"reason": "support", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 403
    assert access_of(alice).enabled


def test_support_sees_only_the_actions_its_rights_allow(
    staff_client: Client, staff: Mailbox, alice: Mailbox, alice_on: str
) -> None:
    staff.groups.clear()
    limited = Group.objects.create(name="read-only")
    limited.permissions.set(
        Group.objects.get(name="support").permissions.exclude(codename="block_access")
    )
    staff.groups.add(limited)
    page = staff_client.get(change_url(alice)).content.decode()
    assert action_url(alice, "unblock") in page
    assert action_url(alice, "block") not in page
    assert staff_client.get(action_url(alice, "compromised")).status_code == 403
    changelist = staff_client.get(CHANGELIST).content.decode()
    assert "support_unblock" in changelist
    assert "support_block" not in changelist


def test_support_cannot_edit_a_mailbox_directly_or_make_anyone_staff(
    staff_client: Client, alice: Mailbox
) -> None:
    page = staff_client.get(change_url(alice)).content.decode()
    assert 'name="is_superuser"' not in page
    assert 'name="plan"' not in page
    response = csrf_post(
        staff_client,
        change_url(alice),
        {"address": "alice@inbox.lv", "is_staff": "on", "is_superuser": "on", "plan": "plus"},
    )
    assert response.status_code == 403
    alice.refresh_from_db()
    assert (alice.is_staff, alice.is_superuser, alice.plan) == (False, False, Plan.FREE)
    assert (
        staff_client.get(reverse("admin:accounts_mailbox_delete", args=[alice.pk])).status_code
        == 403
    )
    assert staff_client.get(reverse("admin:auth_group_changelist")).status_code == 403


def test_staff_allowed_to_edit_mailboxes_still_cannot_grant_privileges(
    staff: Mailbox, alice: Mailbox
) -> None:
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="change_mailbox"))
    client = verified_client(staff, enforce_csrf_checks=True)
    response = csrf_post(
        client,
        change_url(alice),
        {
            "address": "alice@inbox.lv",
            "language": "en",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "plan": "plus",
            "status": "inactive",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.language == "en"
    assert (alice.is_staff, alice.is_superuser, alice.plan, alice.status) == (
        False,
        False,
        Plan.FREE,
        "active",
    )


def test_the_audit_log_is_read_only_even_for_a_superuser(
    superuser_client: Client, alice: Mailbox, alice_on: str
) -> None:
    event = last_event(alice)
    assert superuser_client.get(reverse("admin:audit_auditevent_changelist")).status_code == 200
    assert superuser_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert (
        superuser_client.get(reverse("admin:audit_auditevent_delete", args=[event.pk])).status_code
        == 403
    )
    change = reverse("admin:audit_auditevent_change", args=[event.pk])
    assert superuser_client.get(change).status_code == 200
    response = csrf_post(superuser_client, change, {"address": "mallory@inbox.lv"})
    assert response.status_code == 403
    response = csrf_post(
        superuser_client,
        reverse("admin:audit_auditevent_changelist"),
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [str(event.pk)], "post": "yes"},
    )
    assert AuditEvent.objects.filter(pk=event.pk, address="alice@inbox.lv").exists()


def test_support_reads_the_audit_log_but_cannot_delete_it(
    staff_client: Client, alice: Mailbox, alice_on: str
) -> None:
    event = last_event(alice)
    assert staff_client.get(reverse("admin:audit_auditevent_changelist")).status_code == 200
    delete = reverse("admin:audit_auditevent_delete", args=[event.pk])
    assert csrf_post(staff_client, delete, {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_access_rows_cannot_be_edited_in_the_admin(
    superuser_client: Client, alice: Mailbox, alice_on: str
) -> None:
    change = reverse("admin:mailaccess_externalaccess_change", args=[alice.pk])
    assert superuser_client.get(change).status_code == 200
    assert csrf_post(superuser_client, change, {"enabled": ""}).status_code == 403
    assert access_of(alice).enabled


def test_bulk_block_shows_a_confirmation_then_blocks_each_mailbox(
    staff_client: Client, staff: Mailbox, alice: Mailbox, bob: Mailbox, alice_on: str
) -> None:
    actions.enable_access(bob, actor=Actor.user(bob))
    confirmation = bulk(staff_client, "support_block", [alice, bob])
    assert confirmation.status_code == 200
    page = confirmation.content.decode()
    assert "alice@inbox.lv" in page and "bob@mail.ee" in page
    assert 'name="confirm"' in page
    assert access_of(alice).enabled and access_of(bob).enabled, "asking changes nothing"

    response = bulk(staff_client, "support_block", [alice, bob], reason="support", confirm="yes")
    assert response.status_code == 302
    for mailbox in (alice, bob):
        access = access_of(mailbox)
        assert (access.enabled, access.block_reason) == (False, BlockReason.SUPPORT)
        assert last_event(mailbox).actor == staff
    assert Notice.objects.filter(reason=BlockReason.SUPPORT).count() == 2


def test_bulk_plan_change_and_unblock(
    staff_client: Client, staff: Mailbox, alice: Mailbox, bob: Mailbox
) -> None:
    bulk(staff_client, "support_change_plan", [alice, bob], plan="plus", confirm="yes")
    alice.refresh_from_db()
    assert alice.plan == Plan.PLUS
    assert not AuditEvent.objects.filter(mailbox=bob).exists(), "bob had Mail+ already"

    actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    bulk(staff_client, "support_unblock", [alice], confirm="yes")
    assert access_of(alice).block_reason == ""
    assert last_event(alice).actor == staff


def test_bulk_mark_compromised_and_end_passwords(
    staff_client: Client, alice: Mailbox, bob: Mailbox, alice_on: str
) -> None:
    actions.enable_access(bob, actor=Actor.user(bob))
    bulk(staff_client, "support_end_passwords", [bob], confirm="yes")
    assert not access_of(bob).enabled
    bulk(staff_client, "support_compromised", [alice], confirm="yes")
    assert access_of(alice).requires_password_change


def test_a_bulk_action_over_too_many_mailboxes_is_refused(
    staff_client: Client, alice: Mailbox, alice_on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailaccess import admin_views

    monkeypatch.setattr(admin_views, "BULK_LIMIT", 0)
    response = bulk(staff_client, "support_block", [alice], reason="support", confirm="yes")
    assert response.status_code == 302
    assert access_of(alice).enabled


def test_an_action_answers_other_methods_with_405(staff: Mailbox, alice: Mailbox) -> None:
    client = verified_client(staff)
    assert client.put(action_url(alice, "block")).status_code == 405
