"""Block notices reach the owner: by e-mail in their language, exactly once, and in the panel."""

from datetime import UTC, datetime, timedelta
from smtplib import SMTPServerDisconnected
from typing import Any

import pytest
import time_machine
from dateutil.relativedelta import relativedelta
from django.core import mail
from django.core.mail.backends import locmem
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions, jobs, notices, tasks
from mailaccess.models import BlockReason, Notice, NoticeKind

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PANEL = reverse("mailaccess:mail_programs")


def switch_on(mailbox: Mailbox, when: datetime | None = None) -> None:
    with time_machine.travel(when or timezone.now(), tick=False):
        actions.enable_access(mailbox, actor=Actor.user(mailbox))


def block(mailbox: Mailbox, reason: BlockReason, capture: Any) -> Notice:
    with capture(execute=True):
        notice = actions.block_access(mailbox, reason, actor=Actor.system("test"))
    assert notice is not None
    return notice


def post_from_panel(client: Client, url: str) -> Any:
    """Submit a form of the panel as a browser does: with the CSRF token the panel set."""
    client.get(PANEL)
    return client.post(url, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})


class DropsFirstMessageTo(locmem.EmailBackend):
    """An SMTP server that drops the connection the first time it is given mail for ``address``."""

    address = ""

    def send_messages(self, messages: Any) -> int:
        for message in messages:
            if DropsFirstMessageTo.address in message.to:
                DropsFirstMessageTo.address = ""
                raise SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


# The e-mail


