"""The panel "Pasta programmas: POP3\\IMAP un SMTP pieeja" and its switch."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Mailbox
from audit.models import Actor, AuditAction, AuditEvent
from mailaccess import actions, passwords
from mailaccess.models import AppPassword, BlockReason, ExternalAccess
from tests.conftest import ALICE_PASSWORD, csrf_post

URL = reverse("mailaccess:mail_programs")
PASSWORD_RE = re.compile(r'<output id="new-password"[^>]*>([a-z2-9-]+)</output>')


def switch_on(client: Client) -> str:
    response = csrf_post(client, URL, {"external_access": "on"})
    assert response.status_code == 200
    match = PASSWORD_RE.search(response.content.decode())
    assert match, "the new password is shown"
    return match.group(1)


def live_hashes(mailbox: Mailbox) -> list[str]:
    return list(
        AppPassword.objects.live().filter(mailbox=mailbox).values_list("password_hash", flat=True)
    )


def verifies(password: str, mailbox: Mailbox) -> bool:
    return any(passwords.verify(password, stored) for stored in live_hashes(mailbox))


def test_access_is_off_for_a_new_mailbox(alice_client: Client, alice: Mailbox) -> None:
    response = alice_client.get(URL)
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="external_access"' in page
    assert 'id="id_external_access" checked' not in page
    assert not ExternalAccess.objects.filter(mailbox=alice, enabled=True).exists()


def test_the_latvian_page_shows_the_latvian_switch_label(alice_client: Client) -> None:
    page = alice_client.get(URL).content.decode()
    assert "Atļaut ārējo POP3\\IMAP un SMTP pieeju" in page
    assert "Pasta programmas: POP3\\IMAP un SMTP pieeja" in page


def test_english_user_sees_english(bob_client: Client) -> None:
    page = bob_client.get(URL).content.decode()
    assert "Allow external POP3\\IMAP and SMTP access" in page


def test_switching_on_shows_the_password_once(alice_client: Client, alice: Mailbox) -> None:
    response = csrf_post(alice_client, URL, {"external_access": "on"})
    password = PASSWORD_RE.search(response.content.decode()).group(1)  # type: ignore[union-attr]
    assert "no-store" in response["Cache-Control"]
    assert password not in response.get("Location", "")
    assert verifies(password, alice)

    reload = alice_client.get(URL)
    assert password not in reload.content.decode()
    assert "new-password" not in reload.content.decode()
    assert "no-store" in reload["Cache-Control"]
    # Nothing of the secret in the session either.
    assert password not in str(dict(alice_client.session))


def test_resubmitting_switch_on_creates_no_second_password(
    alice_client: Client, alice: Mailbox
) -> None:
    switch_on(alice_client)
    again = csrf_post(alice_client, URL, {"external_access": "on"})
    assert again.status_code == 200
    assert not PASSWORD_RE.search(again.content.decode())
    assert AppPassword.objects.filter(mailbox=alice).count() == 1


def test_switching_off_ends_the_password(alice_client: Client, alice: Mailbox) -> None:
    password = switch_on(alice_client)
    response = csrf_post(alice_client, URL, {})
    assert response.status_code == 302
    assert not verifies(password, alice)
    assert not ExternalAccess.objects.get(mailbox=alice).enabled


def test_switching_on_again_gives_a_new_password_and_the_old_one_fails(
    alice_client: Client, alice: Mailbox
) -> None:
    first = switch_on(alice_client)
    csrf_post(alice_client, URL, {})
    second = switch_on(alice_client)
    assert first != second
    assert verifies(second, alice)
    assert not verifies(first, alice)


def test_the_web_password_is_never_a_mail_program_password(
    alice_client: Client, alice: Mailbox
) -> None:
    switch_on(alice_client)
    assert not verifies(ALICE_PASSWORD, alice)


def test_every_change_writes_an_audit_row_naming_the_user(
    alice_client: Client, alice: Mailbox
) -> None:
    switch_on(alice_client)
    csrf_post(alice_client, URL, {})
    events = list(AuditEvent.objects.filter(mailbox=alice).order_by("id"))
    assert [e.action for e in events] == [
        AuditAction.ACCESS_ENABLED,
        AuditAction.PASSWORD_CREATED,
        AuditAction.ACCESS_DISABLED,
    ]
    assert all(e.actor == alice and e.actor_kind == "user" for e in events)


def test_audit_rows_cannot_be_changed(alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    event = AuditEvent.objects.filter(mailbox=alice).first()
    assert event is not None
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(mailbox=alice).update(action="x")


def test_post_without_csrf_token_is_refused(alice_client: Client, alice: Mailbox) -> None:
    response = alice_client.post(URL, {"external_access": "on"})
    assert response.status_code == 403
    assert not AppPassword.objects.filter(mailbox=alice).exists()


def test_get_changes_nothing(alice_client: Client, alice: Mailbox) -> None:
    alice_client.get(URL, {"external_access": "on"})
    assert not AppPassword.objects.filter(mailbox=alice).exists()


def test_other_methods_are_not_allowed(alice: Mailbox) -> None:
    client = Client()  # CSRF aside: the method alone is refused.
    client.force_login(alice)
    assert client.put(URL).status_code == 405
    assert client.delete(URL).status_code == 405


def test_malformed_value_gets_a_clear_error_and_changes_nothing(
    alice_client: Client, alice: Mailbox
) -> None:
    response = csrf_post(alice_client, URL, {"external_access": "yes please"})
    assert response.status_code == 400
    assert "Veidlapa netika saprasta" in response.content.decode()
    assert not AppPassword.objects.filter(mailbox=alice).exists()


def test_one_user_cannot_touch_another_users_access(
    alice_client: Client, alice: Mailbox, bob: Mailbox
) -> None:
    actions.enable_access(bob, actor=Actor.user(bob))
    csrf_post(alice_client, URL, {})
    assert ExternalAccess.objects.get(mailbox=bob).enabled


def test_signed_out_visitor_is_sent_to_sign_in(db: None) -> None:
    response = Client().get(URL)
    assert response.status_code == 302
    assert reverse("accounts:login") in response["Location"]


def test_the_panel_explains_an_automatic_block(alice_client: Client, alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    actions.block_access(alice, BlockReason.IDLE, actor=Actor.system("test"))
    page = alice_client.get(URL).content.decode()
    assert "Pieeja tika automātiski izslēgta" in page
    assert "Divus mēnešus neviena pasta programma" in page


def test_compromised_mailbox_must_change_web_password_before_switching_on(
    alice_client: Client, alice: Mailbox
) -> None:
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    response = csrf_post(alice_client, URL, {"external_access": "on"})
    assert response.status_code == 409
    assert not PASSWORD_RE.search(response.content.decode())
    new_web_password = "a-brand-new-web-password-9"
    changed = csrf_post(
        alice_client,
        reverse("accounts:change_password"),
        {
            "old_password": ALICE_PASSWORD,
            "new_password1": new_web_password,
            "new_password2": new_web_password,
        },
    )
    assert changed.status_code == 302
    switch_on(alice_client)


def test_the_panel_shows_last_use_per_protocol(alice_client: Client, alice: Mailbox) -> None:
    actions.enable_access(alice, actor=Actor.user(alice))
    from mailaccess.models import Protocol

    actions.record_use(alice.pk, Protocol.IMAP, "192.0.2.7")
    page = alice_client.get(URL).content.decode()
    assert "IMAP" in page and "192.0.2.7" in page


def test_a_use_without_an_address_never_shows_none(alice_client: Client, alice: Mailbox) -> None:
    """A use recorded before the auth policy left address-less logins out (`doveadm auth
    test`), or a protocol's last IP emptied: the panel says the address is unknown."""
    actions.enable_access(alice, actor=Actor.user(alice))
    from mailaccess.models import Protocol

    password = AppPassword.objects.filter(mailbox=alice).get()
    actions.record_use(alice.pk, Protocol.IMAP, None, app_password_id=password.pk)
    page = alice_client.get(URL).content.decode()
    assert "None" not in page
    assert "IMAP no nezināmas adreses:" in page  # the protocol's last use
    assert ", IMAP no nezināmas adreses</td>" in page  # the password's row
