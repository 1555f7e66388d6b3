from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def content_security_policy_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Send ``settings.CONTENT_SECURITY_POLICY`` unless a view set its own.

    Django 5.2 has no CSP support of its own. The policy forbids inline scripts, so an
    injected ``<script>`` cannot run even if escaping were ever missed somewhere.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        # Django's technical 404/500 pages (DEBUG only) are built from inline styles and
        # scripts; a developer should still be able to read a traceback.
        if settings.DEBUG and response.status_code in (404, 500):
            return response
        if settings.CONTENT_SECURITY_POLICY:
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response

    return middleware
