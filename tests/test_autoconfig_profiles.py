"""Apple configuration profiles for iOS and macOS Mail."""

import base64
import html
import plistlib
import re
from datetime import timedelta
from urllib.parse import unquote

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from accounts import sudo
from accounts.models import Mailbox
from tests.conftest import csrf_post, redis_url_for_tests, signed_in_client

MAIL_PROGRAMS = reverse("mailaccess:mail_programs")
GENERIC = reverse("mailaccess:apple_profile")
ONCE_LINK_RE = re.compile(r'href="(/settings/mail-programs/apple-profile/once/\?[^"]+)"')
URL_ATTRIBUTE_RE = re.compile(r'(?:href|src|action|formaction)="([^"]*)"')
PASSWORD_RE = re.compile(r'<output id="new-password"[^>]*>([a-z2-9-]+)</output>')


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    cache.clear()


def switch_on(client: Client) -> tuple[str, str]:
    """Switch access on; return the password shown and the one-time profile link."""
    page = csrf_post(client, MAIL_PROGRAMS, {"external_access": "on"}).content.decode()
    password = PASSWORD_RE.search(page)
    link = ONCE_LINK_RE.search(page)
    assert password and link
    return password.group(1), link.group(1).replace("&amp;", "&")


def mail_account(response) -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert response["Content-Type"] == "application/x-apple-aspen-config"
    profile = plistlib.loads(response.content)
    assert profile["PayloadType"] == "Configuration"
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    return dict(account)


@pytest.mark.parametrize(
    ("client_fixture", "address", "host"),
    [("alice_client", "alice@inbox.lv", "mail.inbox.lv"), ("bob_client", "bob@mail.ee", "mail.ee")],
)
def test_the_generic_profile_sets_up_imap_and_smtp_without_a_password(
    request: pytest.FixtureRequest, client_fixture: str, address: str, host: str
) -> None:
    client = request.getfixturevalue(client_fixture)
    response = client.get(GENERIC)
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    account = mail_account(response)
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["EmailAddress"] == address
    assert (account["IncomingMailServerHostName"], account["IncomingMailServerPortNumber"]) == (
        host,
        993,
    )
    assert account["IncomingMailServerUseSSL"] is True
    assert (account["OutgoingMailServerHostName"], account["OutgoingMailServerPortNumber"]) == (
        host,
        465,
    )
    assert account["OutgoingMailServerUseSSL"] is True
    assert account["IncomingMailServerUsername"] == account["OutgoingMailServerUsername"] == address
    assert "IncomingPassword" not in account


def test_the_generic_profile_needs_a_signed_in_user(client: Client) -> None:
    response = client.get(GENERIC)
    assert response.status_code == 302
    assert reverse("accounts:login") in response["Location"]


def test_the_profile_with_the_new_password_downloads_once(alice_client: Client) -> None:
    password, link = switch_on(alice_client)
    first = alice_client.get(link)
    assert first.status_code == 200
    assert "no-store" in first["Cache-Control"]
    assert mail_account(first)["IncomingPassword"] == password
    second = alice_client.get(link)
    assert second.status_code == 410
    assert password not in second.content.decode()


