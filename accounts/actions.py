"""Changes to a mailbox's web account. Access changes live in mailaccess.actions."""

from django.db import transaction
from django.utils import timezone

from accounts.models import Mailbox


@transaction.atomic
def change_web_password(mailbox: Mailbox, new_password: str, *, ip: str | None = None) -> None:
    # Imported here: mailaccess depends on accounts, not the other way round at import time.
    from mailaccess import actions as access_actions
    from mailaccess.models import Actor

    mailbox.set_password(new_password)
    mailbox.password_changed_at = timezone.now()
    mailbox.save(update_fields=["password", "password_changed_at"])
    access_actions.record_web_password_change(mailbox, actor=Actor.user(mailbox), ip=ip)