def test_a_block_is_emailed_in_latvian_once_it_commits(
    alice: Mailbox, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.PORTAL_URL = "https://settings.inbox.lv"
    switch_on(alice)
    notice = block(alice, BlockReason.IDLE, django_capture_on_commit_callbacks)

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@inbox.lv"]
    assert message.subject == "POP3\\IMAP pieeja pastkastītei alice@inbox.lv ir bloķēta"
    assert "Ārējā POP3\\IMAP un SMTP pieeja Jūsu pastkastītei alice@inbox.lv ir izslēgta" in (
        message.body
    )
    assert (
        "Iemesls: Divus mēnešus neviena pasta programma neizmantoja POP3, IMAP vai SMTP pieeju."
        in message.body
    )
    assert "Ko darīt: Ieslēdziet pieeju atkārtoti, kad tā Jums būs vajadzīga" in message.body
    assert "https://settings.inbox.lv/settings/mail-programs/" in message.body
    notice.refresh_from_db()
    assert notice.emailed_at is not None


def test_an_english_user_gets_the_notice_in_english(
    bob: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(bob)
    block(bob, BlockReason.FAULTY_PROGRAM, django_capture_on_commit_callbacks)

    message = mail.outbox[0]
    assert message.to == ["bob@mail.ee"]
    assert message.subject == "POP3/IMAP access to bob@mail.ee is blocked"
    assert "Why: A mail program connected to your mailbox more often than allowed." in message.body
    assert "What to do: Set your mail program to check for new mail no more often" in message.body


def test_a_stolen_password_notice_says_to_change_the_password_first(
    alice: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(alice)
    block(alice, BlockReason.COMPROMISED, django_capture_on_commit_callbacks)
    assert "Ko darīt: Vispirms nomainiet web paroli." in mail.outbox[0].body


def test_nothing_is_emailed_when_the_block_rolls_back(
    alice: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    from django.db import transaction

    switch_on(alice)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        actions.block_access(alice, BlockReason.SUPPORT, actor=Actor.system("test"))
        raise RuntimeError("the surrounding change failed")
    assert mail.outbox == []
    assert not Notice.objects.exists()


def test_each_owner_of_a_job_batch_gets_one_notice_in_their_language(
    alice: Mailbox, bob: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(alice, T0)
    switch_on(bob, T0)
    with (
        time_machine.travel(T0 + relativedelta(months=3), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert jobs.block_idle_access() == 2

    subjects = sorted(message.subject for message in mail.outbox)
    assert subjects == [
        "POP3/IMAP access to bob@mail.ee is blocked",
        "POP3\\IMAP pieeja pastkastītei alice@inbox.lv ir bloķēta",
    ]


def test_the_expiry_warning_names_the_day_access_ends(
    alice: Mailbox, bob: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(alice, T0)
    switch_on(bob, T0)
    with (
        time_machine.travel(T0 + relativedelta(months=2) - timedelta(days=6), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert jobs.warn_expiring_access() == 2

    by_address = {message.to[0]: message for message in mail.outbox}
    latvian, english = by_address["alice@inbox.lv"], by_address["bob@mail.ee"]
    assert (
        latvian.subject == "POP3\\IMAP pieeja pastkastītei alice@inbox.lv pēc nedēļas tiks izslēgta"
    )
    assert "Izslēgšanas datums: 02.05.2026." in latvian.body
    assert english.subject == "POP3/IMAP access to bob@mail.ee will be switched off in a week"
    assert "Switch-off date: 2 May 2026" in english.body


# Exactly once


def test_a_redelivered_task_sends_nothing_twice(
    alice: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    switch_on(alice)
    notice = block(alice, BlockReason.IDLE, django_capture_on_commit_callbacks)
    assert len(mail.outbox) == 1

    # acks_late: a worker that dies after sending gets the same task delivered again.
    tasks.send_notices.apply(args=([notice.pk],))
    tasks.send_notices.apply(args=([notice.pk],))
    assert len(mail.outbox) == 1


def test_a_task_retried_after_an_smtp_failure_sends_each_notice_exactly_once(
    alice: Mailbox, bob: Mailbox, settings: Any
) -> None:
    switch_on(alice)
    switch_on(bob)
    actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    actions.block_access(bob, BlockReason.IDLE, actor=Actor.system("test"))
    ids = list(Notice.objects.order_by("mailbox__address").values_list("pk", flat=True))
    settings.EMAIL_BACKEND = f"{__name__}.DropsFirstMessageTo"
    DropsFirstMessageTo.address = "bob@mail.ee"

    # alice's goes out, bob's fails, the task is retried (eagerly here, with back-off on a
    # worker) and the retry must send bob's only.
    result = tasks.send_notices.apply(args=(ids,))

    assert result.successful()
    assert sorted(message.to[0] for message in mail.outbox) == ["alice@inbox.lv", "bob@mail.ee"]
    assert not Notice.objects.filter(emailed_at__isnull=True).exists()


def test_a_failed_send_leaves_the_notice_unsent_for_the_sweep(
    alice: Mailbox, settings: Any
) -> None:
    switch_on(alice)
    with time_machine.travel(T0, tick=False):
        actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    notice = Notice.objects.get()
    settings.EMAIL_BACKEND = f"{__name__}.DropsFirstMessageTo"
    DropsFirstMessageTo.address = "alice@inbox.lv"
    with pytest.raises(SMTPServerDisconnected):
        notices.send_notice(notice.pk)
    notice.refresh_from_db()
    assert notice.emailed_at is None

    assert jobs.send_pending_notices(now=T0 + timedelta(minutes=5)) == 0
    assert jobs.send_pending_notices(now=T0 + timedelta(minutes=11)) == 1
    assert len(mail.outbox) == 1
    assert jobs.send_pending_notices(now=T0 + timedelta(minutes=21)) == 0


# The panel


def test_the_panel_shows_the_notice_until_it_is_marked_read(
    alice: Mailbox, alice_client: Client
) -> None:
    # A block is told by the box under the switch (tests/test_panel_wording.py); the expiry
    # warning is the notice the owner dismisses.
    switch_on(alice, timezone.now() - relativedelta(months=2) + timedelta(days=5))
    jobs.warn_expiring_access()
    notice = Notice.objects.get(mailbox=alice, kind=NoticeKind.EXPIRY_WARNING)
    read_url = reverse("mailaccess:mark_notice_read", args=[notice.pk])
    page = alice_client.get(PANEL).content.decode()
    assert "POP3\\IMAP pieeja drīz tiks izslēgta." in page
    assert read_url in page

    response = post_from_panel(alice_client, read_url)

    assert response.status_code == 302
    assert response["Location"] == PANEL
    notice.refresh_from_db()
    assert notice.read_at is not None
    assert read_url not in alice_client.get(PANEL).content.decode()


def test_the_panel_shows_the_expiry_warning(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice, timezone.now() - relativedelta(months=2) + timedelta(days=5))
    jobs.warn_expiring_access()
    page = alice_client.get(PANEL).content.decode()
    assert "POP3\\IMAP pieeja drīz tiks izslēgta." in page


def test_marking_read_needs_a_post(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    notice = actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    assert notice is not None
    response = alice_client.get(reverse("mailaccess:mark_notice_read", args=[notice.pk]))
    assert response.status_code == 405
    notice.refresh_from_db()
    assert notice.read_at is None


def test_marking_read_needs_the_csrf_token(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    notice = actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    assert notice is not None
    response = alice_client.post(reverse("mailaccess:mark_notice_read", args=[notice.pk]))
    assert response.status_code == 403
    notice.refresh_from_db()
    assert notice.read_at is None


def test_nobody_can_mark_another_owners_notice(
    alice: Mailbox, bob: Mailbox, bob_client: Client
) -> None:
    switch_on(alice)
    notice = actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    assert notice is not None
    response = post_from_panel(bob_client, reverse("mailaccess:mark_notice_read", args=[notice.pk]))
    assert response.status_code == 404
    notice.refresh_from_db()
    assert notice.read_at is None
    assert Notice.objects.get(pk=notice.pk).kind == NoticeKind.BLOCKED
