"""Web sign-in throttling per mailbox address, per client network and per known browser."""

import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from accounts import throttling
from accounts.models import Mailbox
from tests.conftest import (
    ALICE_PASSWORD,
    BOB_PASSWORD,
    REDIS_URL_FOR_TESTS,
    csrf_post,
    redis_url_for_tests,
)
from tests.otp import current_code, enable_two_factor, enter_code, is_signed_in, sign_in

NOW = timezone.now().replace(microsecond=0)
THROTTLED = "Pārāk daudz neveiksmīgu mēģinājumu"


@pytest.fixture
def limits(settings: Settings) -> Settings:
    settings.SIGN_IN_FAILURES_PER_MAILBOX = 3
    settings.SIGN_IN_FAILURES_PER_IP = 5
    settings.SIGN_IN_WINDOW_SECONDS = 900
    return settings


def fail(address: str, times: int, ip: str = "192.0.2.1") -> None:
    for _ in range(times):
        response = sign_in(Client(), address, "wrong-password", REMOTE_ADDR=ip)
        assert response.status_code == 200


def test_below_the_limit_the_right_password_still_signs_in(
    alice: Mailbox, limits: Settings
) -> None:
    fail(alice.address, 2)
    client = Client()
    assert sign_in(client, alice.address, ALICE_PASSWORD).status_code == 302
    assert is_signed_in(client)


def test_at_the_limit_even_the_right_password_is_refused(alice: Mailbox, limits: Settings) -> None:
    fail(alice.address, 3)
    client = Client()
    response = sign_in(client, alice.address, ALICE_PASSWORD, REMOTE_ADDR="198.51.100.9")
    assert response.status_code == 429
    assert THROTTLED in response.content.decode()
    assert not is_signed_in(client)


def test_an_unknown_mailbox_is_throttled_exactly_like_a_real_one(
    alice: Mailbox, limits: Settings
) -> None:
    fail(alice.address, 3)
    fail("nobody@inbox.lv", 3, ip="192.0.2.2")
    real = sign_in(Client(), alice.address, "x", REMOTE_ADDR="198.51.100.9")
    unknown = sign_in(Client(), "nobody@inbox.lv", "x", REMOTE_ADDR="198.51.100.9")
    assert real.status_code == unknown.status_code == 429
    assert THROTTLED in real.content.decode() and THROTTLED in unknown.content.decode()


def test_one_client_ip_is_throttled_across_mailboxes(
    alice: Mailbox,
    bob: Mailbox,
    limits: Settings,
) -> None:
    for number in range(5):
        fail(f"guess{number}@inbox.lv", 1, ip="203.0.113.5")
    from_there = sign_in(Client(), bob.address, BOB_PASSWORD, REMOTE_ADDR="203.0.113.5")
    assert from_there.status_code == 429
    elsewhere = Client()
    assert (
        sign_in(elsewhere, bob.address, BOB_PASSWORD, REMOTE_ADDR="203.0.113.6").status_code == 302
    )


def test_the_throttle_lifts_when_the_window_has_passed(alice: Mailbox, limits: Settings) -> None:
    with time_machine.travel(NOW, tick=False):
        fail(alice.address, 3)
        assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 429
    with time_machine.travel(NOW + timedelta(minutes=16), tick=False):
        assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302


def test_a_successful_sign_in_clears_the_mailbox_count(alice: Mailbox, limits: Settings) -> None:
    fail(alice.address, 2, ip="192.0.2.7")
    assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302
    fail(alice.address, 2, ip="192.0.2.8")
    assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302


def test_wrong_two_factor_codes_count_as_failures(alice: Mailbox, limits: Settings) -> None:
    enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    sign_in(client, alice.address, ALICE_PASSWORD)
    for _ in range(3):
        assert enter_code(client, "aaaa-bbbb-cccc-dddd").status_code == 200
    assert enter_code(client, "aaaa-bbbb-cccc-dddd").status_code == 429
    assert not is_signed_in(client)


@pytest.mark.e2e
def test_counters_are_shared_through_redis(settings: Settings) -> None:
    url = redis_url_for_tests()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"test-{secrets.token_hex(4)}",
        }
    }
    settings.SIGN_IN_FAILURES_PER_MAILBOX = 2
    address, ip = "carol@inbox.lv", "192.0.2.99"
    from django.core.cache import caches

    try:
        assert not throttling.attempt(address, ip, device=None).refused
        assert not throttling.attempt(address, ip, device=None).refused
        assert throttling.attempt(address, "192.0.2.100", device=None).refused
        # Another web process reads the same counter: a fresh connection sees it too.
        caches["default"].close()
        assert caches["default"].get(throttling._mailbox_key(address)) == 3
        # Each counter expires with its window: none is left behind for good.
        client = caches["default"]._cache.get_client()  # type: ignore[attr-defined]  # RedisCache._cache is private, not in django-stubs
        key = caches["default"].make_key(throttling._mailbox_key(address))
        assert 0 < client.ttl(key) <= 900
    finally:
        caches["default"].delete_many(
            [
                throttling._mailbox_key(address),
                throttling._ip_key(ip),
                throttling._ip_key("192.0.2.100"),
            ]
        )


