"""The support admin stays cheap with many mailboxes: fixed query counts, no full COUNT(*).

Speed itself is measured by benchmarks/admin_scale.py on a million mailboxes; here the
number of queries must not grow with the number of rows.
"""

import re

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from accounts.models import Mailbox, Plan
from audit.models import ActorKind, AuditAction, AuditEvent
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, Notice, NoticeKind
from tests.otp import verified_client

CHANGELIST = reverse("admin:accounts_mailbox_changelist")
FILTERED = [
    "",
    "?plan__exact=free",
    "?status__exact=active",
    "?access=on",
    "?access=off",
    "?block=any",
    "?block=hourly_limit",
    "?used=7",
    "?used=older",
    "?used=never",
    "?q=user1",
    "?o=7",
]


def make_mailboxes(count: int, start: int = 0) -> list[Mailbox]:
    now = timezone.now()
    mailboxes = Mailbox.objects.bulk_create(
        Mailbox(
            address=f"user{i}@inbox.lv",
            plan=Plan.PLUS if i % 3 == 0 else Plan.FREE,
            password="!",
            last_login=now,
        )
        for i in range(start, start + count)
    )
    ExternalAccess.objects.bulk_create(
        ExternalAccess(
            mailbox=mailbox,
            enabled=i % 2 == 0,
            block_reason="" if i % 2 == 0 else BlockReason.HOURLY_LIMIT,
            last_activity_at=now,
            imap_last_used_at=now,
        )
        for i, mailbox in enumerate(mailboxes)
    )
    AppPassword.objects.bulk_create(
        AppPassword(
            mailbox=mailbox,
            label=f"phone {n}",
            password_hash=f"{{SSHA512}}hash-{mailbox.pk}-{n}",
            lookup_key=f"{mailbox.pk:032d}{n:032d}",
            revoked_at=None if n == 0 else now,
        )
        for mailbox in mailboxes
        for n in range(2)
    )
    return mailboxes


@pytest.fixture
def staff_client(db: None) -> Client:
    staff = Mailbox.objects.create_user("support@inbox.lv", "support-web-password-1", is_staff=True)
    staff.groups.add(Group.objects.get(name="support"))
    return verified_client(staff)


