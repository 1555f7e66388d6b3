from typing import Any

from django.core.management.base import BaseCommand

from mailaccess import passdb


class Command(BaseCommand):
    help = (
        "Copy the translated server messages (block reasons, access off) into the table the "
        "Dovecot passdb view reads. Runs by itself after every migrate; run it after changing "
        "only the translations."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        written = passdb.sync()
        self.stdout.write(f"{written} server messages written.")