def test_the_profile_with_the_password_expires_after_ten_minutes(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    with time_machine.travel(timezone.now() + timedelta(minutes=10, seconds=1)):
        # Fresh proof (sudo mode lasts ten minutes too): the link itself must be gone.
        session = alice_client.session
        sudo.grant(session)
        session.save()
        assert alice_client.get(link).status_code == 410


def test_the_profile_minutes_are_a_setting(alice_client: Client, settings: Settings) -> None:
    settings.APPLE_PROFILE_PASSWORD_MINUTES = 2
    password, link = switch_on(alice_client)
    with time_machine.travel(timezone.now() + timedelta(minutes=1, seconds=50)):
        assert mail_account(alice_client.get(link))["IncomingPassword"] == password
    _password, link = switch_on_again(alice_client)
    with time_machine.travel(timezone.now() + timedelta(minutes=2, seconds=1)):
        assert alice_client.get(link).status_code == 410


def switch_on_again(client: Client) -> tuple[str, str]:
    csrf_post(client, MAIL_PROGRAMS, {})
    return switch_on(client)


def test_someone_else_cannot_use_the_link_and_it_ends_it(
    alice_client: Client, bob_client: Client
) -> None:
    _password, link = switch_on(alice_client)
    assert bob_client.get(link).status_code == 410
    assert alice_client.get(link).status_code == 410


def test_the_link_works_only_in_the_session_that_made_the_password(
    alice: Mailbox, alice_client: Client
) -> None:
    _password, link = switch_on(alice_client)
    # The same owner signed in elsewhere (or someone who copied the link and the password).
    other_browser = signed_in_client(alice)
    assert other_browser.get(link).status_code == 410
    assert alice_client.get(link).status_code == 410


def test_a_link_of_a_password_switched_off_gives_nothing(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    csrf_post(alice_client, MAIL_PROGRAMS, {})
    assert alice_client.get(link).status_code == 410


def test_a_made_up_link_gives_nothing(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    base = link.split("?")[0]
    for download in ["", "x", "A" * 24, "../" * 8, link.split("=")[1] + "A"]:
        assert alice_client.get(base, {"download": download}).status_code == 410
    # Nothing above named the real stash: it still works.
    assert alice_client.get(link).status_code == 200


def stashes() -> dict[str, dict]:  # type: ignore[type-arg]
    """The profile stashes in the (local-memory) cache, by cache key."""
    store = getattr(cache, "_cache", None)
    if store is None:
        pytest.skip("the cache in use cannot be listed")
    found = {}
    for key in list(store):
        # Stored as ":<version>:<key>": read back through the cache itself.
        _empty, _version, name = key.split(":", 2)
        if name.startswith("apple-profile:"):
            found[name] = cache.get(name)
    return found


def urls_on(page: str) -> list[str]:
    return [unquote(html.unescape(url)) for url in URL_ATTRIBUTE_RE.findall(page)]


def test_no_url_on_the_page_holds_the_password_or_its_pad(alice_client: Client) -> None:
    response = csrf_post(alice_client, MAIL_PROGRAMS, {"external_access": "on"})
    page = response.content.decode()
    password = PASSWORD_RE.search(page)
    assert password and ONCE_LINK_RE.search(page)
    secret = password.group(1).encode()
    (stash,) = stashes().values()
    ciphertext = base64.urlsafe_b64decode(stash["ciphertext"] + "=" * 4)
    pad = bytes(a ^ b for a, b in zip(ciphertext, secret, strict=True))
    pad_texts = {base64.urlsafe_b64encode(pad).decode().rstrip("="), pad.hex()}
    for url in urls_on(page):
        assert password.group(1) not in url
        for pad_text in pad_texts:
            assert pad_text not in url, url


def signed_in_without_sudo(client: Client) -> None:
    session = client.session
    session[sudo.SESSION_KEY] = 0
    session.save()


def test_a_download_refused_because_sudo_mode_is_over_ends_the_stash(
    alice_client: Client,
) -> None:
    _password, link = switch_on(alice_client)
    assert stashes()
    signed_in_without_sudo(alice_client)
    refused = alice_client.get(link)
    assert refused.status_code == 410
    assert 'name="sudo-password"' not in refused.content.decode()
    assert stashes() == {}
    assert not alice_client.session.get("apple_profile_pads")
    # Proof again does not bring it back.
    session = alice_client.session
    sudo.grant(session)
    session.save()
    assert alice_client.get(link).status_code == 410


def test_a_download_refused_to_someone_else_ends_the_stash(
    alice_client: Client, bob_client: Client
) -> None:
    _password, link = switch_on(alice_client)
    assert bob_client.get(link).status_code == 410
    assert stashes() == {}


def test_a_download_ends_the_stash(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    assert alice_client.get(link).status_code == 200
    assert stashes() == {}
    assert alice_client.session["apple_profile_pads"] == {}


def test_the_password_is_not_kept_in_plain_text(alice_client: Client, alice: Mailbox) -> None:
    password, _link = switch_on(alice_client)
    session = alice_client.session
    assert password not in str(dict(session.items()))
    cached = getattr(cache, "_cache", None)
    if cached is None:
        pytest.skip("the cache in use cannot be listed")
    assert cached, "the stash is in the cache"
    for value in cached.values():
        assert password.encode() not in value


@pytest.mark.e2e
def test_the_profile_with_the_password_downloads_once_with_redis(
    alice_client: Client, settings: Settings
) -> None:
    redis_url = redis_url_for_tests()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "test-profiles",
        }
    }
    password, link = switch_on(alice_client)
    assert mail_account(alice_client.get(link))["IncomingPassword"] == password
    assert alice_client.get(link).status_code == 410
