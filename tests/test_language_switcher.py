"""The language switcher in the header: five languages, the choice kept for signed-in users."""

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox

SETTINGS_URL = reverse("mailaccess:settings")
LOGIN_URL = reverse("accounts:login")
SWITCH_URL = reverse("set_language")


def switch_language(client: Client, data: dict[str, str]):  # type: ignore[no-untyped-def]
    """Use the switcher of a page's header, as a browser does (CSRF token included)."""
    client.get(LOGIN_URL)
    token = client.cookies["csrftoken"].value
    return client.post(SWITCH_URL, {**data, "csrfmiddlewaretoken": token})


def test_the_site_offers_five_languages() -> None:
    assert [code for code, _name in settings.LANGUAGES] == ["lv", "en", "ru", "lt", "et"]


def test_every_page_header_has_the_switcher(alice_client: Client) -> None:
    page = alice_client.get(SETTINGS_URL).content.decode()
    assert f'action="{SWITCH_URL}"' in page
    for code in ["lv", "en", "ru", "lt", "et"]:
        assert f'<option value="{code}"' in page


@pytest.mark.parametrize(
    ("language", "settings_word"),
    [("ru", "Настройки"), ("lt", "Nustatymai"), ("et", "Seaded"), ("en", "Settings")],
)
def test_switching_language_keeps_the_choice_for_the_mailbox(
    alice_client: Client, alice: Mailbox, language: str, settings_word: str
) -> None:
    response = switch_language(alice_client, {"language": language, "next": SETTINGS_URL})
    assert response.status_code == 302
    assert response["Location"] == SETTINGS_URL
    alice.refresh_from_db()
    assert alice.language == language
    # A new browser (no language cookie) still gets the stored language.
    fresh = Client()
    fresh.force_login(alice)
    assert f"<h1>{settings_word}</h1>" in fresh.get(SETTINGS_URL).content.decode()


def test_a_visitor_gets_the_language_by_cookie(db: None) -> None:
    client = Client(enforce_csrf_checks=True)
    switch_language(client, {"language": "lt", "next": LOGIN_URL})
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "lt"
    assert 'lang="lt"' in client.get(LOGIN_URL).content.decode()


def test_an_unknown_language_changes_nothing(alice_client: Client, alice: Mailbox) -> None:
    switch_language(alice_client, {"language": "de"})
    alice.refresh_from_db()
    assert alice.language == "lv"


def test_switching_language_needs_a_post(alice_client: Client) -> None:
    assert alice_client.get(SWITCH_URL).status_code == 405
