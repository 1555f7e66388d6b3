"""The auth-policy endpoint as Dovecot meets it: real Redis, the real database, the ASGI app.

Each login is sent the way Dovecot 2.3 sends it: ``allow`` before auth, and for a right
password ``allow`` again and ``report`` (success true); for a wrong one ``report`` (success
false). The clock is the app's seam, so "five minutes later" needs no sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, activity, counters
from mailaccess.mailserver import state
from mailaccess.mailserver.asgi import AuthPolicyApp
from mailaccess.mailserver.auth_policy import Command
from mailaccess.mailserver.redis_pipeline import RedisPipeline
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, Notice
from tests.conftest import needs_redis
from tests.mailservers import PrivateRedis
from tests.policy_client import API_KEY, START, Dovecot

pytestmark = [pytest.mark.e2e, needs_redis]


def switch_on(mailbox: Mailbox) -> None:
    actions.enable_access(mailbox, actor=Actor.user(mailbox))


def access(mailbox: Mailbox) -> ExternalAccess:
    return ExternalAccess.objects.get(mailbox=mailbox)


def test_it_requires_the_api_key_and_records_nothing_without_it(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    switch_on(alice)
    body = {
        "login": "alice@inbox.lv",
        "protocol": "imap",
        "remote": "192.0.2.10",
        "success": True,
        "policy_reject": False,
    }
    for key in (None, "wrong-key", ""):
        for command in ("allow", "report"):
            assert dovecot.post(command, body, key=key).status_code == 401
    # Only the invalidation counter that switching on bumped: no state, no counters.
    assert redis_db.keys("*") == ["mp:{alice@inbox.lv}:gen"]
    assert access(alice).imap_last_used_at is None


def test_it_answers_only_post_on_its_path(dovecot: Dovecot) -> None:
    async def get(path: str) -> httpx.Response:
        app = AuthPolicyApp(client=RedisPipeline(dovecot.url, timeout=2, decode=True))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://policy"
        ) as http:
            response = await http.get(path, headers={"X-API-Key": API_KEY})
        await app.aclose()
        return response

    assert asyncio.run(get("/auth-policy?command=allow")).status_code == 405
    assert asyncio.run(get("/")).status_code == 404


def test_malformed_json_missing_fields_and_unknown_users_get_a_well_formed_answer(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    for body in (b"{not json", b"[]", b'{"protocol":"imap"}', b"\xff" * 10):
        for command in ("allow", "report", "nonsense"):
            response = dovecot.post(command, body)
            assert response.status_code == 200
            assert response.json() == {"status": 0, "msg": ""}
    assert dovecot.allow("nobody@inbox.lv") == {"status": 0, "msg": ""}
    assert dovecot.login("nobody@inbox.lv", right=False) == {"status": 0, "msg": ""}


def test_a_mailbox_with_access_off_hears_why_in_its_language_once_the_password_was_verified(
    dovecot: Dovecot, alice: Mailbox, bob: Mailbox
) -> None:
    # Before the passdb checked the password: exactly what an unknown address gets.
    assert dovecot.allow("alice@inbox.lv", "smtp") == dovecot.allow("nobody@inbox.lv", "smtp")
    assert dovecot.allow("alice@inbox.lv", "smtp") == {"status": 0, "msg": ""}
    # After it: the passdb names the password that matched.
    reply = dovecot.allow("alice@inbox.lv", "smtp", app_password="7")
    assert reply == {
        "status": -1,
        "msg": "Ārējā POP3\\IMAP un SMTP pieeja ir izslēgta. Ieslēdziet to iestatījumos.",
    }
    reply = dovecot.allow("bob@mail.ee", "imap", app_password="8")
    assert reply["status"] == -1
    assert reply["msg"].startswith("External POP3/IMAP and SMTP access is switched off")


def test_access_on_lets_every_protocol_in_and_the_panel_shows_each_last_use(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    switch_on(alice)
    assert dovecot.login("alice@inbox.lv", "imap", "192.0.2.10") == {"status": 0, "msg": ""}
    assert dovecot.login("alice@inbox.lv", "pop3", "192.0.2.11")["status"] == 0
    assert dovecot.login("alice@inbox.lv", "submission", "2001:db8::5")["status"] == 0
    # The logins wrote no row: their uses wait in the activity stream for the minutely job.
    assert access(alice).imap_last_used_at is None
    assert redis_db.xlen(activity.STREAM_KEY) == 3
    assert dovecot.compact_activity() == 3
    state = access(alice)
    assert state.imap_last_ip == "192.0.2.10"
    assert state.pop3_last_ip == "192.0.2.11"
    assert state.smtp_last_ip == "2001:db8::5"
    assert state.imap_last_used_at is not None and state.imap_last_used_at.timestamp() == START
    assert [use["protocol"] for use in state.last_uses()] == ["IMAP", "POP3", "SMTP"]


def test_switching_access_off_is_obeyed_at_once_despite_the_cache(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    switch_on(alice)
    assert dovecot.allow("alice@inbox.lv", "smtp")["status"] == 0
    actions.disable_access(alice, actor=Actor.user(alice))
    assert dovecot.allow("alice@inbox.lv", "smtp", app_password="1")["status"] == -1
    switch_on(alice)
    assert dovecot.allow("alice@inbox.lv", "smtp")["status"] == 0


def test_a_blocked_mailbox_hears_why(dovecot: Dovecot, bob: Mailbox) -> None:
    switch_on(bob)
    actions.block_access(bob, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))
    assert dovecot.allow("bob@mail.ee", "smtp") == {"status": 0, "msg": ""}
    reply = dovecot.allow("bob@mail.ee", "smtp", app_password="1")
    assert reply["status"] == -1
    assert "a 16th message within one hour was refused" in reply["msg"]


def test_failed_and_refused_logins_record_no_use(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    dovecot.login("alice@inbox.lv")  # access off: refused before auth
    switch_on(alice)
    dovecot.login("alice@inbox.lv", right=False)
    dovecot.compact_activity()
    assert access(alice).imap_last_used_at is None


def test_several_connections_of_one_program_at_once_are_one_check(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    switch_on(alice)
    for _connection in range(5):
        assert dovecot.login("alice@inbox.lv")["status"] == 0
        dovecot.now += 2
    check = redis_db.hgetall("mp:{alice@inbox.lv}:check:imap:192.0.2.10")
    assert check["conns"] == "5"
    assert float(check["tokens"]) == pytest.approx(5, abs=0.1)  # of 6: one check spent


def test_checking_more_often_than_every_five_minutes_is_refused_saying_when_to_come_back(
    dovecot: Dovecot, bob: Mailbox
) -> None:
    switch_on(bob)
    # A program set to check every minute, from 10:00 Riga time: its six spare checks and
    # what it earns meanwhile (one per five minutes) carry it to 10:06.
    for minute in range(7):
        assert dovecot.login("bob@mail.ee")["status"] == 0, minute
        dovecot.now += 60
    assert dovecot.login("bob@mail.ee") == {
        "status": -1,
        "msg": "Mail is checked too often: at most once in 5 minutes is allowed. "
        "Try again after 10:10.",
    }
    # Ten seconds before its turn it is delayed until then instead of refused ...
    dovecot.now = START + 600 - 10
    assert dovecot.allow("bob@mail.ee") == {"status": 10, "msg": ""}
    # ... and on time it gets in.
    dovecot.now = START + 600
    assert dovecot.login("bob@mail.ee")["status"] == 0


def test_a_faulty_program_gets_access_blocked_its_password_ended_and_a_notice(
    dovecot: Dovecot, alice: Mailbox, settings: Any
) -> None:
    settings.AUTH_POLICY_FAULTY_CONNECTIONS_PER_HOUR = 12
    switch_on(alice)
    password = AppPassword.objects.get(mailbox=alice)
    # Twelve networks, each within its own checks: only the hourly total is too much.
    for n in range(13):
        dovecot.login("alice@inbox.lv", remote=f"198.51.100.{n}")
        dovecot.now += 1
    state = access(alice)
    assert not state.enabled
    assert state.block_reason == BlockReason.FAULTY_PROGRAM
    password.refresh_from_db()
    assert password.revoked_at is not None
    assert Notice.objects.filter(mailbox=alice, reason=BlockReason.FAULTY_PROGRAM).count() == 1
    reply = dovecot.allow("alice@inbox.lv", app_password=str(password.pk))
    assert reply["status"] == -1
    assert "pārāk daudz savienojumu" in reply["msg"]


def test_password_guessing_locks_the_mailbox_but_not_from_the_owners_usual_address(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    switch_on(alice)
    dovecot.login("alice@inbox.lv", remote="192.0.2.10")  # the owner, at home
    for guess in range(10):
        dovecot.login("alice@inbox.lv", remote="203.0.113.9", right=False, pwhash=f"{guess:03x}")
    reply = dovecot.allow("alice@inbox.lv", remote="203.0.113.50")
    assert reply["status"] == -1
    assert reply["msg"] == (
        "Pārāk daudz neveiksmīgu pieteikšanās mēģinājumu. Mēģiniet vēlreiz pēc plkst. 10:15."
    )
    assert dovecot.allow("alice@inbox.lv", remote="192.0.2.10")["status"] == 0
    # The lock ends a failure window after the last counted failure.
    dovecot.now += 15 * 60 + 1
    assert dovecot.allow("alice@inbox.lv", remote="203.0.113.50")["status"] == 0


def test_guessing_locks_an_unknown_address_as_it_locks_a_mailbox_in_the_same_words(
    dovecot: Dovecot, alice: Mailbox, bob: Mailbox
) -> None:
    """A lock only real mailboxes could get would list them; bob reads English."""
    switch_on(bob)
    actions.block_access(bob, BlockReason.COMPROMISED, actor=Actor.system("test"))
    logins = ["nobody@inbox.lv", "alice@inbox.lv", "bob@mail.ee"]  # unknown, off, blocked
    for guess in range(10):
        for n, login in enumerate(logins):
            remote = f"203.0.113.{10 * n + guess}"
            dovecot.login(login, remote=remote, right=False, pwhash=f"{guess:03x}")

    replies = [dovecot.allow(login, remote="198.51.100.77") for login in logins]

    assert replies[0] == replies[1] == replies[2]
    assert replies[0]["status"] == -1
    assert replies[0]["msg"].startswith("Pārāk daudz neveiksmīgu pieteikšanās mēģinājumu.")


def test_the_same_wrong_password_again_counts_once(dovecot: Dovecot, alice: Mailbox) -> None:
    switch_on(alice)
    for _check in range(20):  # a phone still holding the ended password
        assert dovecot.login("alice@inbox.lv", remote="203.0.113.9", right=False)["status"] == 0
        dovecot.now += 300


def test_guessing_from_one_network_across_mailboxes_locks_that_network(
    dovecot: Dovecot, alice: Mailbox, bob: Mailbox
) -> None:
    switch_on(alice)
    switch_on(bob)
    for n in range(30):
        dovecot.login(f"user{n}@inbox.lv", remote="2001:db8:bad:1::7", right=False)
    assert dovecot.allow("alice@inbox.lv", remote="2001:db8:bad:1::99")["status"] == -1
    assert dovecot.allow("bob@mail.ee", "smtp", remote="2001:db8:bad:2::1")["status"] == 0


def test_last_use_is_recorded_at_most_once_a_minute(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    switch_on(alice)
    dovecot.login("alice@inbox.lv", "smtp")
    dovecot.now += 30
    dovecot.login("alice@inbox.lv", "smtp")
    assert dovecot.compact_activity() == 1
    used = access(alice).smtp_last_used_at
    assert used is not None and used.timestamp() == START
    dovecot.now += 31
    dovecot.login("alice@inbox.lv", "smtp")
    assert dovecot.compact_activity() == 1
    used = access(alice).smtp_last_used_at
    assert used is not None and used.timestamp() == START + 61


def test_a_switch_off_during_a_cache_load_is_not_overwritten_by_the_older_state(
    dovecot: Dovecot, alice: Mailbox
) -> None:
    from mailaccess.mailserver.auth_policy import LoginLimits, MailboxState, parse_login_request
    from mailaccess.mailserver.auth_policy_store import Miss, PolicyStore

    request = parse_login_request(Command.ALLOW, b'{"login":"alice@inbox.lv","protocol":"imap"}')
    was_on = MailboxState(alice.pk, enabled=True, block_reason="", plan="free", language="lv")

    async def race() -> tuple[bool, object]:
        client = RedisPipeline(dovecot.url, timeout=2, decode=True)
        store = PolicyStore(client, LoginLimits())
        miss, _counters = await store.allow(request, START)
        assert isinstance(miss, Miss)
        # The panel switches off and invalidates while this reader is loading "on".
        state.invalidate_address("alice@inbox.lv")
        stored = await store.store_state("alice@inbox.lv", miss.generation, was_on)
        after, _counters = await store.allow(request, START)
        await client.aclose()
        return stored, after

    stored, after = asyncio.run(race())
    assert not stored
    assert isinstance(after, Miss)  # the next reader loads afresh


def test_every_key_of_a_mailbox_shares_its_cluster_hash_tag(
    dovecot: Dovecot, alice: Mailbox, redis_db: redis.Redis
) -> None:
    switch_on(alice)
    dovecot.login("alice@inbox.lv")
    dovecot.login("alice@inbox.lv", "pop3", right=False)
    keys = {str(key) for key in redis_db.keys("*")}
    # The client network's failures count across mailboxes, and the activity stream holds
    # every mailbox's sign-ins for the job: a tag of their own each.
    shared = {"mp:{net:192.0.2.10}:fails", activity.STREAM_KEY}
    assert keys - shared
    assert all(key.startswith("mp:{alice@inbox.lv}:") for key in keys - shared)


def test_without_redis_the_answer_is_an_error_dovecot_can_act_on(
    settings: Any, transactional_db: None, alice: Mailbox
) -> None:
    settings.AUTH_POLICY_API_KEY = API_KEY

    async def ask() -> httpx.Response:
        client = RedisPipeline("redis://127.0.0.1:1/0", timeout=2, decode=True)
        app = AuthPolicyApp(client=client)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://policy"
        ) as http:
            response = await http.post(
                "/auth-policy?command=allow",
                content=b'{"login":"alice@inbox.lv","protocol":"imap"}',
                headers={"X-API-Key": API_KEY},
            )
        await app.aclose()
        return response

    response = asyncio.run(ask())
    assert response.status_code == 503
    assert response.json()["status"] == 0


@pytest.mark.parametrize("reached_by", ["tls_url", "unix_url"])
def test_the_endpoint_reaches_redis_over_tls_or_its_unix_socket(
    reached_by: str,
    private_redis: PrivateRedis,
    settings: Any,
    transactional_db: None,
    alice: Mailbox,
) -> None:
    url = getattr(private_redis, reached_by)
    settings.MAILSERVER_REDIS_URL = url
    settings.AUTH_POLICY_API_KEY = API_KEY
    counters.sync_client.cache_clear()
    try:
        reply = Dovecot(url).allow("alice@inbox.lv", "smtp", app_password="1")
        # The refusal with its reason needs the policy's state, which it keeps in that Redis.
        assert reply["status"] == -1
        assert reply["msg"].startswith("Ārējā POP3\\IMAP un SMTP pieeja ir izslēgta.")
        assert redis.Redis.from_url(url).dbsize() > 0
    finally:
        counters.sync_client.cache_clear()


@pytest.mark.parametrize(
    ("login", "extra"),
    [
        ("alice\u0000@inbox.lv", {}),
        ("\ud800alice@inbox.lv", {}),
        ("alice@inbox.lv", {"session_id": "\udfff", "pwhash": "\ud800"}),
    ],
    ids=["nul", "lone-surrogate", "lone-surrogate-elsewhere"],
)
def test_a_login_with_nul_or_a_lone_surrogate_is_answered_as_an_unknown_address(
    dovecot: Dovecot,
    alice: Mailbox,
    login: str,
    extra: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    switch_on(alice)
    # json.dumps writes both as \u escapes, as a JSON encoder would.
    for _ in range(10):
        assert dovecot.allow(login, **extra) == {"status": 0, "msg": ""}
    assert "Traceback" not in caplog.text
    # Ten bad requests in a moment: a line a second at most per process (the rest are
    # counted in the next line's left_out), not one each; none at all when the test before
    # logged one within the second.
    assert caplog.text.count("event=auth_policy.bad_request") <= 5
