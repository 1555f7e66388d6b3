from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import translation


def user_language_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Speak a signed-in user's stored language, whatever the browser asks for.

    Runs after LocaleMiddleware (which handles visitors who are not signed in).
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            translation.activate(user.language)
            request.LANGUAGE_CODE = translation.get_language()
        return get_response(request)

    return middleware
