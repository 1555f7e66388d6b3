"""The SMTP policy daemon over a real TCP socket, with real Redis: what Postfix is told.

The same scenarios through real Postfix with SASL follow once the Postfix harness exists.
"""

import logging
import select
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import time_machine
from django.utils import translation

from accounts.models import Mailbox, Plan
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, counters
from mailaccess.mailserver import bounce_tags, sending_counters
from mailaccess.mailserver.postfix_policy import reply_text
from mailaccess.mailserver.smtp_policy import now_ms
from mailaccess.mailserver.state import ACCESS_CHANNEL
from mailaccess.models import (
    ACCESS_OFF_SERVER_MESSAGE,
    AppPassword,
    BlockReason,
    ExternalAccess,
    Notice,
    SendingLimit,
)
from tests.mailservers import PrivateRedis
from tests.policy_daemon import RunningDaemon

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MONDAY = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
ALICE = "alice@inbox.lv"
BOB = "bob@mail.ee"


def switch_on(mailbox: Mailbox) -> None:
    actions.enable_access(mailbox, actor=Actor.user(mailbox))


# Only a mailbox whose access is on may send: the daemon refuses a blocked or switched-off one.
@pytest.fixture
def alice(alice: Mailbox) -> Mailbox:
    actions.enable_access(alice, actor=Actor.user(alice))
    return alice


@pytest.fixture
def bob(bob: Mailbox) -> Mailbox:
    actions.enable_access(bob, actor=Actor.user(bob))
    return bob


def access_of(mailbox: Mailbox) -> ExternalAccess:
    return ExternalAccess.objects.get(mailbox=mailbox)


def send_fifteen_in_three_minutes(client, traveller, tag: str) -> None:  # type: ignore[no-untyped-def]
    for minute in range(3):
        for number in range(5):
            assert client.send_message(ALICE, f"{tag}-{minute}-{number}") == "DUNNO"
        traveller.shift(61)


def test_the_sixth_message_inside_a_minute_is_deferred_with_a_retry_time(
    alice: Mailbox, test_redis: str
) -> None:
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        for number in range(5):
            assert client.send_message(ALICE, f"m{number}") == "DUNNO"
            traveller.shift(5)
        sixth = client.send_message(ALICE, "m5")
        # The first message leaves the rolling minute 60 s after it was sent: 35 s on.
        assert sixth.startswith("DEFER_IF_PERMIT ")
        assert "pec 35 sekundem" in sixth
        traveller.shift(36)
        assert client.send_message(ALICE, "m6") == "DUNNO"


def command_calls(url: str, command: str) -> int:
    """How often Redis has run a command (counted by the server, for every client: so only
    on a Redis of the test's own, ``own_redis``, where no other test or helper sends any)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def own_redis(private_redis: PrivateRedis, settings: Any) -> Iterator[str]:
    """A redis-server of this test alone, as the mail-server Redis: its command counts are
    the daemon's, not those of whatever else shares the tests' Redis at the time."""
    url = private_redis.unix_url
    settings.MAILSERVER_REDIS_URL = url
    counters.sync_client.cache_clear()
    yield url
    counters.sync_client.cache_clear()


def checks_run(url: str) -> int:
    """The commands a sending check sends: the script, and DATA's count of the hour."""
    return command_calls(url, "evalsha") + command_calls(url, "zcount")


def test_retries_inside_a_minute_deferral_are_answered_without_asking_redis(
    alice: Mailbox, own_redis: str
) -> None:
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(own_redis) as daemon,
        daemon.connect() as client,
    ):
        for number in range(5):
            assert client.send_message(ALICE, f"m{number}") == "DUNNO"
        assert "pec 60 sekundem" in client.send_message(ALICE, "m5")
        asked_before = checks_run(own_redis)
        # A program retrying as fast as it can: the same answer, counting down, from the
        # daemon itself.
        for number in range(50):
            assert "pec 60 sekundem" in client.send_message(ALICE, f"r{number}")
        traveller.shift(45)
        assert "pec 15 sekundem" in client.send_message(ALICE, "r50")
        assert checks_run(own_redis) == asked_before
        # At the retry time Redis decides again, and the message passes.
        traveller.shift(15)
        assert client.send_message(ALICE, "m6") == "DUNNO"
        assert checks_run(own_redis) > asked_before


