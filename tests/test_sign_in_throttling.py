"""Web sign-in throttling per mailbox address and per client IP."""

import os
import secrets
from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts import throttling
from accounts.models import Mailbox
from tests.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.otp import enable_two_factor, enter_code, is_signed_in, sign_in

NOW = timezone.now().replace(microsecond=0)
THROTTLED = "Pārāk daudz neveiksmīgu mēģinājumu"


@pytest.fixture
def limits(settings):  # type: ignore[no-untyped-def]
    settings.SIGN_IN_FAILURES_PER_MAILBOX = 3
    settings.SIGN_IN_FAILURES_PER_IP = 5
    settings.SIGN_IN_WINDOW_SECONDS = 900
    return settings


def fail(address: str, times: int, ip: str = "192.0.2.1") -> None:
    for _ in range(times):
        response = sign_in(Client(), address, "wrong-password", REMOTE_ADDR=ip)
        assert response.status_code == 200


def test_below_the_limit_the_right_password_still_signs_in(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    fail(alice.address, 2)
    client = Client()
    assert sign_in(client, alice.address, ALICE_PASSWORD).status_code == 302
    assert is_signed_in(client)


def test_at_the_limit_even_the_right_password_is_refused(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    fail(alice.address, 3)
    client = Client()
    response = sign_in(client, alice.address, ALICE_PASSWORD, REMOTE_ADDR="198.51.100.9")
    assert response.status_code == 429
    assert THROTTLED in response.content.decode()
    assert not is_signed_in(client)


def test_an_unknown_mailbox_is_throttled_exactly_like_a_real_one(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    fail(alice.address, 3)
    fail("nobody@inbox.lv", 3, ip="192.0.2.2")
    real = sign_in(Client(), alice.address, "x", REMOTE_ADDR="198.51.100.9")
    unknown = sign_in(Client(), "nobody@inbox.lv", "x", REMOTE_ADDR="198.51.100.9")
    assert real.status_code == unknown.status_code == 429
    assert THROTTLED in real.content.decode() and THROTTLED in unknown.content.decode()


def test_one_client_ip_is_throttled_across_mailboxes(
    alice: Mailbox,
    bob: Mailbox,
    limits,  # type: ignore[no-untyped-def]
) -> None:
    for number in range(5):
        fail(f"guess{number}@inbox.lv", 1, ip="203.0.113.5")
    from_there = sign_in(Client(), bob.address, BOB_PASSWORD, REMOTE_ADDR="203.0.113.5")
    assert from_there.status_code == 429
    elsewhere = Client()
    assert (
        sign_in(elsewhere, bob.address, BOB_PASSWORD, REMOTE_ADDR="203.0.113.6").status_code == 302
    )


def test_the_throttle_lifts_when_the_window_has_passed(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel(NOW, tick=False):
        fail(alice.address, 3)
        assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 429
    with time_machine.travel(NOW + timedelta(minutes=16), tick=False):
        assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302


def test_a_successful_sign_in_clears_the_mailbox_count(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    fail(alice.address, 2, ip="192.0.2.7")
    assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302
    fail(alice.address, 2, ip="192.0.2.8")
    assert sign_in(Client(), alice.address, ALICE_PASSWORD).status_code == 302


def test_wrong_two_factor_codes_count_as_failures(alice: Mailbox, limits) -> None:  # type: ignore[no-untyped-def]
    enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    sign_in(client, alice.address, ALICE_PASSWORD)
    for _ in range(3):
        assert enter_code(client, "aaaa-bbbb-cccc-dddd").status_code == 200
    assert enter_code(client, "aaaa-bbbb-cccc-dddd").status_code == 429
    assert not is_signed_in(client)


@pytest.mark.e2e
def test_counters_are_shared_through_redis(settings) -> None:  # type: ignore[no-untyped-def]
    url = os.environ.get("REDIS_URL_FOR_TESTS")
    if not url:
        pytest.skip("REDIS_URL_FOR_TESTS is not set: no Redis to test against")
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
        throttling.record_failure(address, ip)
        assert not throttling.is_throttled(address, "192.0.2.100")
        throttling.record_failure(address, ip)
        assert throttling.is_throttled(address, "192.0.2.100")
        # Another web process reads the same counter: a fresh connection sees it too.
        caches["default"].close()
        assert caches["default"].get(throttling._mailbox_key(address)) == 2
    finally:
        caches["default"].delete_many([throttling._mailbox_key(address), throttling._ip_key(ip)])
