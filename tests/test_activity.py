"""Each password's activity (issue 22, sections 1 and 2): folding, bounds, new programs, and
the signed "This was not me" link. The auth policy's side runs against real Redis."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import time_machine
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, activity, jobs
from mailaccess.activity import Event, alert_due, is_new_program
from mailaccess.models import (
    ActivityKind,
    AppPassword,
    ExternalAccess,
    NewProgramAlert,
    Notice,
    NoticeKind,
    PasswordActivity,
)
from tests.conftest import csrf_post, redis_url_for_tests, signed_in_client
from tests.policy_client import START, Dovecot
from tests.test_admin import change_url, staff, staff_client  # noqa: F401
from tests.test_mail_servers_e2e import switch_on

NOW = datetime.fromtimestamp(START, UTC)


# -- pure rules --------------------------------------------------------------------------------


def test_a_known_program_from_a_known_network_is_not_new() -> None:
    seen = {("192.0.2.10", "Thunderbird 115"), ("198.51.100.0", "")}
    assert not is_new_program(seen, "192.0.2.10", "Thunderbird 115")
    # No IMAP ID (POP3, SMTP): told apart by its network only.
    assert not is_new_program(seen, "192.0.2.10", "")
    assert not is_new_program(seen, "198.51.100.0", "Thunderbird 115")


def test_a_new_network_or_a_new_program_is_new() -> None:
    seen = {("192.0.2.10", "Thunderbird 115")}
    assert is_new_program(seen, "203.0.113.5", "Thunderbird 115")
    assert is_new_program(seen, "192.0.2.10", "Outlook 16")
    assert is_new_program(set(), "192.0.2.10", "")


def test_an_alert_needs_a_new_program_an_earlier_sign_in_and_an_hour_since_the_last() -> None:
    when = NOW
    assert alert_due(new=True, signed_in_before=True, last_alert=None, when=when)
    assert not alert_due(new=False, signed_in_before=True, last_alert=None, when=when)
    # A mailbox's first sign-in ever.
    assert not alert_due(new=True, signed_in_before=False, last_alert=None, when=when)
    recent = when - timedelta(minutes=59)
    assert not alert_due(new=True, signed_in_before=True, last_alert=recent, when=when)
    assert alert_due(
        new=True, signed_in_before=True, last_alert=when - timedelta(hours=1), when=when
    )


def test_an_event_survives_the_stream_and_garbage_is_dropped() -> None:
    event = Event(
        "refused", 7, None, "imap", "192.0.2.0", "192.0.2.1", "K-9", START, "guessing", START + 60
    )
    assert Event.decode(event.encode()) == event
    for garbage in ("", "[]", "{}", '["sign_in",1,null,"ftp","","","",1,"",null]', "[1,2"):
        assert Event.decode(garbage) is None
    assert Event.decode('["refused",1,null,"imap","","","",1,"nonsense",null]') is None


# -- folding -----------------------------------------------------------------------------------


def sign_in(
    password: AppPassword, network: str, when: float, client: str = ""
) -> tuple[str, Event]:
    event = Event(
        ActivityKind.SIGN_IN,
        password.mailbox_id,
        password.pk,
        "imap",
        network,
        network,
        client,
        when,
    )
    return f"{when}-0", event


def refused(
    mailbox: Mailbox, reason: str, when: float, retry_at: float | None = None
) -> tuple[str, Event]:
    event = Event(
        ActivityKind.REFUSED,
        mailbox.pk,
        None,
        "imap",
        "203.0.113.9",
        "203.0.113.9",
        "",
        when,
        reason,
        retry_at,
    )
    return f"{when}-1", event


@pytest.fixture
def password(alice: Mailbox) -> AppPassword:
    switch_on(alice)
    return AppPassword.objects.get(mailbox=alice)


@pytest.mark.django_db
def test_a_known_program_from_a_known_network_is_folded_into_one_row(password: AppPassword) -> None:
    events = [
        sign_in(password, "192.0.2.10", START + minute * 60, "Thunderbird 115")
        for minute in range(30)
    ]
    activity.fold(events[:10], now=NOW)
    activity.fold(events[10:], now=NOW)

    [row] = PasswordActivity.objects.all()
    assert row.count == 30 and row.app_password == password
    assert row.first_at == NOW and row.last_at == NOW + timedelta(minutes=29)
    assert row.client == "Thunderbird 115"


@pytest.mark.django_db
def test_refusals_are_folded_per_reason_with_when_to_come_back(alice: Mailbox) -> None:
    activity.fold(
        [
            refused(alice, "too_often", START, START + 240),
            refused(alice, "too_often", START + 30, START + 270),
            refused(alice, "guessing", START + 40, START + 900),
        ],
        now=NOW,
    )
    rows = {row.reason: row for row in PasswordActivity.objects.all()}
    assert rows["too_often"].count == 2
    assert rows["too_often"].retry_at == NOW + timedelta(seconds=270)
    assert rows["guessing"].count == 1 and rows["guessing"].app_password is None


@pytest.mark.django_db
def test_the_history_is_bounded_in_rows_and_days_but_remembers_a_sign_in(
    password: AppPassword,
) -> None:
    old = START - 40 * 86400
    activity.fold([sign_in(password, "198.51.100.1", old)], now=NOW - timedelta(days=40))
    activity.fold(
        [
            (
                f"{i}",
                Event(
                    ActivityKind.REFUSED,
                    password.mailbox_id,
                    None,
                    "imap",
                    f"203.0.113.{i}",
                    None,
                    "",
                    START + i,
                    "guessing",
                ),
            )
            for i in range(70)
        ],
        now=NOW,
    )
    rows = PasswordActivity.objects.filter(mailbox=password.mailbox)
    # 50 of the last 30 days, and the newest sign-in: it says the mailbox signed in before.
    assert rows.count() == activity.HISTORY_ROWS + 1
    assert rows.filter(kind=ActivityKind.SIGN_IN).count() == 1
    assert not rows.filter(network="203.0.113.0").exists()
    shown = activity.history(password.mailbox_id, now=NOW + timedelta(minutes=5))
    assert sum(len(entry.rows) for entry in shown) == activity.HISTORY_ROWS
    assert all(row.kind == ActivityKind.REFUSED for entry in shown for row in entry.rows)


# -- "A new mail program signed in" -------------------------------------------------------------


@pytest.mark.django_db
def test_a_mailbox_s_first_sign_in_ever_sends_no_alert(
    password: AppPassword, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        activity.fold([sign_in(password, "192.0.2.10", START)], now=NOW)
    assert not Notice.objects.filter(kind=NoticeKind.NEW_PROGRAM).exists()
    assert mail.outbox == []


@pytest.mark.django_db
def test_a_new_network_sends_one_alert_an_hour_per_password(
    password: AppPassword, django_capture_on_commit_callbacks: Any
) -> None:
    password.label = ""
    activity.fold([sign_in(password, "192.0.2.10", START - 86400, "Thunderbird 115")], now=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        activity.fold(
            [
                sign_in(password, "192.0.2.10", START, "Thunderbird 115"),
                sign_in(password, "203.0.113.7", START + 60, "Thunderbird 115"),
                sign_in(password, "203.0.113.8", START + 120, "Evil 1.0"),
            ],
            now=NOW,
        )
        # Taken in twice (a crash before the stream was trimmed): no second notice.
        activity.fold([sign_in(password, "203.0.113.7", START + 60, "Thunderbird 115")], now=NOW)
    [alert] = NewProgramAlert.objects.all()
    assert alert.ip == "203.0.113.7" and alert.app_password == password
    [message] = mail.outbox
    assert message.to == [password.mailbox.address]
    assert "alice@inbox.lv" in message.subject
    assert "203.0.113.7" in message.body and "IMAP" in message.body
    assert "/mail-programs/not-me/" in message.body

    # An hour later a new one alerts again.
    with django_capture_on_commit_callbacks(execute=True):
        activity.fold(
            [sign_in(password, "198.51.100.4", START + 3700)], now=NOW + timedelta(hours=1)
        )
    assert NewProgramAlert.objects.count() == 2 and len(mail.outbox) == 2


@pytest.mark.django_db
def test_the_alert_is_written_in_the_owner_s_language(
    bob: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(bob)
    bob.language = "lv"
    bob.save()
    password = AppPassword.objects.get(mailbox=bob)
    activity.fold([sign_in(password, "192.0.2.10", START - 60)], now=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        activity.fold([sign_in(password, "203.0.113.7", START)], now=NOW)
    [message] = mail.outbox
    assert "pieteicās jauna pasta programma" in message.subject
    assert "Tas nebiju es" in message.body


# -- the auth policy buffers, the job takes in ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_policy_buffers_sign_ins_and_refusals_and_the_job_takes_them_in(
    redis_db: redis.Redis,
    alice: Mailbox,
    settings: Any,
) -> None:
    settings.AUTH_POLICY_CHECK_BURST = 1
    switch_on(alice)
    password = AppPassword.objects.get(mailbox=alice)
    dovecot = Dovecot(redis_url_for_tests())
    body = {"app_password": str(password.pk), "device_id": '("name" "Thunderbird" "version" "115")'}
    assert dovecot.allow(alice.address, **body)["status"] == 0
    dovecot.post(
        "report",
        {
            "login": alice.address,
            "protocol": "imap",
            "remote": "192.0.2.10",
            "success": True,
            **body,
        },
    )
    dovecot.now += 120
    refusal = dovecot.allow(alice.address, **body)
    assert refusal["status"] == -1
    assert redis_db.xlen(activity.STREAM_KEY) == 2

    assert jobs.run("compact_activity") == 2
    assert redis_db.xlen(activity.STREAM_KEY) == 0
    rows = {row.kind: row for row in PasswordActivity.objects.filter(mailbox=alice)}
    assert rows["sign_in"].client == "Thunderbird 115" and rows["sign_in"].ip == "192.0.2.10"
    assert rows["refused"].reason == "too_often" and rows["refused"].app_password == password
    assert rows["refused"].retry_at == datetime.fromtimestamp(START + 300, UTC)


@pytest.mark.django_db(transaction=True)
def test_a_refusal_stands_when_the_history_cannot_be_written(
    redis_db: redis.Redis, alice: Mailbox, settings: Any
) -> None:
    """A failed history write must not fail the request: Dovecot lets a login in when its
    policy request fails, which would turn the refusal into a way in."""
    settings.AUTH_POLICY_CHECK_BURST = 1
    settings.AUTH_POLICY_PROGRAM_CHECK_BURST = 1
    switch_on(alice)
    password = AppPassword.objects.get(mailbox=alice)
    redis_db.set(activity.STREAM_KEY, "not a stream")  # every XADD now fails (WRONGTYPE)
    dovecot = Dovecot(redis_url_for_tests())
    body = {"app_password": str(password.pk)}
    assert dovecot.allow(alice.address, **body)["status"] == 0
    report = {"login": alice.address, "protocol": "imap", "remote": "192.0.2.10", "success": True}
    assert dovecot.post("report", {**report, **body}).status_code == 200
    dovecot.now += 120
    assert dovecot.allow(alice.address, **body)["status"] == -1


@pytest.mark.django_db(transaction=True)
def test_an_unknown_address_records_nothing(redis_db: redis.Redis) -> None:
    dovecot = Dovecot(redis_url_for_tests())
    for _ in range(12):
        dovecot.login("nobody@inbox.lv", right=False, pwhash=os.urandom(4).hex())
    assert redis_db.xlen(activity.STREAM_KEY) == 0


# -- the panel -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_panel_lists_each_password_s_sign_ins_and_refusals(password: AppPassword) -> None:
    activity.fold(
        [
            sign_in(password, "192.0.2.10", START, "Thunderbird 115"),
            refused(password.mailbox, "guessing", START + 10, START + 900),
        ],
        now=NOW,
    )
    with time_machine.travel(NOW + timedelta(minutes=5)):
        page = signed_in_client(password.mailbox).get(reverse("mailaccess:mail_programs"))
    text = page.content.decode()
    assert 'id="activity"' in text
    assert "Thunderbird 115" in text and "192.0.2.10" in text
    assert "Pieteicās" in text and "Atteikts" in text


# -- "This was not me" ---------------------------------------------------------------------------


@pytest.fixture
def alert(password: AppPassword) -> NewProgramAlert:
    activity.fold([sign_in(password, "192.0.2.10", START - 60)], now=NOW)
    activity.fold([sign_in(password, "203.0.113.7", START)], now=NOW)
    return NewProgramAlert.objects.get()


def link(alert: NewProgramAlert) -> str:
    return reverse("mailaccess:not_me", kwargs={"token": activity.not_me_token(alert)})


@pytest.mark.django_db
def test_not_me_ends_the_password_once_and_leads_to_the_web_password(
    alert: NewProgramAlert, alice_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    url = link(alert)
    page = alice_client.get(url)
    assert page.status_code == 200 and "203.0.113.7" in page.content.decode()
    assert AppPassword.objects.get(pk=alert.app_password_id).is_live  # a GET changes nothing

    with django_capture_on_commit_callbacks(execute=True):
        response = csrf_post(alice_client, url)
    assert response.status_code == 302 and response["Location"] == reverse(
        "accounts:change_password"
    )
    assert not AppPassword.objects.get(pk=alert.app_password_id).is_live
    event = AuditEvent.objects.get(action=AuditAction.NOT_ME)
    assert event.detail["client_ip"] == "203.0.113.7"
    assert Notice.objects.get(pk=alert.notice_id).read_at is not None

    # Reused: nothing more happens.
    assert alice_client.get(url).status_code == 410
    assert not actions.end_password_not_me(alert.mailbox, alert.pk, actor=Actor.user(alert.mailbox))
    assert AuditEvent.objects.filter(action=AuditAction.NOT_ME).count() == 1


@pytest.mark.django_db
def test_an_expired_link_ends_nothing(alert: NewProgramAlert, alice_client: Client) -> None:
    with time_machine.travel(datetime.now(UTC) - activity.NOT_ME_MAX_AGE - timedelta(minutes=1)):
        url = link(alert)
    assert csrf_post(alice_client, url).status_code == 410
    assert AppPassword.objects.get(pk=alert.app_password_id).is_live


@pytest.mark.django_db
def test_a_tampered_link_ends_nothing(alert: NewProgramAlert, alice_client: Client) -> None:
    token = activity.not_me_token(alert)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    url = reverse("mailaccess:not_me", kwargs={"token": forged})
    assert csrf_post(alice_client, url).status_code == 404
    assert AppPassword.objects.get(pk=alert.app_password_id).is_live


@pytest.mark.django_db
def test_another_owner_s_link_is_not_found(alert: NewProgramAlert, bob_client: Client) -> None:
    assert csrf_post(bob_client, link(alert)).status_code == 404
    assert AppPassword.objects.get(pk=alert.app_password_id).is_live


@pytest.mark.django_db
def test_the_link_asks_to_sign_in_first(alert: NewProgramAlert) -> None:
    response = Client().get(link(alert))
    assert response.status_code == 302 and "next=" in response["Location"]


@pytest.mark.django_db
def test_support_sees_the_same_list_in_the_admin(
    password: AppPassword,
    staff_client: Client,  # noqa: F811
) -> None:
    activity.fold(
        [
            sign_in(password, "192.0.2.10", START, "Thunderbird 115"),
            refused(password.mailbox, "too_often", START + 10, START + 300),
        ],
        now=NOW,
    )
    page = staff_client.get(change_url(password.mailbox)).content.decode()
    listing = staff_client.get(
        reverse("admin:mailaccess_passwordactivity_changelist"),
        {"q": password.mailbox.address},
    ).content.decode()
    assert 'id="support-activity"' in page
    assert "Thunderbird 115" in page and "192.0.2.10" in page
    assert "Thunderbird 115" in listing
    assert password.password_hash not in page + listing


@pytest.mark.django_db
def test_the_newest_use_wins_whatever_order_the_pages_come_in(alice: Mailbox) -> None:
    """A page retried after a crash brings older sign-ins after newer ones: they must not
    move the panel's "last used" (or the idle-expiry clock) back."""
    actions.enable_access(alice, actor=Actor.user(alice))
    [password] = AppPassword.objects.filter(mailbox=alice)
    activity.fold([sign_in(password, "203.0.113.7", START + 600, "K-9 Mail")], now=NOW)
    activity.fold([sign_in(password, "192.0.2.10", START, "Thunderbird 115")], now=NOW)

    access = ExternalAccess.objects.get(mailbox=alice)
    password.refresh_from_db()
    assert access.imap_last_used_at is not None
    assert access.imap_last_used_at.timestamp() == START + 600
    assert access.imap_last_ip == "203.0.113.7"
    assert access.last_activity_at == access.imap_last_used_at
    assert password.last_used_at == access.imap_last_used_at
    assert password.last_used_client == "K-9 Mail"


@pytest.mark.django_db
def test_a_sign_in_the_policy_could_not_name_a_password_for_still_counts_as_a_use(
    alice: Mailbox,
) -> None:
    """A Dovecot that does not send the password's id: the mailbox was used all the same, and
    the idle-expiry job must see it; the history shows no row without a password."""
    actions.enable_access(alice, actor=Actor.user(alice))
    event = activity.Event(
        ActivityKind.SIGN_IN, alice.pk, None, "pop3", "192.0.2.10", "192.0.2.10", "", START
    )
    activity.fold([("1-0", event)], now=NOW)

    access = ExternalAccess.objects.get(mailbox=alice)
    assert access.pop3_last_used_at is not None and access.pop3_last_used_at.timestamp() == START
    assert not PasswordActivity.objects.filter(mailbox=alice).exists()
