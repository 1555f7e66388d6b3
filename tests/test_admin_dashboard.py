"""The support dashboard: blocks per reason, notices sent, mailboxes with access on."""

import re
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.models import BlockReason, Notice
from tests.otp import verified_client

URL = reverse("admin:support_dashboard")


@pytest.fixture
def staff_client(db: None) -> Client:
    staff = Mailbox.objects.create_user("support@inbox.lv", "support-web-password-1", is_staff=True)
    staff.groups.add(Group.objects.get(name="support"))
    return verified_client(staff)


def figure(page: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}">(\d+)<', page)
    assert match, element_id
    return int(match.group(1))


def blocks_for(page: str, reason: BlockReason) -> int:
    match = re.search(rf'data-reason="{reason.value}">.*?class="blocks">(\d+)<', page)
    assert match, reason
    return int(match.group(1))


def test_the_dashboard_counts_blocks_notices_and_access_on(
    staff_client: Client, alice: Mailbox, bob: Mailbox
) -> None:
    system = Actor.system("test")
    carol = Mailbox.objects.create_user("carol@inbox.lv", "carol-web-password-1")
    with time_machine.travel(timezone.now() - timedelta(days=20)):
        actions.block_access(carol, BlockReason.IDLE, actor=system)
    actions.enable_access(alice, actor=Actor.user(alice))
    actions.block_access(bob, BlockReason.HOURLY_LIMIT, actor=system)
    actions.block_access(carol, BlockReason.HOURLY_LIMIT, actor=system)
    Notice.objects.filter(mailbox=bob).update(emailed_at=timezone.now())

    page = staff_client.get(URL).content.decode()
    assert figure(page, "access-on") == 1
    assert figure(page, "blocked-now") == 2
    assert blocks_for(page, BlockReason.HOURLY_LIMIT) == 2
    assert blocks_for(page, BlockReason.IDLE) == 0, "twenty days ago is outside the week"
    assert figure(page, "blocks-total") == 2
    assert figure(page, "notices-created") == 2
    assert figure(page, "notices-emailed") == 1

    month = staff_client.get(URL + "?days=30").content.decode()
    assert blocks_for(month, BlockReason.IDLE) == 1
    assert figure(month, "notices-created") == 3


def test_a_bad_period_falls_back_to_a_week(staff_client: Client) -> None:
    assert staff_client.get(URL + "?days=many").status_code == 200
    assert staff_client.get(URL + "?days=-5").status_code == 200


def test_staff_outside_the_support_group_cannot_see_the_dashboard(db: None) -> None:
    intern = Mailbox.objects.create_user("intern@inbox.lv", "intern-web-password-1", is_staff=True)
    assert verified_client(intern).get(URL).status_code == 403


def test_the_dashboard_is_linked_from_the_mailbox_list(staff_client: Client) -> None:
    assert URL in staff_client.get(reverse("admin:accounts_mailbox_changelist")).content.decode()


def test_the_dashboard_stays_within_a_few_queries(
    staff_client: Client, alice: Mailbox, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    for reason in (BlockReason.HOURLY_LIMIT, BlockReason.SUPPORT, BlockReason.IDLE):
        actions.block_access(alice, reason, actor=Actor.system("test"))
    # One of them loads the session's authenticator (the admin's second factor).
    with django_assert_max_num_queries(10):
        assert staff_client.get(URL + "?days=90").status_code == 200
