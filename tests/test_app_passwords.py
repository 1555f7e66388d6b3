"""One password per device: adding, listing and revoking them in the panel, and the actions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext, ngettext

from accounts.models import Mailbox
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, passwords
from mailaccess.models import AppPassword, BlockReason, Protocol
from tests.otp import verified_client

PANEL = "mailaccess:mail_programs"
ADD = "mailaccess:add_app_password"
PASSWORD_IN_PAGE = re.compile(r'<output id="new-password"[^>]*>([^<]+)</output>')
ALL = ["imap", "pop3", "smtp"]


def lv(message: str, plural: str = "", count: int = 0) -> str:
    """A message as alice, whose panel is in Latvian, reads it."""
    with translation.override("lv"):
        return ngettext(message, plural, count) if plural else gettext(message)


def switch_on(mailbox: Mailbox) -> str:
    text = actions.enable_access(mailbox, actor=Actor.user(mailbox))
    assert text is not None
    return text


def form_token(client: Client) -> str:
    page = client.get(reverse(PANEL)).content.decode()
    match = re.search(r'name="once" value="([^"]+)"', page)
    assert match, "the panel shows no form to add a password"
    return match.group(1)


def add(client: Client, label: str = "iPhone", protocols: list[str] | None = None, **extra: Any):  # type: ignore[no-untyped-def]
    data: dict[str, Any] = {
        "label": label,
        "protocols": ALL if protocols is None else protocols,
        "once": form_token(client),
        **extra,
    }
    token = client.cookies["csrftoken"].value
    return client.post(reverse(ADD), {**data, "csrfmiddlewaretoken": token})


def post_from_panel(client: Client, url: str) -> Any:
    """A button on the panel: the page gives the CSRF cookie, the form sends the token."""
    client.get(reverse(PANEL))
    return client.post(url, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})


def revoke_url(app_password: AppPassword) -> str:
    return reverse("mailaccess:revoke_app_password", args=[app_password.pk])


def shown_password(response: Any) -> str | None:
    match = PASSWORD_IN_PAGE.search(response.content.decode())
    return match.group(1).strip() if match else None


def live(mailbox: Mailbox) -> list[AppPassword]:
    return list(AppPassword.objects.live().filter(mailbox=mailbox).order_by("pk"))


# --- adding -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_adding_a_password_for_a_device_shows_it_once_and_stores_only_its_hashes(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)

    response = add(alice_client, "iPhone", ["imap", "smtp"])

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = shown_password(response)
    assert text
    secret = re.search(
        r'<section class="card secret".*?</section>', response.content.decode(), re.S
    )
    assert secret is not None and "iPhone" in secret[0]
    [_first, phone] = live(alice)
    assert phone.label == "iPhone"
    assert (phone.allow_imap, phone.allow_pop3, phone.allow_smtp) == (True, False, True)
    assert passwords.verify(text, phone.password_hash)
    assert phone.lookup_key == passwords.lookup_key(text)
    assert text not in str(AuditEvent.objects.filter(mailbox=alice).values())
    # The next page view shows the list, never the password again.
    again = alice_client.get(reverse(PANEL)).content.decode()
    assert text not in again and "iPhone" in again


@pytest.mark.django_db
def test_every_protocol_is_ticked_by_default(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)

    page = alice_client.get(reverse(PANEL)).content.decode()

    for protocol in ALL:
        assert re.search(rf'<input[^>]*value="{protocol}"[^>]*checked', page), protocol


@pytest.mark.django_db
def test_adding_a_password_is_audited_with_its_name_and_protocols(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)

    add(alice_client, "Work laptop", ["imap"])

    phone = live(alice)[-1]
    event = AuditEvent.objects.filter(mailbox=alice, action=AuditAction.PASSWORD_CREATED).first()
    assert event is not None
    assert event.detail == {"app_password": phone.pk, "label": "Work laptop", "protocols": ["imap"]}
    assert event.actor_label == "alice@inbox.lv" and event.ip == "127.0.0.1"


@pytest.mark.django_db
def test_a_password_needs_a_name_and_a_protocol_and_nothing_is_made_without(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)

    no_name = add(alice_client, "   ")
    no_protocol = add(alice_client, "iPhone", [])
    bad_protocol = add(alice_client, "iPhone", ["imap", "ftp"])

    assert no_name.status_code == no_protocol.status_code == bad_protocol.status_code == 400
    assert lv("Choose at least one protocol.") in no_protocol.content.decode()
    assert shown_password(no_protocol) is None
    assert len(live(alice)) == 1


@pytest.mark.django_db
def test_no_device_password_while_access_is_off(alice: Mailbox, alice_client: Client) -> None:
    page = alice_client.get(reverse(PANEL)).content.decode()
    assert 'name="once"' not in page

    token = alice_client.cookies["csrftoken"].value
    response = alice_client.post(
        reverse(ADD),
        {"label": "iPhone", "protocols": ALL, "once": "x", "csrfmiddlewaretoken": token},
    )

    assert response.status_code in (409, 400)
    assert not AppPassword.objects.filter(mailbox=alice).exists()
    with pytest.raises(actions.AccessError) as refused:
        actions.create_app_password(
            alice, label="iPhone", protocols=set(ALL), actor=Actor.user(alice)
        )
    assert refused.value.code == "access_off"


@pytest.mark.django_db
def test_at_the_cap_the_owner_is_told_to_revoke_one_first(
    alice: Mailbox, alice_client: Client, settings: Any
) -> None:
    settings.APP_PASSWORDS_PER_MAILBOX = 3
    switch_on(alice)
    assert add(alice_client, "iPhone").status_code == 200
    token = form_token(alice_client)
    assert add(alice_client, "iPad").status_code == 200

    page = alice_client.get(reverse(PANEL)).content.decode()
    assert (
        lv(
            "A mailbox may have at most %(cap)s password. Revoke one you no longer use to add "
            "another.",
            "A mailbox may have at most %(cap)s passwords. Revoke one you no longer use to add "
            "another.",
            3,
        )
        % {"cap": 3}
        in page
    )
    csrf = alice_client.cookies["csrftoken"].value
    over = alice_client.post(
        reverse(ADD),
        {"label": "Desktop", "protocols": ALL, "once": token, "csrfmiddlewaretoken": csrf},
    )

    assert over.status_code == 409
    assert (
        lv(
            "You already have %(cap)d mail-program password, the most a mailbox may have. "
            "Revoke one you no longer use, then add the new one.",
            "You already have %(cap)d mail-program passwords, the most a mailbox may have. "
            "Revoke one you no longer use, then add the new one.",
            3,
        )
        % {"cap": 3}
        in over.content.decode()
    )
    assert shown_password(over) is None
    assert len(live(alice)) == 3


@pytest.mark.django_db
def test_reloading_the_page_that_showed_a_password_makes_no_second_one(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    data = {"label": "iPhone", "protocols": ALL, "once": form_token(alice_client)}
    data["csrfmiddlewaretoken"] = alice_client.cookies["csrftoken"].value

    first = alice_client.post(reverse(ADD), data)
    reload = alice_client.post(reverse(ADD), data)

    assert shown_password(first)
    assert reload.status_code == 409 and shown_password(reload) is None
    assert len(live(alice)) == 2


@pytest.mark.django_db
def test_adding_a_password_asks_for_the_web_password_again_outside_sudo_mode(
    alice: Mailbox,
) -> None:
    switch_on(alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = add(client, "iPhone")

    assert response.status_code == 200
    assert shown_password(response) is None
    assert 'name="sudo-password"' in response.content.decode()
    assert len(live(alice)) == 1

    confirm = {
        "label": "iPhone",
        "protocols": ALL,
        "once": re.search(r'name="once" value="([^"]+)"', response.content.decode())[1],  # type: ignore[index]
        "sudo-confirm": "1",
        "sudo-password": "alice-web-password-1",
        "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
    }
    confirmed = client.post(reverse(ADD), confirm)

    assert shown_password(confirmed)
    assert len(live(alice)) == 2


@pytest.mark.django_db
def test_adding_is_post_only_and_needs_the_csrf_token(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)

    assert alice_client.get(reverse(ADD)).status_code == 405
    forged = alice_client.post(
        reverse(ADD), {"label": "x", "protocols": ALL, "once": form_token(alice_client)}
    )
    assert forged.status_code == 403
    assert len(live(alice)) == 1


def test_creating_passwords_keeps_their_policy_keys_apart(alice: Mailbox) -> None:
    switch_on(alice)
    for number in range(5):
        actions.create_app_password(
            alice, label=f"device {number}", protocols={"imap"}, actor=Actor.user(alice)
        )

    keys = [p.lookup_key[: passwords.POLICY_KEY_HEX] for p in live(alice)]

    assert len(set(keys)) == len(keys) == 6


# --- the list and revoking ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_shows_each_passwords_protocols_and_last_use(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    phone, _text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
    )
    actions.record_use(
        alice.pk, Protocol.IMAP, "192.0.2.9", app_password_id=phone.pk, client="iOS Mail 17.1"
    )

    page = alice_client.get(reverse(PANEL)).content.decode()
    row = re.search(rf'<tr id="app-password-{phone.pk}">(.*?)</tr>', page, re.S)

    assert row is not None
    text = re.sub(r"\s+", " ", row[1])
    assert "iPhone" in text and "IMAP" in text and "POP3" not in text
    assert "IMAP" in text and "192.0.2.9" in text and "iOS Mail 17.1" in text
    assert phone.password_hash not in page and phone.lookup_key not in page


@pytest.mark.django_db
def test_revoking_one_password_leaves_the_others_and_is_audited(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    phone, _text = actions.create_app_password(
        alice, label="iPhone", protocols=set(ALL), actor=Actor.user(alice)
    )

    response = post_from_panel(
        alice_client, reverse("mailaccess:revoke_app_password", args=[phone.pk])
    )

    assert response.status_code == 302
    phone.refresh_from_db()
    assert phone.revoked_at is not None
    assert len(live(alice)) == 1
    event = AuditEvent.objects.filter(mailbox=alice, action=AuditAction.PASSWORD_REVOKED).get()
    assert event.detail == {"app_password": phone.pk, "label": "iPhone"}
    page = alice_client.get(reverse(PANEL)).content.decode()
    assert lv("The password “%(label)s” no longer works; your other passwords still do.") % {
        "label": "iPhone"
    } in page.replace("&quot;", '"')
    assert f'id="app-password-{phone.pk}"' not in page


@pytest.mark.django_db
def test_revoking_another_mailboxs_password_is_not_found(
    alice: Mailbox, bob: Mailbox, alice_client: Client
) -> None:
    switch_on(bob)
    [bobs] = live(bob)

    response = post_from_panel(
        alice_client, reverse("mailaccess:revoke_app_password", args=[bobs.pk])
    )

    assert response.status_code == 404
    assert live(bob) == [bobs]
    assert not AuditEvent.objects.filter(action=AuditAction.PASSWORD_REVOKED).exists()
    assert not actions.revoke_app_password(alice, bobs.pk, actor=Actor.user(alice))


@pytest.mark.django_db
def test_revoking_is_post_only_and_needs_the_csrf_token(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    [first] = live(alice)
    url = reverse("mailaccess:revoke_app_password", args=[first.pk])

    assert alice_client.get(url).status_code == 405
    assert alice_client.post(url).status_code == 403
    assert live(alice) == [first]


@pytest.mark.django_db
def test_revoking_twice_revokes_once(alice: Mailbox, alice_client: Client) -> None:
    switch_on(alice)
    [first] = live(alice)
    url = reverse("mailaccess:revoke_app_password", args=[first.pk])

    post_from_panel(alice_client, url)
    again = post_from_panel(alice_client, url)

    assert again.status_code == 302
    assert AuditEvent.objects.filter(action=AuditAction.PASSWORD_REVOKED).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("end", ["switch_off", "block"])
def test_switching_off_or_a_block_ends_every_devices_password(alice: Mailbox, end: str) -> None:
    switch_on(alice)
    for label in ("iPhone", "Laptop"):
        actions.create_app_password(alice, label=label, protocols=set(ALL), actor=Actor.user(alice))
    assert len(live(alice)) == 3

    if end == "switch_off":
        actions.disable_access(alice, actor=Actor.user(alice))
    else:
        actions.block_access(alice, BlockReason.HOURLY_LIMIT, actor=Actor.system("test"))

    assert live(alice) == []


@pytest.mark.django_db
def test_the_access_cache_hears_of_every_add_and_revoke(alice: Mailbox) -> None:
    switch_on(alice)
    heard: list[int] = []

    def hear(mailbox_ids: Sequence[int]) -> None:
        heard.extend(mailbox_ids)

    actions.access_changed_hooks.append(hear)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("django.db.transaction.on_commit", lambda run, **_: run())
            phone, _text = actions.create_app_password(
                alice, label="iPhone", protocols={"imap"}, actor=Actor.user(alice)
            )
            actions.revoke_app_password(alice, phone.pk, actor=Actor.user(alice))
    finally:
        actions.access_changed_hooks.remove(hear)

    assert heard == [alice.pk, alice.pk]


@pytest.fixture
def support_client(db: None) -> Client:
    member = Mailbox.objects.create_user(
        "support@inbox.lv", "support-web-password-1", is_staff=True
    )
    member.groups.add(Group.objects.get(name="support"))
    return verified_client(member)


def test_support_sees_each_devices_password_but_never_a_hash(
    alice: Mailbox, support_client: Client
) -> None:
    admin_client = support_client
    switch_on(alice)
    phone, _text = actions.create_app_password(
        alice, label="iPhone", protocols={"imap", "smtp"}, actor=Actor.user(alice)
    )

    page = admin_client.get(reverse("admin:accounts_mailbox_change", args=[alice.pk]))
    listing = admin_client.get(reverse("admin:mailaccess_apppassword_changelist"))
    detail = admin_client.get(reverse("admin:mailaccess_apppassword_change", args=[phone.pk]))

    for response in (page, listing, detail):
        assert response.status_code == 200
        text = response.content.decode()
        assert "iPhone" in text
        for password in live(alice):
            assert password.password_hash not in text
            assert password.lookup_key not in text
            assert password.lookup_key[: passwords.POLICY_KEY_HEX + 8] not in text
    assert "IMAP, SMTP" in page.content.decode()
    assert "IMAP, SMTP" in listing.content.decode()


@pytest.mark.django_db
def test_the_apple_profile_is_offered_only_for_a_password_that_may_read_and_send(
    alice: Mailbox, alice_client: Client
) -> None:
    switch_on(alice)
    profile = reverse("mailaccess:apple_profile_with_password")

    both = add(alice_client, "iPhone", ["imap", "smtp"]).content.decode()
    imap_only = add(alice_client, "iPad", ["imap"]).content.decode()

    assert profile in both
    assert profile not in imap_only
