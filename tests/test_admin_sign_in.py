"""The admin's way in: the site's own throttled sign-in with its second step, for everybody."""

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
from mailaccess.admin_views import SUPPORT_ACTIONS
from tests.conftest import ALICE_PASSWORD, csrf_post
from tests.otp import current_code, enable_two_factor, enter_code, is_signed_in, sign_in

SUPPORT_PASSWORD = "support-web-password-1"
ADMIN_LOGIN = reverse("admin:login")
THROTTLED = "Pārāk daudz neveiksmīgu mēģinājumu"


@pytest.fixture
def staff(db: None) -> Mailbox:
    member = Mailbox.objects.create_user("support@inbox.lv", SUPPORT_PASSWORD, is_staff=True)
    member.groups.add(Group.objects.get(name="support"))
    return member


def admin_pages(mailbox: Mailbox) -> list[str]:
    """Every kind of admin page: the index, each app and model's pages, the support pages."""
    pages = [
        reverse("admin:index"),
        reverse("admin:jsi18n"),
        reverse("admin:password_change"),
        reverse("admin:support_dashboard"),
        reverse("admin:accounts_mailbox_change", args=[mailbox.pk]),
        reverse("admin:accounts_mailbox_history", args=[mailbox.pk]),
        reverse("admin:accounts_mailbox_delete", args=[mailbox.pk]),
        *(
            reverse("admin:accounts_mailbox_support_action", args=[mailbox.pk, slug])
            for slug in SUPPORT_ACTIONS
        ),
    ]
    for model in admin.site._registry:
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        pages += [reverse(f"admin:{info}_changelist"), reverse(f"admin:{info}_add")]
        pages.append(reverse("admin:app_list", args=[model._meta.app_label]))
    return sorted(set(pages))


def assert_no_admin_page_opens(client: Client, mailbox: Mailbox) -> None:
    for page in admin_pages(mailbox):
        response = client.get(page)
        assert response.status_code == 302, f"{page} answered {response.status_code}"
        assert response["Location"].startswith(ADMIN_LOGIN), page


def admin_form_sign_in(client: Client, address: str, password: str, **extra: Any) -> Any:
    """What the stock admin's sign-in form posts (``username``), with the panel's field too."""
    client.get(reverse("accounts:login"))  # for the CSRF cookie
    data = {
        "username": address,
        "address": address,
        "password": password,
        "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
    }
    return client.post(ADMIN_LOGIN, data, **extra)


def test_the_password_alone_opens_no_admin_page(staff: Mailbox, alice: Mailbox) -> None:
    enable_two_factor(staff)
    through_admin = Client(enforce_csrf_checks=True)
    response = admin_form_sign_in(through_admin, staff.address, SUPPORT_PASSWORD)
    # The admin's form is the panel's sign-in: a right password leads to the second step.
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:sign_in_code")
    assert not is_signed_in(through_admin)
    assert_no_admin_page_opens(through_admin, alice)
    # A session that has the password and not the second step (signed in before two-factor
    # sign-in was switched on, say) opens nothing either.
    password_only = Client()
    password_only.force_login(staff)
    assert_no_admin_page_opens(password_only, alice)


def test_forty_wrong_passwords_at_the_admin_login_are_throttled_like_the_panel(
    staff: Mailbox,
) -> None:
    client = Client(enforce_csrf_checks=True)
    answers = [
        admin_form_sign_in(client, staff.address, f"guess-{n}", REMOTE_ADDR="192.0.2.40")
        for n in range(40)
    ]
    assert [answer.status_code for answer in answers] == [200] * 10 + [429] * 30
    assert THROTTLED in answers[-1].content.decode()
    # The same counters as the panel's: its sign-in for this mailbox is held back too.
    elsewhere = Client(enforce_csrf_checks=True)
    response = sign_in(elsewhere, staff.address, SUPPORT_PASSWORD, REMOTE_ADDR="198.51.100.4")
    assert response.status_code == 429
    assert not is_signed_in(elsewhere)


def test_the_admin_opens_after_the_second_step(staff: Mailbox) -> None:
    device, _codes = enable_two_factor(staff)
    client = Client(enforce_csrf_checks=True)
    changelist = reverse("admin:accounts_mailbox_changelist")
    to_login = client.get(changelist)
    assert to_login["Location"] == f"{ADMIN_LOGIN}?next={changelist}"
    sign_in_page = client.get(to_login["Location"])["Location"]
    assert sign_in_page == f"{reverse('accounts:login')}?next={changelist.replace('/', '%2F')}"
    response = csrf_post(
        client,
        sign_in_page,
        {"address": staff.address, "password": SUPPORT_PASSWORD, "next": changelist},
    )
    assert response["Location"] == reverse("accounts:sign_in_code")
    response = enter_code(client, current_code(device))
    assert response.status_code == 302 and response["Location"] == changelist
    assert client.get(changelist).status_code == 200


def test_a_recovery_code_opens_the_admin_too(staff: Mailbox) -> None:
    _device, codes = enable_two_factor(staff)
    client = Client(enforce_csrf_checks=True)
    admin_form_sign_in(client, staff.address, SUPPORT_PASSWORD)
    assert enter_code(client, codes[0])["Location"] == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200


def test_staff_without_an_authenticator_are_sent_to_set_one_up(staff: Mailbox) -> None:
    client = Client(enforce_csrf_checks=True)
    response = admin_form_sign_in(client, staff.address, SUPPORT_PASSWORD)
    assert is_signed_in(client)
    response = client.get(reverse("admin:index"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("accounts:security")
    assert "divpakāpju pieteikšanās" in response.content.decode()
    assert_no_admin_page_opens(client, staff)
    # Set up like any owner: the app's first code switches it on and verifies this session.
    csrf_post(client, reverse("accounts:two_factor_start"))
    from accounts import two_factor

    device = two_factor.pending_device(staff)
    assert device is not None
    response = csrf_post(
        client, reverse("accounts:two_factor_setup"), {"code": current_code(device)}
    )
    assert response.status_code == 200
    assert client.get(reverse("admin:accounts_mailbox_changelist")).status_code == 200


def test_a_superuser_made_with_createsuperuser_follows_the_same_rule(
    db: None, alice: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "root-web-password-1")
    call_command("createsuperuser", interactive=False, address="root@inbox.lv", verbosity=0)
    client = Client(enforce_csrf_checks=True)
    assert sign_in(client, "root@inbox.lv", "root-web-password-1").status_code == 302
    assert is_signed_in(client)
    assert_no_admin_page_opens(client, alice)
    response = client.get(ADMIN_LOGIN)
    assert response["Location"] == reverse("accounts:security")


def test_the_admin_login_keeps_only_a_safe_next(db: None) -> None:
    client = Client()
    response = client.get(ADMIN_LOGIN, {"next": "https://evil.example/admin/"})
    assert response["Location"] == f"{reverse('accounts:login')}?next=%2Fadmin%2F"
    response = client.get(ADMIN_LOGIN, {"next": "/admin/accounts/"})
    assert response["Location"] == f"{reverse('accounts:login')}?next=%2Fadmin%2Faccounts%2F"


def test_a_mailbox_owner_signed_in_with_two_factor_is_still_not_staff(alice: Mailbox) -> None:
    device, _codes = enable_two_factor(alice)
    client = Client(enforce_csrf_checks=True)
    sign_in(client, alice.address, ALICE_PASSWORD)
    assert enter_code(client, current_code(device)).status_code == 302
    assert_no_admin_page_opens(client, alice)
