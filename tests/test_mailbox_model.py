import pytest
from django.core.exceptions import ValidationError

from accounts.models import Mailbox


def test_the_address_must_be_on_a_configured_mail_domain(db: None) -> None:
    with pytest.raises(ValidationError):
        Mailbox.objects.create_user("someone@gmail.com", "x")


def test_address_is_stored_lower_case(db: None) -> None:
    assert Mailbox.objects.create_user("Foo@INBOX.lv", "x").address == "foo@inbox.lv"


def test_each_domain_names_its_server_host(db: None) -> None:
    assert Mailbox(address="a@inbox.lv").mail_host == "mail.inbox.lv"
    assert Mailbox(address="a@mail.ee").mail_host == "mail.ee"
