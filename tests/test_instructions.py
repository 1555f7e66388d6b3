import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
from mailaccess.instructions import PROGRAMS

REQUIRED_PROGRAMS = {
    "thunderbird-imap",
    "outlook-imap",
    "windows-live-mail-imap",
    "outlook-pop3",
    "windows-mail",
    "the-bat",
    "apple-mail",
    "ios-mail",
}


def test_every_program_of_the_help_page_has_instructions() -> None:
    assert {program.slug for program in PROGRAMS} == REQUIRED_PROGRAMS


@pytest.mark.parametrize("slug", sorted(REQUIRED_PROGRAMS))
def test_instruction_pages_show_the_users_own_host_and_address(
    alice_client: Client, bob_client: Client, slug: str
) -> None:
    page = alice_client.get(reverse("mailaccess:program", args=[slug])).content.decode()
    assert "alice@inbox.lv" in page
    assert "mail.inbox.lv" in page
    assert "mail.ee" not in page
    other = bob_client.get(reverse("mailaccess:program", args=[slug])).content.decode()
    assert "bob@mail.ee" in other and "mail.inbox.lv" not in other


def test_server_table_has_ports_and_encryption(alice_client: Client) -> None:
    page = alice_client.get(reverse("mailaccess:mail_programs")).content.decode()
    for port in ("993", "995", "587", "465"):
        assert f'<td data-label="Ports">{port}</td>' in page
    assert "STARTTLS" in page
    assert "atstāt vēstuļu kopiju uz servera" in page
    assert "ne biežāk kā reizi 5 minūtēs" in page


def test_pop3_instructions_say_leave_messages_on_server(alice_client: Client) -> None:
    page = alice_client.get(reverse("mailaccess:program", args=["outlook-pop3"])).content.decode()
    assert "Atstāt vēstuļu kopiju uz servera" in page
    assert "995" in page


def test_unknown_program_is_404(alice_client: Client) -> None:
    assert alice_client.get(reverse("mailaccess:program", args=["pine"])).status_code == 404


def test_instructions_need_sign_in(db: None) -> None:
    response = Client().get(reverse("mailaccess:program", args=["ios-mail"]))
    assert response.status_code == 302


def test_english_is_the_second_language(bob: Mailbox, bob_client: Client) -> None:
    page = bob_client.get(reverse("mailaccess:program", args=["thunderbird-imap"])).content.decode()
    assert "User name: bob@mail.ee" in page
