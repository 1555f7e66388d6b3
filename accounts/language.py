"""The language switcher in the page header."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from accounts.models import Mailbox


@require_POST
def change_language(request: HttpRequest) -> HttpResponse:
    """Django's ``set_language`` (cookie and redirect), and for a signed-in user the stored choice.

    The stored ``Mailbox.language`` is what counts for a signed-in user: the pages follow it
    (accounts.middleware), and so do the notices and the mail servers' messages, which are
    written when no browser is there to ask.
    """
    response = set_language(request)
    language = request.POST.get("language", "")
    user = request.user
    if (
        isinstance(user, Mailbox)
        and language in dict(settings.LANGUAGES)
        and user.language != language
    ):
        user.language = language
        user.save(update_fields=["language"])
    return response