LOGIN = reverse("accounts:login")


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every check of a mailbox's web password (each one a slow hash), by address."""
    checked: list[str] = []
    real = Mailbox.check_password

    def counting(mailbox: Mailbox, raw_password: str) -> bool:
        checked.append(mailbox.address)
        return real(mailbox, raw_password)

    monkeypatch.setattr(Mailbox, "check_password", counting)
    return checked


def known_browser(mailbox: Mailbox, password: str) -> Client:
    """A browser the owner has signed in from before (and signed out of since)."""
    client = Client(enforce_csrf_checks=True)
    assert sign_in(client, mailbox.address, password, REMOTE_ADDR="192.0.2.200").status_code == 302
    csrf_post(client, reverse("accounts:logout"))
    assert not is_signed_in(client)
    return client


def guess(address: str, ip: str, password: str = "wrong-password") -> int:
    """One attempt from a stranger's fresh browser: the answer's status."""
    return (
        Client().post(LOGIN, {"address": address, "password": password}, REMOTE_ADDR=ip).status_code
    )


def test_a_thousand_guesses_from_a_hundred_addresses_never_lock_out_the_owner(
    alice: Mailbox, password_checks: list[str]
) -> None:
    browser = known_browser(alice, ALICE_PASSWORD)
    password_checks.clear()
    addresses = [f"198.51.100.{n}" for n in range(1, 51)] + [
        f"2001:db8:{n:x}::1" for n in range(1, 51)
    ]
    answers = [guess(alice.address, ip) for _ in range(10) for ip in addresses]
    limit = 10  # SIGN_IN_FAILURES_PER_MAILBOX
    assert answers[:limit] == [200] * limit
    assert answers[limit:] == [429] * (1000 - limit)
    # Beyond the limit nothing was checked: the guesses cost no hashing and learnt nothing.
    assert len(password_checks) == limit
    # The owner, from a browser she has used before, signs in at once.
    response = sign_in(browser, alice.address, ALICE_PASSWORD, REMOTE_ADDR="203.0.113.77")
    assert response.status_code == 302
    assert is_signed_in(browser)
    # A new browser is refused like the guesser, without a check (the trade-off).
    assert guess(alice.address, "203.0.113.78", ALICE_PASSWORD) == 429
    assert len(password_checks) == limit + 1


def test_addresses_of_one_ipv6_64_are_one_client(alice: Mailbox, settings: Any) -> None:
    settings.SIGN_IN_FAILURES_PER_IP = 3
    for n in range(1, 4):
        assert guess(f"guess{n}@inbox.lv", f"2001:db8:5:6::{n:x}") == 200
    assert guess(alice.address, "2001:db8:5:6:ffff::1", ALICE_PASSWORD) == 429
    assert guess(alice.address, "2001:db8:5:7::1", ALICE_PASSWORD) == 302


def test_a_known_browser_has_a_limit_of_its_own(alice: Mailbox, limits: Any) -> None:
    settings = limits
    settings.SIGN_IN_FAILURES_PER_DEVICE = 2
    browser = known_browser(alice, ALICE_PASSWORD)
    for _ in range(2):
        assert sign_in(browser, alice.address, "wrong-password").status_code == 200
    assert sign_in(browser, alice.address, ALICE_PASSWORD).status_code == 429
    # Its failures were its own: a new browser of the owner is not held back by them.
    assert guess(alice.address, "198.51.100.1", ALICE_PASSWORD) == 302


def test_a_device_cookie_works_only_for_its_own_mailbox_and_unaltered(
    alice: Mailbox, bob: Mailbox, limits: Any
) -> None:
    browser = known_browser(alice, ALICE_PASSWORD)
    for address in (alice.address, bob.address):
        for _ in range(3):
            guess(address, "192.0.2.50")
    alices = throttling._cookie_name(alice.address)
    value = browser.cookies[alices].value
    # Alice's cookie under Bob's name, and Alice's cookie with its device id changed.
    forged = Client(enforce_csrf_checks=True)
    forged.cookies[throttling._cookie_name(bob.address)] = value
    assert sign_in(forged, bob.address, BOB_PASSWORD).status_code == 429
    tampered = Client(enforce_csrf_checks=True)
    # Its first character is a hex digit of a random device id: change it, whatever it is.
    tampered.cookies[alices] = ("1" if value[0] == "0" else "0") + value[1:]
    assert sign_in(tampered, alice.address, ALICE_PASSWORD).status_code == 429
    assert sign_in(browser, alice.address, ALICE_PASSWORD).status_code == 302