def test_a_data_check_below_every_limit_is_one_count_and_near_a_limit_the_script(
    alice: Mailbox, own_redis: str
) -> None:
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(own_redis) as daemon,
        daemon.connect() as client,
    ):
        for number in range(4):
            client.send_message(ALICE, f"m{number}")
            traveller.shift(20)
        at_data = {"sasl_username": ALICE, "sender": ALICE, "protocol_state": "DATA"}
        scripts_before = command_calls(own_redis, "evalsha")
        counts_before = command_calls(own_redis, "zcount")
        # Four messages in the hour, under the five a minute: the script is not needed.
        assert client.ask(**at_data) == "DUNNO"
        assert command_calls(own_redis, "evalsha") == scripts_before
        assert command_calls(own_redis, "zcount") == counts_before + 1
        assert client.ask(protocol_state="END-OF-MESSAGE", sasl_username=ALICE) == "DUNNO"
        # Five in the hour, but not in the last minute: the script decides, and lets it pass.
        scripts_before = command_calls(own_redis, "evalsha")
        assert client.ask(**at_data) == "DUNNO"
        assert command_calls(own_redis, "evalsha") == scripts_before + 1


def test_the_deferred_mailboxes_a_daemon_remembers_are_bounded(test_redis: str) -> None:
    with RunningDaemon(test_redis) as daemon:
        policy = daemon.policy
        policy.MAX_DEFERRED = 10
        now = now_ms()
        for number in range(25):
            policy._remember_deferral(f"user{number}@inbox.lv", now + 60_000)
            assert len(policy._deferred) <= 10
        # Deferrals whose time has passed are dropped first, the live ones kept.
        policy._deferred.clear()
        for number in range(9):
            policy._remember_deferral(f"past{number}@inbox.lv", now - 1)
        policy._remember_deferral("live@inbox.lv", now + 60_000)
        policy._remember_deferral("next@inbox.lv", now + 60_000)
        assert set(policy._deferred) == {"live@inbox.lv", "next@inbox.lv"}


def test_the_sixteenth_message_inside_an_hour_blocks_access(
    alice: Mailbox, test_redis: str
) -> None:
    switch_on(alice)
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        send_fifteen_in_three_minutes(client, traveller, "a")
        sixteenth = client.send_message(ALICE, "a-16")
        assert sixteenth.startswith("REJECT ")
        daemon.finish_blocks()
        # A mail program still connected is refused with the block's reason (its access is
        # off now), and not blocked a second time.
        seventeenth = client.send_message(ALICE, "a-17")
        assert seventeenth.startswith("REJECT ")
        with translation.override("lv"):
            reason = reply_text(str(BlockReason.HOURLY_LIMIT.server_message))
        assert reason in seventeenth, seventeenth
        daemon.finish_blocks()

    access = access_of(alice)
    assert not access.enabled
    assert access.block == BlockReason.HOURLY_LIMIT
    assert not AppPassword.objects.live().filter(mailbox=alice).exists()
    assert Notice.objects.filter(mailbox=alice, reason=BlockReason.HOURLY_LIMIT).count() == 1
    block = AuditEvent.objects.get(mailbox=alice, action=AuditAction.ACCESS_BLOCKED)
    assert block.detail["sent_last_hour"] == 15


def test_the_third_hourly_block_in_a_day_blocks_as_compromised(
    alice: Mailbox, test_redis: str
) -> None:
    switch_on(alice)
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        for round_number in range(3):
            send_fifteen_in_three_minutes(client, traveller, f"r{round_number}")
            assert client.send_message(ALICE, f"r{round_number}-16").startswith("REJECT ")
            daemon.finish_blocks()
            if round_number < 2:
                assert access_of(alice).block == BlockReason.HOURLY_LIMIT
                switch_on(alice)
            traveller.shift(3600)

    access = access_of(alice)
    assert access.block == BlockReason.COMPROMISED
    assert access.requires_password_change
    with pytest.raises(actions.AccessError):
        actions.enable_access(alice, actor=Actor.user(alice))