def queries_for(client: Client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as context:
        response = client.get(url)
    assert response.status_code == 200, url
    return [query["sql"] for query in context.captured_queries]


@pytest.mark.parametrize("query", FILTERED)
def test_the_changelist_makes_as_many_queries_for_fifty_rows_as_for_one(
    staff_client: Client, query: str
) -> None:
    make_mailboxes(1)
    few = len(queries_for(staff_client, CHANGELIST + query))
    make_mailboxes(120, start=1000)
    assert len(queries_for(staff_client, CHANGELIST + query)) == few


def test_the_changelist_with_many_rows_stays_within_a_few_queries(
    staff_client: Client, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    make_mailboxes(120)
    # Six for the page, one for the session's authenticator (the admin's second factor).
    with django_assert_max_num_queries(7):
        page = staff_client.get(CHANGELIST).content.decode()
    assert page.count('class="action-checkbox"') == 50
    assert "{SSHA512}" not in page


def test_the_changelist_never_counts_the_whole_table(staff_client: Client) -> None:
    make_mailboxes(3)
    for query in FILTERED:
        for sql in queries_for(staff_client, CHANGELIST + query):
            if sql.upper().startswith("SELECT COUNT("):
                assert "LIMIT" in sql.upper(), sql
                assert "mailaccess_apppassword" not in sql, "no per-row subquery in the count"


def test_beyond_the_count_limit_the_page_says_more_than(
    staff_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accounts import admin as accounts_admin

    monkeypatch.setattr(accounts_admin, "COUNT_LIMIT", 5)
    make_mailboxes(8)
    page = staff_client.get(CHANGELIST).content.decode()
    assert re.search(r'<span class="capped">[^<]*\b5\b', page)


def test_the_mailbox_page_with_a_long_history_stays_within_a_few_queries(
    staff_client: Client, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    (mailbox,) = make_mailboxes(1)
    AppPassword.objects.bulk_create(
        AppPassword(mailbox=mailbox, password_hash="x", lookup_key=f"k{n}") for n in range(40)
    )
    AuditEvent.objects.bulk_create(
        AuditEvent(
            mailbox=mailbox,
            address=mailbox.address,
            action=AuditAction.ACCESS_ENABLED,
            actor_kind=ActorKind.USER,
            actor=mailbox,
        )
        for _ in range(200)
    )
    Notice.objects.bulk_create(
        Notice(mailbox=mailbox, kind=NoticeKind.BLOCKED, key=f"n{n}") for n in range(20)
    )
    url = reverse("admin:accounts_mailbox_change", args=[mailbox.pk])
    # One of them loads the session's authenticator (the admin's second factor), two the
    # mailbox's recent sign-ins and refusals with their passwords' names (mailaccess/activity.py).
    with django_assert_max_num_queries(15):
        page = staff_client.get(url).content.decode()
    assert page.count("<tr>") >= 40 + 50


def test_the_filters_find_the_right_mailboxes(staff_client: Client) -> None:
    make_mailboxes(6)
    never = Mailbox.objects.create_user("never@inbox.lv", "never-web-password-1")

    def addresses(query: str) -> set[str]:
        page = staff_client.get(CHANGELIST + query).content.decode()
        return {
            mailbox.address
            for mailbox in Mailbox.objects.all()
            if f">{mailbox.address}</a></th>" in page
        }

    assert addresses("?access=on") == {"user0@inbox.lv", "user2@inbox.lv", "user4@inbox.lv"}
    assert addresses("?access=off") == {
        "user1@inbox.lv",
        "user3@inbox.lv",
        "user5@inbox.lv",
        "never@inbox.lv",
        "support@inbox.lv",
    }
    assert addresses("?block=hourly_limit") == {
        "user1@inbox.lv",
        "user3@inbox.lv",
        "user5@inbox.lv",
    }
    assert addresses("?block=compromised") == set()
    assert addresses("?plan__exact=plus") == {"user0@inbox.lv", "user3@inbox.lv"}
    assert "never@inbox.lv" in addresses("?used=never")
    assert "user0@inbox.lv" not in addresses("?used=never")
    assert "user0@inbox.lv" in addresses("?used=1")
    assert addresses("?q=USER3") == {"user3@inbox.lv"}
    assert addresses("?q=user3@inbox.lv") == {"user3@inbox.lv"}
    assert never.address in addresses("?q=nev")


def test_the_address_search_lists_the_matches_in_address_order(staff_client: Client) -> None:
    make_mailboxes(12)
    Mailbox.objects.create_user("User1.Other@inbox.lv", "other-web-password-1")
    page = staff_client.get(CHANGELIST + "?q=User1").content.decode()
    found = re.findall(r">(user1[^<]*@inbox\.lv)</a></th>", page)
    assert found == ["user1.other@inbox.lv", "user10@inbox.lv", "user11@inbox.lv", "user1@inbox.lv"]


@pytest.mark.postgres
def test_the_address_search_reads_only_the_page_from_one_index_on_postgresql(
    staff_client: Client,
) -> None:
    """The page's rows come from the byte-ordered index, in its order: no sort of every match
    and no walk of the primary key looking for matches (the 10,000,000-mailbox benchmark)."""
    from accounts.admin import MailboxAdmin

    make_mailboxes(3)
    request = RequestFactory().get(CHANGELIST, {"q": "USER1"})
    request.user = Mailbox.objects.get(address="support@inbox.lv")
    changelist = MailboxAdmin(Mailbox, admin.site).get_changelist_instance(request)
    page = changelist.queryset[:50]
    assert [mailbox.address for mailbox in page] == ["user1@inbox.lv"]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        plan = page.explain()
    assert "Index Scan using mailbox_address_bytes_idx" in plan, plan
    # The page comes in the index's order: nothing sorts the matches.
    assert "Sort" not in plan, plan
    assert "accounts_mailbox_pkey" not in plan, plan