def test_a_new_web_password_voids_the_device_cookies_of_other_browsers(
    alice: Mailbox, limits: Any
) -> None:
    laptop = known_browser(alice, ALICE_PASSWORD)
    phone = known_browser(alice, ALICE_PASSWORD)
    sign_in(laptop, alice.address, ALICE_PASSWORD)
    new_password = "a-new-web-password-2"
    response = csrf_post(
        laptop,
        reverse("accounts:change_password"),
        {
            "old_password": ALICE_PASSWORD,
            "new_password1": new_password,
            "new_password2": new_password,
        },
    )
    assert response.status_code == 302
    csrf_post(laptop, reverse("accounts:logout"))
    for _ in range(3):
        guess(alice.address, "192.0.2.60")
    assert sign_in(phone, alice.address, new_password).status_code == 429
    assert sign_in(laptop, alice.address, new_password).status_code == 302


def test_the_device_cookie_is_signed_http_only_secure_and_long_lived(
    alice: Mailbox, settings: Any
) -> None:
    settings.SESSION_COOKIE_SECURE = True
    client = Client(enforce_csrf_checks=True)
    response = sign_in(client, alice.address, ALICE_PASSWORD)
    cookie = response.cookies[throttling._cookie_name(alice.address)]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict"
    assert int(cookie["max-age"]) == 365 * 86400
    assert alice.address not in cookie.key + cookie.value


def test_strangers_cannot_lock_the_owner_out_of_the_code_step(alice: Mailbox, limits: Any) -> None:
    device, _codes = enable_two_factor(alice)
    browser = Client(enforce_csrf_checks=True)
    sign_in(browser, alice.address, ALICE_PASSWORD)
    assert enter_code(browser, current_code(device)).status_code == 302
    csrf_post(browser, reverse("accounts:logout"))
    for _ in range(5):
        guess(alice.address, "192.0.2.70")
    assert sign_in(browser, alice.address, ALICE_PASSWORD).status_code == 302
    with time_machine.travel(timezone.now() + timedelta(seconds=60)):
        assert enter_code(browser, current_code(device)).status_code == 302
    assert is_signed_in(browser)


# Real concurrency: browsers posting at once to a live server, as an attacker's script would.


@pytest.fixture
def shared_cache(settings: Any) -> Iterator[None]:
    """The production cache (Redis) when there is one to test against, else memory."""
    # httpx keeps Secure cookies for HTTPS, and the live server speaks plain HTTP.
    settings.CSRF_COOKIE_SECURE = settings.SESSION_COOKIE_SECURE = False
    url = REDIS_URL_FOR_TESTS
    if url:
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": f"test-{secrets.token_hex(4)}",
            }
        }
    yield
    from django.core.cache import cache

    cache.clear()


def post_all_at_once(url: str, addresses: list[str], password: str) -> list[int]:
    """One browser per address, each with its CSRF cookie, posting in the same instant."""
    statuses: list[int] = []
    start = threading.Barrier(len(addresses))

    def one(address: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as browser:
            browser.get(LOGIN)
            token = browser.cookies["csrftoken"]
            start.wait()
            answer = browser.post(
                LOGIN, data={"address": address, "password": password, "csrfmiddlewaretoken": token}
            )
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=one, args=(address,)) for address in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.e2e
@pytest.mark.postgres
def test_concurrent_wrong_passwords_get_no_more_checks_than_the_limit(
    live_server: Any, alice: Mailbox, shared_cache: None, password_checks: list[str]
) -> None:
    statuses = post_all_at_once(live_server.url, [alice.address] * 30, "wrong-password")
    assert len(password_checks) == 10  # SIGN_IN_FAILURES_PER_MAILBOX
    assert sorted(statuses) == [200] * 10 + [429] * 20
    # The server's counter is the one this process sees (in Redis when it runs): every
    # attempt was counted, the refused ones too.
    from django.core.cache import cache

    assert cache.get(throttling._mailbox_key(alice.address)) == 30


@pytest.mark.e2e
@pytest.mark.postgres
def test_concurrent_failures_from_one_address_stop_at_its_limit(
    live_server: Any, db: None, shared_cache: None, settings: Any
) -> None:
    settings.SIGN_IN_FAILURES_PER_IP = 8
    # Unknown mailboxes: each is hashed all the same (no probing), and each is one guess.
    statuses = post_all_at_once(
        live_server.url, [f"guess{n}@inbox.lv" for n in range(24)], "wrong-password"
    )
    assert sorted(statuses) == [200] * 8 + [429] * 16