def test_mail_plus_sends_thirty_in_a_row(bob: Mailbox, test_redis: str) -> None:
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        assert [client.send_message(BOB, f"b{n}") for n in range(30)] == ["DUNNO"] * 30


def test_a_mail_plus_user_in_good_standing_sends_without_limits_at_once(
    alice: Mailbox, test_redis: str
) -> None:
    with time_machine.travel(MONDAY, tick=False):
        actions.change_plan(alice, Plan.PLUS, actor=Actor.system("billing"))
        with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
            assert [client.send_message(ALICE, f"g{n}") for n in range(20)] == ["DUNNO"] * 20


def test_a_new_mail_plus_user_blocked_for_misuse_keeps_the_free_limits_until_they_are_lifted(
    alice: Mailbox, test_redis: str
) -> None:
    with time_machine.travel(MONDAY, tick=False) as traveller:
        actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("smtp policy"))
        actions.unblock_access(alice, actor=Actor.system("support"))
        actions.enable_access(alice, actor=Actor.user(alice))
        actions.change_plan(alice, Plan.PLUS, actor=Actor.system("billing"))
        with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
            for number in range(5):
                assert client.send_message(ALICE, f"u{number}") == "DUNNO"
            assert client.send_message(ALICE, "u5").startswith("DEFER_IF_PERMIT ")
        # Monday 9 November: lifted by the end of Wednesday the 11th at the latest.
        traveller.move_to(datetime(2026, 11, 11, 22, 1, tzinfo=UTC))
        with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
            assert [client.send_message(ALICE, f"v{n}") for n in range(10)] == ["DUNNO"] * 10


def test_support_changes_limits_in_the_database(alice: Mailbox, test_redis: str) -> None:
    SendingLimit.objects.update_or_create(plan=Plan.FREE, defaults={"per_minute": 2})
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(test_redis) as daemon,
        daemon.connect() as client,
    ):
        assert client.send_message(ALICE, "s1") == "DUNNO"
        assert client.send_message(ALICE, "s2") == "DUNNO"
        assert "2 " in client.send_message(ALICE, "s3")


