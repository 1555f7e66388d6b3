"""Shared fixtures: named mailboxes (alice on inbox.lv, free; bob on mail.ee, Mail+).

REQUIRE_E2E=1 (set by .ci/run) turns every skip into a failure: on CI a missing server is a
broken build, not a quiet pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis
from django.test import Client

from accounts import sudo
from accounts.models import Mailbox, Plan

if TYPE_CHECKING:
    # What Django's test client returns: a stub-only class (the response with .json(), .context).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

    from tests.policy_client import Dovecot

# Real Dovecot and Postfix for the end-to-end tests (fixtures: tests/mailservers.py), and a
# real Redis Cluster (tests/redis_cluster.py).
pytest_plugins = ["tests.mailservers", "tests.redis_cluster"]

# The tests' Redis: a database number nothing else uses. Tests that need it skip without it
# (and fail under REQUIRE_E2E=1). Every test reads it from here.
REDIS_URL_FOR_TESTS = os.environ.get("REDIS_URL_FOR_TESTS", "")
needs_redis = pytest.mark.skipif(
    not REDIS_URL_FOR_TESTS, reason="set REDIS_URL_FOR_TESTS to run against Redis"
)

ALICE_PASSWORD = "alice-web-password-1"
BOB_PASSWORD = "bob-web-password-1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    # pluggy sends the outcome back in (its Result); the hook's own types know nothing of it.
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("REQUIRE_E2E") == "1" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"REQUIRE_E2E=1 forbids skipping: {reason}"


# Fixtures that start a server (Dovecot, Postfix, Celery, Chromium, Redis, a policy server or
# the live Django server): a test using one is slow and must carry `e2e`, which `make test-fast`
# leaves out.
SERVER_FIXTURES = frozenset(
    {
        "mail_servers_factory",
        "policy_server",
        "smtp_policy_daemon",
        "private_redis",
        "live_server",
        "chromium",
        "celery",
        "durable_redis",
        "redis_cluster",
        "fresh_redis_cluster",
    }
)


def unmarked_server_tests(items: list[pytest.Item]) -> list[str]:
    return [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("e2e") is None
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from django.conf import settings

    unmarked = unmarked_server_tests(items)
    if unmarked:
        raise pytest.UsageError(
            "these tests start a server but lack @pytest.mark.e2e: " + ", ".join(unmarked)
        )

    if settings.IS_POSTGRES:
        return
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)"))


@pytest.fixture
def alice(db: None) -> Mailbox:
    return Mailbox.objects.create_user("alice@inbox.lv", ALICE_PASSWORD, plan=Plan.FREE)


@pytest.fixture
def bob(db: None) -> Mailbox:
    return Mailbox.objects.create_user("bob@mail.ee", BOB_PASSWORD, plan=Plan.PLUS, language="en")


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Sign-in throttle counters live in the cache: no test inherits another's failures."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    seconds: float = 30.0,
    *,
    every: float = 0.1,
    failure: str | Callable[[], str] = "",
) -> T:
    """The first true value of ``condition()``, asked every ``every`` seconds; after
    ``seconds`` an AssertionError with ``failure`` (called then, so it can show a log).

    The one way a test waits for another process or thread: polled, never a fixed sleep.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = failure() if callable(failure) else failure
            raise AssertionError(text or f"not so within {seconds} s")
        time.sleep(every)


def signed_in_client(mailbox: Mailbox) -> Client:
    """A browser that has just signed in: so, like a real sign-in, it is in sudo mode."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(mailbox)
    session = client.session
    sudo.grant(session)
    session.save()
    return client


@pytest.fixture
def alice_client(alice: Mailbox) -> Client:
    return signed_in_client(alice)


@pytest.fixture
def bob_client(bob: Mailbox) -> Client:
    return signed_in_client(bob)


def csrf_post(
    client: Client, url: str, data: dict[str, Any] | None = None, **extra: Any
) -> TestResponse:
    """POST like a browser: fetch the page for its CSRF cookie, then send the token back."""
    client.get(url)
    token = client.cookies["csrftoken"].value
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token}, **extra)


# --- Redis -------------------------------------------------------------------------------------


def redis_url_for_tests() -> str:
    """The tests' Redis; skips the test where none is set."""
    if not REDIS_URL_FOR_TESTS:
        pytest.skip("set REDIS_URL_FOR_TESTS to run against Redis")
    return REDIS_URL_FOR_TESTS


def forget_counters(url: str, *addresses: str) -> None:
    """Delete the policies' keys of these mailboxes (every key is per address)."""
    client = redis.Redis.from_url(url)
    for address in addresses:
        keys = list(client.scan_iter(match=f"mp:{{{address}}}:*"))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture(name="test_redis")
def test_redis_fixture(settings: Any) -> Iterator[str]:
    """The tests' Redis as the mail-server Redis, with no counters of the named mailboxes."""
    from mailaccess import counters

    url = redis_url_for_tests()
    settings.MAILSERVER_REDIS_URL = url
    counters.sync_client.cache_clear()
    forget_counters(url, "alice@inbox.lv", "bob@mail.ee", "carol@inbox.lv")
    yield url
    counters.sync_client.cache_clear()


@pytest.fixture
def policy(settings: Any, transactional_db: None) -> Iterator[str]:
    """The tests' Redis, emptied, as the auth policy's, which answers the tests' API key.

    transactional_db: the policy reads the database from its own threads, which see only
    committed rows, and the access actions' on_commit hooks must really run.
    """
    from mailaccess import counters
    from tests.policy_client import API_KEY

    url = redis_url_for_tests()
    settings.MAILSERVER_REDIS_URL = url
    settings.AUTH_POLICY_API_KEY = API_KEY
    counters.sync_client.cache_clear()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
    counters.sync_client.cache_clear()


@pytest.fixture
def redis_db(policy: str) -> Iterator[redis.Redis]:
    """A client of the policy's Redis that reads strings."""
    client = redis.Redis.from_url(policy, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def dovecot(policy: str) -> Dovecot:
    """Dovecot's auth process, speaking to the auth-policy app in-process."""
    from tests.policy_client import Dovecot

    return Dovecot(policy)
