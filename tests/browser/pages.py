"""Every page of the site, for test_every_page.py: add yours here when you add a page.

Each entry says where the page is and the heading a Latvian visitor sees on it; the test
opens it at every width, with and without JavaScript, and runs the shared checks.
"""

from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

from mailaccess.instructions import PROGRAMS


@dataclass(frozen=True)
class SitePage:
    name: str
    url_name: str
    heading: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    signed_in: bool = True

    @property
    def path(self) -> str:
        return reverse(self.url_name, kwargs=self.kwargs)


PAGES: list[SitePage] = [
    SitePage("sign-in", "accounts:login", "Pieteikties pastkastītē", signed_in=False),
    SitePage("settings", "mailaccess:settings", "Iestatījumi"),
    SitePage(
        "mail-programs",
        "mailaccess:mail_programs",
        "Pasta programmas: POP3\\IMAP un SMTP pieeja",
    ),
    *(
        SitePage(
            f"program-{program.slug}",
            "mailaccess:program",
            program.name,
            kwargs={"slug": program.slug},
        )
        for program in PROGRAMS
    ),
    SitePage("change-password", "accounts:change_password", "Mainīt web paroli"),
]
