"""The panel's security page: two-factor state and the recent security events."""

from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
from tests.conftest import ALICE_PASSWORD, BOB_PASSWORD, csrf_post
from tests.otp import sign_in

URL = reverse("accounts:security")


def test_it_lists_sign_ins_access_switched_on_and_passwords_created(bob: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    sign_in(client, bob.address, BOB_PASSWORD, REMOTE_ADDR="192.0.2.61")
    csrf_post(client, reverse("mailaccess:mail_programs"), {"external_access": "on"})
    csrf_post(client, reverse("mailaccess:mail_programs"), {})
    page = client.get(URL).content.decode()
    for text in (
        "Signed in",
        "Access switched on",
        "Mail-program password created",
        "Access switched off",
        "192.0.2.61",
    ):
        assert text in page


def test_it_shows_nothing_of_other_mailboxes(alice: Mailbox, bob_client: Client) -> None:
    sign_in(Client(enforce_csrf_checks=True), alice.address, "x", REMOTE_ADDR="192.0.2.62")
    sign_in(
        Client(enforce_csrf_checks=True), alice.address, ALICE_PASSWORD, REMOTE_ADDR="192.0.2.63"
    )
    page = bob_client.get(URL).content.decode()
    assert "192.0.2.63" not in page
    assert "No security events yet." in page


def test_the_settings_page_links_to_it(alice_client: Client) -> None:
    assert URL in alice_client.get(reverse("mailaccess:settings")).content.decode()


def test_signed_out_visitors_are_sent_to_sign_in(db: None) -> None:
    assert reverse("accounts:login") in Client().get(URL)["Location"]
