from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox, Status
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions
from tests.conftest import ALICE_PASSWORD, csrf_post

URL = reverse("accounts:login")


def test_sign_in_with_mailbox_address_and_web_password(alice: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    response = csrf_post(client, URL, {"address": "Alice@Inbox.LV", "password": ALICE_PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("mailaccess:settings")


def test_wrong_password_and_unknown_mailbox_get_the_same_message(alice: Mailbox) -> None:
    wrong = csrf_post(
        Client(enforce_csrf_checks=True), URL, {"address": "alice@inbox.lv", "password": "x"}
    )
    unknown = csrf_post(
        Client(enforce_csrf_checks=True), URL, {"address": "nobody@inbox.lv", "password": "x"}
    )
    assert wrong.status_code == unknown.status_code == 200
    message = "Pastkastītes adrese vai parole nav pareiza."
    assert message in wrong.content.decode() and message in unknown.content.decode()


def test_sign_in_does_not_redirect_to_another_site(alice: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    response = csrf_post(
        client,
        URL,
        {"address": "alice@inbox.lv", "password": ALICE_PASSWORD, "next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("mailaccess:settings")


def test_sign_out_is_post_only(alice_client: Client) -> None:
    assert alice_client.get(reverse("accounts:logout")).status_code == 405


def test_signing_in_is_recorded_in_the_audit_log(alice: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    csrf_post(
        client,
        URL,
        {"address": "alice@inbox.lv", "password": ALICE_PASSWORD},
        REMOTE_ADDR="192.0.2.44",
    )
    event = AuditEvent.objects.get(mailbox=alice, action=AuditAction.SIGNED_IN)
    assert event.ip == "192.0.2.44" and event.actor == alice


def test_a_failed_sign_in_is_not_recorded_as_a_sign_in(alice: Mailbox) -> None:
    csrf_post(Client(), URL, {"address": "alice@inbox.lv", "password": "wrong"})
    assert not AuditEvent.objects.filter(action=AuditAction.SIGNED_IN).exists()


def test_signing_in_on_the_web_makes_an_inactive_mailbox_active_again(alice: Mailbox) -> None:
    actions.change_status(alice, Status.INACTIVE, actor=Actor.system("disuse"))
    csrf_post(Client(), URL, {"address": "alice@inbox.lv", "password": ALICE_PASSWORD})
    alice.refresh_from_db()
    assert alice.status == Status.ACTIVE
    assert AuditEvent.objects.filter(
        mailbox=alice, action=AuditAction.STATUS_CHANGED, actor=alice
    ).exists()
