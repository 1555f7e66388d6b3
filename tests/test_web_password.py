"""Changing the web password: other sessions end, this one stays, "compromised" is cured."""

from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from accounts import throttling
from accounts.models import Mailbox
from audit.models import Actor
from mailaccess import actions
from mailaccess.models import BlockReason, ExternalAccess
from tests.conftest import ALICE_PASSWORD, csrf_post, signed_in_client

URL = reverse("accounts:change_password")
NEW = "a-brand-new-web-password-9"
SETTINGS = reverse("mailaccess:settings")


def change(client: Client):  # type: ignore[no-untyped-def]
    return csrf_post(
        client, URL, {"old_password": ALICE_PASSWORD, "new_password1": NEW, "new_password2": NEW}
    )


def test_changing_the_web_password_ends_other_sessions_but_keeps_this_one(alice: Mailbox) -> None:
    here, laptop, phone = (signed_in_client(alice) for _ in range(3))
    assert laptop.get(SETTINGS).status_code == 200
    assert change(here).status_code == 302
    assert here.get(SETTINGS).status_code == 200
    for other in (laptop, phone):
        response = other.get(SETTINGS)
        assert response.status_code == 302
        assert reverse("accounts:login") in response["Location"]


def test_a_new_web_password_clears_the_compromised_requirement(
    alice_client: Client, alice: Mailbox
) -> None:
    actions.block_access(alice, BlockReason.COMPROMISED, actor=Actor.system("test"))
    change(alice_client)
    assert not ExternalAccess.objects.get(mailbox=alice).requires_password_change


def test_a_new_web_password_forgets_failed_sign_ins(alice_client: Client, alice: Mailbox) -> None:
    for _ in range(3):
        throttling.attempt(alice.address, "192.0.2.1", device=None)
    change(alice_client)
    assert cache.get(throttling._mailbox_key(alice.address)) is None
