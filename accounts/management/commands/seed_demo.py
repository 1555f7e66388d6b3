from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Mailbox, Plan

# Demo data for `make run` only: fixed passwords are printed for the person trying it out.
DEMO_MAILBOXES = [
    ("12345@inbox.lv", "demo-parole-12345", Plan.FREE, "lv", False),
    ("67890@mail.ee", "demo-parole-67890", Plan.PLUS, "en", False),
    ("atbalsts@inbox.lv", "demo-atbalsts-1", Plan.PLUS, "lv", True),
]


class Command(BaseCommand):
    help = "Create demo mailboxes on two domains (idempotent) and print their logins."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("Demo mailboxes are for development only (DEBUG is off).")
        self.stdout.write("Demo mailboxes (web login):")
        for address, password, plan, language, staff in DEMO_MAILBOXES:
            mailbox = Mailbox.objects.filter(address=address).first()
            if mailbox is None:
                mailbox = Mailbox.objects.create_user(
                    address, password, plan=plan, language=language
                )
                if staff:
                    mailbox.is_staff = mailbox.is_superuser = True
                    mailbox.save(update_fields=["is_staff", "is_superuser"])
            # The admin asks every staff member for a second step: the demo's sets up an
            # authenticator app on its first visit, like a real support account.
            role = (
                "support staff, /admin/ (sets up two-factor sign-in on the first visit)"
                if staff
                else str(Plan(plan).label)
            )
            self.stdout.write(f"  {address:<22} {password:<20} ({role})")
