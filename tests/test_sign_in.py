from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
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
