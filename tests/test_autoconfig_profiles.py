"""Apple configuration profiles for iOS and macOS Mail."""

import os
import plistlib
import re
from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings

from accounts.models import Mailbox
from tests.conftest import csrf_post

MAIL_PROGRAMS = reverse("mailaccess:mail_programs")
GENERIC = reverse("mailaccess:apple_profile")
ONCE_LINK_RE = re.compile(r'href="(/settings/mail-programs/apple-profile/once/\?token=[^"]+)"')
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
    return account


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


def test_someone_else_cannot_use_the_link(alice_client: Client, bob_client: Client) -> None:
    password, link = switch_on(alice_client)
    assert bob_client.get(link).status_code == 410
    assert mail_account(alice_client.get(link))["IncomingPassword"] == password


def test_a_link_of_a_password_switched_off_gives_nothing(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    csrf_post(alice_client, MAIL_PROGRAMS, {})
    assert alice_client.get(link).status_code == 410


def test_a_tampered_token_gives_nothing(alice_client: Client) -> None:
    _password, link = switch_on(alice_client)
    stash_id = link.split("token=")[1].split(".")[0]
    assert alice_client.get(f"{link.split('?')[0]}?token={stash_id}.AAAAAAAA").status_code == 410


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
    redis_url = os.environ.get("REDIS_URL_FOR_TESTS")
    if not redis_url:
        pytest.skip("REDIS_URL_FOR_TESTS is not set")
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