def test_concurrent_connections_cannot_overshoot_the_limit(alice: Mailbox, test_redis: str) -> None:
    connections = 20
    barrier = threading.Barrier(connections)
    answers: list[str] = []

    def end_of_message(daemon: RunningDaemon, number: int) -> None:
        with daemon.connect() as client:
            client.ask(protocol_state="RCPT", sasl_username=ALICE, instance=f"c{number}")
            barrier.wait()
            answers.append(
                client.ask(
                    protocol_state="END-OF-MESSAGE", sasl_username=ALICE, instance=f"c{number}"
                )
            )

    with time_machine.travel(MONDAY, tick=False), RunningDaemon(test_redis) as daemon:
        threads = [
            threading.Thread(target=end_of_message, args=(daemon, n)) for n in range(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert answers.count("DUNNO") == 5
    assert len(answers) == connections
    assert redis.Redis.from_url(test_redis).zcard(sending_counters.sent_key(ALICE)) == 5


def deliver_inbound(client, sender: str, recipient: str, number: int, source: str) -> None:  # type: ignore[no-untyped-def]
    """What the MX's smtpd asks about one whole message from outside: at RCPT, DATA and
    END-OF-MESSAGE (the MX may ask at any of them); inbound mail is never refused."""
    common = {
        "sender": sender,
        "recipient": recipient,
        "recipient_count": "1",
        "client_address": source,
        "instance": f"in{number}",
    }
    for stage in ("RCPT", "DATA", "END-OF-MESSAGE"):
        assert client.ask(protocol_state=stage, **common) == "DUNNO"


def bounces_counted(url: str, address: str) -> int:
    return int(redis.Redis.from_url(url).zcard(sending_counters.bounces_key(address)))


def test_null_sender_rcpts_without_data_from_many_clients_block_nobody(
    alice: Mailbox, test_redis: str
) -> None:
    switch_on(alice)
    with (
        time_machine.travel(MONDAY, tick=False),
        RunningDaemon(test_redis) as d,
        d.connect() as submission,
        d.connect() as inbound,
    ):
        assert submission.send_message(ALICE, "one") == "DUNNO"
        tag = bounce_tags.tag_sender(ALICE, now_ms())
        assert tag is not None
        # 60 RCPTs from 60 addresses, never a DATA: 40 to her address, 20 to the real tag
        # (this stranger received her message).
        for number in range(60):
            recipient = ALICE if number % 3 else tag
            assert (
                inbound.ask(
                    protocol_state="RCPT",
                    sender="" if number % 3 else "MAILER-DAEMON@mx.example",
                    recipient=recipient,
                    client_address=f"198.51.100.{number}",
                    instance=f"r{number}",
                )
                == "DUNNO"
            )
        d.finish_blocks()

    assert bounces_counted(test_redis, ALICE) == 0
    assert access_of(alice).enabled


def test_forged_delivery_reports_do_not_block_a_mailbox_that_sent_one_message(
    alice: Mailbox, test_redis: str
) -> None:
    switch_on(alice)
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(test_redis) as d,
        d.connect() as submission,
        d.connect() as inbound,
    ):
        assert submission.send_message(ALICE, "one") == "DUNNO"
        # The tag Postfix gave that message (what the daemon's socketmap answers).
        tag = bounce_tags.tag_sender(ALICE, now_ms())
        assert tag is not None
        traveller.shift(60)
        forged_tags = [
            # A guessed HMAC, another minute under the same HMAC, a validly signed tag two
            # hours old, and the real tag moved to another address.
            f"prvs={tag[5:17]}{'0' * 12}={ALICE}",
            f"prvs={int(tag[5:12], 16) - 1:07x}{tag[12:]}",
            bounce_tags.tag_sender(ALICE, now_ms() - 2 * 3_600_000),
            tag.replace(ALICE, f"x{ALICE}"),
        ]
        # 60 whole delivery reports from 60 addresses: 34 to her plain address, 16 to forged
        # tags, and the real tag 10 times.
        recipients = [ALICE] * 34 + forged_tags * 4 + [tag] * 10
        for number, recipient in enumerate(recipients):
            assert recipient is not None
            deliver_inbound(inbound, "", recipient, number, f"203.0.113.{number}")
        d.finish_blocks()

    assert bounces_counted(test_redis, ALICE) == 1
    assert access_of(alice).enabled


def test_bounces_of_messages_a_mailbox_really_sent_block_it_as_compromised(
    alice: Mailbox, bob: Mailbox, test_redis: str
) -> None:
    switch_on(alice)
    switch_on(bob)
    with (
        time_machine.travel(MONDAY, tick=False) as traveller,
        RunningDaemon(test_redis, bounce_limit=5) as d,
        d.connect() as submission,
        d.connect() as inbound,
    ):
        tags: list[str] = []
        for number in range(5):
            assert submission.send_message(ALICE, f"spam-{number}", recipients=50) == "DUNNO"
            tag = bounce_tags.tag_sender(ALICE, now_ms())
            assert tag is not None
            tags.append(tag)
            traveller.shift(5)
        assert submission.send_message(BOB, "hello") == "DUNNO"
        # The Mail Delivery System's flood: several reports for each message, some from
        # MAILER-DAEMON. Bob's bounces come to his plain address: backscatter of mail that
        # forged his address, not mail he sent.
        for number in range(15):
            sender = "" if number % 2 else "MAILER-DAEMON@mx.example"
            deliver_inbound(inbound, sender, tags[number % 5], number, "192.0.2.25")
            deliver_inbound(inbound, sender, BOB, 100 + number, "192.0.2.25")
        d.finish_blocks()

    access = access_of(alice)
    assert access.block == BlockReason.COMPROMISED
    assert access.requires_password_change
    assert Notice.objects.filter(mailbox=alice, reason=BlockReason.COMPROMISED).exists()
    block = AuditEvent.objects.get(mailbox=alice, action=AuditAction.ACCESS_BLOCKED)
    assert block.detail["bounces_last_hour"] == 5
    assert access_of(bob).enabled


@pytest.mark.parametrize(
    ("on_redis_error", "expected"), [("dunno", "DUNNO"), ("defer", "DEFER_IF_PERMIT ")]
)
def test_without_redis_mail_goes_through_or_is_deferred_as_configured(
    alice: Mailbox,
    test_redis: str,
    on_redis_error: str,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed_port = "redis://127.0.0.1:21999/0"
    with (
        RunningDaemon(closed_port, on_redis_error=on_redis_error) as daemon,
        daemon.connect() as client,
    ):
        for number in range(3):
            assert client.send_message(ALICE, f"d{number}").startswith(expected)
    assert "event=smtp_policy.redis_unavailable" in caplog.text


def test_a_redis_that_hangs_still_gets_postfix_an_answer(alice: Mailbox, test_redis: str) -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    try:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with RunningDaemon(url, request_timeout=1.0) as daemon, daemon.connect() as client:
            assert client.send_message(ALICE, "h1") == "DUNNO"
            assert client.send_message(ALICE, "h2") == "DUNNO"
    finally:
        silent.close()


def test_garbage_closes_the_connection_and_the_daemon_goes_on(test_redis: str) -> None:
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        client.send_raw(b"GET / HTTP/1.1\r\nHost: policy\r\n\r\n\n\n")
        assert client.read_reply() is None
        with daemon.connect() as client:
            assert client.ask(protocol_state="RCPT", sender="a@example.com") == "DUNNO"


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(test_redis: str) -> None:
    other = {"protocol_state": "RCPT", "sender": "someone@example.com", "recipient": "x@y.lv"}
    with (
        RunningDaemon(test_redis, idle_timeout=1.5) as daemon,
        daemon.connect() as idle,
        daemon.connect() as busy,
    ):
        assert idle.ask(**other) == "DUNNO"
        # A request every half second for three seconds: twice the idle timeout, never idle.
        for _ in range(6):
            time.sleep(0.5)
            assert busy.ask(**other) == "DUNNO"
        # Postfix reconnects by itself; an idle connection only holds a slot until then.
        assert idle.read_reply() is None


def test_a_request_without_its_empty_line_gets_no_answer_and_is_cut_off(
    test_redis: str,
) -> None:
    with RunningDaemon(test_redis, request_timeout=0.5) as daemon, daemon.connect() as client:
        client.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
        # No answer to half a request; the daemon hangs up once the request is overdue.
        assert client.read_reply() is None


def test_a_repeated_attribute_that_only_the_log_reads_is_answered(
    test_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    # DEBUG: the decision line (which reads client_address, sender and instance) is written
    # even for a DUNNO.
    caplog.set_level(logging.DEBUG, logger="mailaccess.mailserver.policy_server")
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        client.send_raw(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\n"
            b"client_address=192.0.2.1\nclient_address=192.0.2.2\ninstance=i\ninstance=j\n\n"
        )
        assert client.read_reply() == "DUNNO"
        # The connection goes on serving.
        assert client.ask(protocol_state="RCPT", sender="a@example.com") == "DUNNO"
    assert "client_ip=192.0.2.1" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_request_sent_a_byte_at_a_time_is_cut_off_at_the_request_timeout(
    test_redis: str,
) -> None:
    """The timeout is for the whole request: a byte every 0.3 s is never silent for a whole
    second, yet the request is overdue once a second has passed since its first byte."""
    stream = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=slow@example.com\n"
    with RunningDaemon(test_redis, request_timeout=1.0) as daemon, daemon.connect() as client:
        started = time.monotonic()
        closed_after = None
        for byte in stream:
            try:
                client.send_raw(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            ready, _, _ = select.select([client.sock], [], [], 0.3)
            if ready and client.read_reply() is None:
                closed_after = time.monotonic() - started
                break
    # The watchdog looks once a second: cut off between one and about two seconds in.
    assert closed_after is not None, "a byte every 0.3 s kept the request open"
    assert closed_after < 3.0


def test_a_request_followed_by_garbage_in_one_write_is_answered_then_the_connection_closed(
    test_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.com\n\n"
    with RunningDaemon(test_redis) as daemon, daemon.connect() as client:
        client.send_raw(good + good + b"GET / HTTP/1.1\r\n\r\n\n\n")
        assert client.read_reply() == "DUNNO"
        assert client.read_reply() == "DUNNO"
        # The garbage is a bad request: logged, and the connection closed.
        assert client.read_reply() is None
    assert "event=smtp_policy.protocol_error" in caplog.text
    assert "Traceback" not in caplog.text


def reply_within(seconds: float, ask: Callable[[], str], wanted: str) -> str:
    """Ask until the reply starts with ``wanted`` or the time is up; the last reply."""
    deadline = time.monotonic() + seconds
    reply = ask()
    while not reply.startswith(wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = ask()
    return reply


@pytest.mark.parametrize("how", ["blocked", "switched_off"])
def test_a_blocked_or_switched_off_sender_is_refused_at_once_though_the_daemon_cached_it(
    alice: Mailbox, test_redis: str, how: str
) -> None:
    """An SMTP session authenticated before the block sends nothing more: the daemon's
    cached copy is dropped the moment the action commits (published in Redis), not when its
    minute is up."""
    with RunningDaemon(test_redis, cache_seconds=3600) as daemon, daemon.connect() as client:
        assert client.send_message(ALICE, "m1") == "DUNNO"  # alice is cached now
        if how == "blocked":
            actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
            message = BlockReason.COMPROMISED.server_message
        else:
            actions.disable_access(alice, actor=Actor.user(alice))
            message = ACCESS_OFF_SERVER_MESSAGE
        with translation.override("lv"):
            reason = reply_text(str(message))
        common = {"sasl_username": ALICE, "sender": ALICE, "recipient_count": "1"}

        at_data = reply_within(
            5, lambda: client.ask(protocol_state="DATA", instance="m2", **common), "REJECT"
        )
        at_end = client.ask(protocol_state="END-OF-MESSAGE", instance="m3", **common)

    assert at_data.startswith("REJECT ") and reason in at_data, at_data
    assert at_end == at_data


def test_every_sender_of_a_job_batch_is_refused_at_once_from_one_message(
    alice: Mailbox, bob: Mailbox, test_redis: str
) -> None:
    """A job's batch publishes all its addresses in one message (mailserver/state.py): the
    daemon still forgets each of those mailboxes, not the first one only."""
    sub = redis.Redis.from_url(test_redis).pubsub()  # type: ignore[no-untyped-call]
    sub.subscribe(ACCESS_CHANNEL)
    with RunningDaemon(test_redis, cache_seconds=3600) as daemon, daemon.connect() as client:
        for sender in (ALICE, BOB):
            assert client.send_message(sender, "m1") == "DUNNO"  # both cached now

        blocked = actions.block_access_many(
            ExternalAccess.objects.filter(mailbox__in=[alice, bob]),
            BlockReason.IDLE,
            actor=Actor.system("job: idle two months"),
        )
        assert sorted(blocked) == sorted([alice.pk, bob.pk])

        for sender in (ALICE, BOB):

            def at_data(sender: str = sender) -> str:
                return client.ask(
                    protocol_state="DATA",
                    instance="m2",
                    sasl_username=sender,
                    sender=sender,
                    recipient_count="1",
                )

            reply = reply_within(5, at_data, "REJECT")
            assert reply.startswith("REJECT "), (sender, reply)

    messages = []
    while (message := sub.get_message(timeout=1)) is not None:
        if message["type"] == "message":
            messages.append(message["data"].decode())
    sub.close()
    # Pub/sub ignores the database number: other tests' changes (of their own alice, too) may
    # be on the channel as well.
    assert f"{ALICE}\n{BOB}" in messages
