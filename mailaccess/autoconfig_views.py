"""Endpoints mail programs ask for their settings, and the Apple profile downloads.

The discovery endpoints are machine APIs: no sign-in, no session, and they change nothing.
They answer for a domain, never for an address: an unknown address gets its domain's
settings too, so nobody can use them to find out which mailboxes exist.
"""

from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from accounts import sudo
from accounts.models import Mailbox
from mailaccess import autoconfig
from mailaccess.instructions import IMAP_PORT, POP3_PORT, SMTP_SSL_PORT, SMTP_STARTTLS_PORT

XML_CONTENT_TYPE = "text/xml; charset=utf-8"
PORTS = {
    "imap_port": IMAP_PORT,
    "pop3_port": POP3_PORT,
    "smtp_ssl_port": SMTP_SSL_PORT,
    "smtp_starttls_port": SMTP_STARTTLS_PORT,
}


def _portal_url(request: HttpRequest, path: str) -> str:
    """An absolute link into the settings panel.

    PORTAL_URL names the panel's own host; without it, the host that was asked (which may
    be autoconfig.<domain>, served by this same site).
    """
    if settings.PORTAL_URL:
        return settings.PORTAL_URL.rstrip("/") + path
    return request.build_absolute_uri(path)


@require_GET
def thunderbird_config(request: HttpRequest) -> HttpResponse:
    """Thunderbird's clientConfig v1.1, for the domain of ``emailaddress`` or of the host."""
    address = request.GET.get("emailaddress", "")
    if address:
        domain = autoconfig.domain_of_address(address)
    else:
        domain = autoconfig.domain_of_host(request.get_host())
    if domain is None:
        raise Http404("Not a mail domain of this provider.")
    context = {
        "domain": domain,
        "switch_url": _portal_url(request, reverse("mailaccess:mail_programs")),
        "instructions": autoconfig.instructions_in_every_language(),
        **PORTS,
    }
    return render(request, "autoconfig/config-v1.1.xml", context, content_type=XML_CONTENT_TYPE)


def _autodiscover_error(code: int, message: str) -> HttpResponse:
    # The spec answers errors inside a normal 200 response: Outlook reads the code from the
    # body and shows it, where an HTTP error would only make it try the next URL.
    body = render_to_string(
        "autoconfig/autodiscover_error.xml",
        {
            "code": code,
            "message": message,
            "time": timezone.now().strftime("%H:%M:%S.%f"),
            "id": uuid.uuid4().int % 10**10,
        },
    )
    return HttpResponse(body, content_type=XML_CONTENT_TYPE)


@csrf_exempt  # a machine API for Outlook, which has no CSRF token; it changes nothing
@require_http_methods(["GET", "POST"])
def autodiscover_xml(request: HttpRequest) -> HttpResponse:
    """Outlook's POX Autodiscover: IMAP, POP3 and SMTP settings for the address's domain."""
    if request.method != "POST":
        error = autoconfig.invalid_request()
        return _autodiscover_error(error.code, error.message)
    try:
        address = autoconfig.parse_autodiscover_request(request.body)
    except autoconfig.AutodiscoverError as error:
        return _autodiscover_error(error.code, error.message)
    domain = autoconfig.domain_of_address(address)
    if domain is None:
        raise Http404("Not a mail domain of this provider.")
    context = {"domain": domain, "address": address, **PORTS}
    return render(request, "autoconfig/autodiscover.xml", context, content_type=XML_CONTENT_TYPE)


@require_GET
def autodiscover_json(request: HttpRequest, address: str = "") -> HttpResponse:
    """New Outlook asks here first where the Autodiscover v1 (POX) endpoint is.

    We offer no ActiveSync or EWS, so only ``Protocol=AutodiscoverV1`` gets an answer: the
    URL of the POX endpoint above, which then hands out IMAP and SMTP. Anything else gets the
    same error Exchange gives, and Outlook falls back to the POX endpoint on its own.
    """
    address = address or request.GET.get("Email", "")
    if address and autoconfig.domain_of_address(address) is None:
        raise Http404("Not a mail domain of this provider.")
    protocol = request.GET.get("Protocol", "")
    if protocol.lower() != "autodiscoverv1":
        return JsonResponse(
            {
                "ErrorCode": "InvalidProtocol",
                "ErrorMessage": "The given protocol value "
                + json.dumps(protocol[:40])
                + " is invalid. Supported values are 'AutodiscoverV1'",
            },
            status=400,
        )
    return JsonResponse(
        {
            "Protocol": "AutodiscoverV1",
            "Url": request.build_absolute_uri("/autodiscover/autodiscover.xml"),
        }
    )


def _profile_response(mailbox: Mailbox, password: str | None) -> HttpResponse:
    response = HttpResponse(
        autoconfig.apple_profile(mailbox, password), content_type=autoconfig.PROFILE_CONTENT_TYPE
    )
    response["Content-Disposition"] = f'attachment; filename="{mailbox.domain}.mobileconfig"'
    return response


@login_required
@require_GET
def apple_profile(request: HttpRequest) -> HttpResponse:
    """A profile without a password, any time: the device asks for the password."""
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    return _profile_response(mailbox, None)


@never_cache
@login_required
@require_GET
def apple_profile_with_password(request: HttpRequest) -> HttpResponse:
    """The profile with the password just created, once, within a few minutes of it.

    The link names the stash (``mailaccess.autoconfig``), nothing of the secret. The download
    hands out a working password, so it needs sudo mode; but when sudo mode is over, the
    link is refused and the stash ended rather than kept for after the confirmation page:
    the device can take the profile without a password instead.
    """
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    stash_id = request.GET.get("download", "")
    password = None
    if sudo.is_active(request):
        password = autoconfig.claim_profile_password(request.session, mailbox, stash_id)
    else:
        autoconfig.end_profile_stash(request.session, stash_id)
    if password is None:
        context = {"minutes": settings.APPLE_PROFILE_PASSWORD_MINUTES}
        return render(request, "autoconfig/profile_gone.html", context, status=410)
    return _profile_response(mailbox, password)
