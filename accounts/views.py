import time

import django_otp
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import actions, sudo, throttling, two_factor
from accounts.forms import (
    CodeForm,
    SetupCodeForm,
    SignInForm,
    WebPasswordChangeForm,
    throttled_error,
)
from accounts.models import Mailbox, RecoveryCode
from accounts.throttling import client_ip
from audit.models import AuditEvent

# Between the password and the code the session holds only who is signing in (and since
# when): the visitor is not signed in until the code is right.
PENDING_KEY = "sign_in_pending"
RECENT_EVENTS = 20


def _safe_next(request: HttpRequest, next_url: str) -> str:
    """Where to go after signing in or confirming: a path on this site, or "" for the panel.

    Only a path. ``redirect()`` would take anything else for a URL name and reverse it: a
    ``next`` of "x" answered 500 after a right password, and the sign-in was lost. Another
    host, a scheme ("javascript:") or a protocol-relative "//host" fail Django's own check.
    """
    if next_url.startswith("/") and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return next_url
    return ""


def _go_next(next_url: str) -> HttpResponse:
    # Never redirect(next_url): a checked path is used as it is, not looked up as a URL name.
    return HttpResponseRedirect(next_url) if next_url else redirect("mailaccess:settings")


def _complete_sign_in(
    request: HttpRequest, mailbox: Mailbox, next_url: str, device: TOTPDevice | None = None
) -> HttpResponse:
    request.session.pop(PENDING_KEY, None)
    backend = getattr(mailbox, "backend", None) or settings.AUTHENTICATION_BACKENDS[0]
    login(request, mailbox, backend=backend)
    if device is not None:
        # The session has passed the second step (what the admin asks for): with the app's
        # code, or with a recovery code, which stands in for the same authenticator.
        django_otp.login(request, device)
    # Having just given the password (and code), the owner needs no second proof at once.
    sudo.start(request)
    throttling.signed_in(
        throttling.known_device(request, mailbox.address, mailbox), mailbox.address
    )
    actions.record_sign_in(mailbox, ip=client_ip(request))
    response = _go_next(next_url)
    throttling.remember_device(response, mailbox)
    return response


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest, default_next: str = "") -> HttpResponse:
    next_url = (
        _safe_next(request, request.POST.get("next") or request.GET.get("next") or "")
        or default_next
    )
    form = SignInForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        mailbox = form.mailbox
        assert mailbox is not None
        if two_factor.is_enabled(mailbox):
            request.session[PENDING_KEY] = {
                "mailbox": mailbox.pk,
                # A new web password in the meantime voids the half-finished sign-in.
                "hash": mailbox.get_session_auth_hash(),
                "at": int(time.time()),
                "next": next_url,
            }
            return redirect("accounts:sign_in_code")
        return _complete_sign_in(request, mailbox, next_url)
    status = 429 if form.has_error("__all__", "throttled") else 200
    return render(request, "accounts/sign_in.html", {"form": form, "next": next_url}, status=status)


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def admin_sign_in(request: HttpRequest) -> HttpResponse:
    """``/admin/login/``: the admin has no sign-in of its own, only this site's.

    A form posted here (the stock admin's, a script's) goes through the same throttled sign-in
    and second step as the panel's; a visit is sent on to the sign-in page, keeping a safe
    ``next``. Staff without an authenticator are sent to set one up: the admin opens only to
    a session that passed the second step.
    """
    admin_index = reverse("admin:index")
    next_url = _safe_next(request, request.GET.get("next") or "") or admin_index
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        if two_factor.session_verified(request):
            return HttpResponseRedirect(next_url)
        assert isinstance(user, Mailbox)
        if not two_factor.is_enabled(user):
            messages.info(
                request,
                _("The admin needs two-factor sign-in. Set it up here, then open the admin again."),
            )
            return redirect("accounts:security")
    if request.method == "POST":
        return sign_in(request, default_next=admin_index)
    return HttpResponseRedirect(f"{reverse('accounts:login')}?{urlencode({'next': next_url})}")


def _pending_mailbox(request: HttpRequest) -> tuple[Mailbox, str] | None:
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict):
        return None
    if time.time() - pending.get("at", 0) > settings.SIGN_IN_CODE_SECONDS:
        return None
    mailbox_id = pending.get("mailbox")
    if not isinstance(mailbox_id, int):
        return None
    mailbox = Mailbox.objects.filter(pk=mailbox_id, is_active=True).first()
    if mailbox is None or not constant_time_compare(
        pending.get("hash", ""), mailbox.get_session_auth_hash()
    ):
        return None
    # Checked again: a session written before this rule may hold an unchecked value.
    return mailbox, _safe_next(request, str(pending.get("next", "")))


@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def sign_in_code(request: HttpRequest) -> HttpResponse:
    """The second sign-in step, for mailboxes with two-factor sign-in."""
    pending = _pending_mailbox(request)
    if pending is None:
        request.session.pop(PENDING_KEY, None)
        messages.error(request, _("The sign-in has expired. Please sign in again."))
        return redirect("accounts:login")
    mailbox, next_url = pending
    form = CodeForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        ip = client_ip(request)
        attempt = throttling.attempt(
            mailbox.address, ip, throttling.known_device(request, mailbox.address, mailbox)
        )
        if attempt.refused:
            form.add_error(None, throttled_error())
            status = 429
        else:
            accepted = actions.check_code(mailbox, form.cleaned_data["code"], ip=ip)
            if accepted:
                attempt.succeeded()
                device = (
                    accepted
                    if isinstance(accepted, TOTPDevice)
                    else two_factor.confirmed_device(mailbox)
                )
                return _complete_sign_in(request, mailbox, next_url, device)
            form.add_error("code", _("The code is wrong or has already been used."))
    return render(request, "accounts/sign_in_code.html", {"form": form}, status=status)


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("accounts:login")


@sensitive_post_parameters()
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def change_password(request: HttpRequest) -> HttpResponse:
    assert isinstance(request.user, Mailbox)
    form = WebPasswordChangeForm(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        actions.change_web_password(
            request.user, form.cleaned_data["new_password1"], ip=client_ip(request)
        )
        # Every other session of this mailbox ends: Django checks each session against a
        # hash of the password on its next request. This one gets the new hash and stays.
        update_session_auth_hash(request, request.user)
        throttling.clear_mailbox(request.user.address)
        messages.success(request, _("Your web password has been changed."))
        response = redirect("mailaccess:mail_programs")
        # The new password voids every device cookie of the mailbox but this browser's.
        throttling.remember_device(response, request.user)
        return response
    return render(request, "accounts/change_password.html", {"form": form})


def _security_page(
    request: HttpRequest, mailbox: Mailbox, disable_form: CodeForm | None = None, status: int = 200
) -> HttpResponse:
    context = {
        "two_factor_on": two_factor.is_enabled(mailbox),
        "recovery_codes_left": RecoveryCode.objects.unused().filter(mailbox=mailbox).count(),
        "disable_form": disable_form or CodeForm(),
        "events": AuditEvent.objects.security_events(mailbox)[:RECENT_EVENTS],
    }
    return render(request, "accounts/security.html", context, status=status)


@never_cache
@login_required
@require_http_methods(["GET"])
def security(request: HttpRequest) -> HttpResponse:
    """Two-factor sign-in and the recent security events of the mailbox."""
    assert isinstance(request.user, Mailbox)
    return _security_page(request, request.user)


@login_required
@require_POST
@sudo.require_sudo_mode(cancel="accounts:security")
def two_factor_start(request: HttpRequest) -> HttpResponse:
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    if not two_factor.is_enabled(mailbox):
        two_factor.start_setup(mailbox)
    return redirect("accounts:two_factor_setup")


@sensitive_post_parameters("code")
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    """The QR code and key of the unconfirmed device, and the code that confirms it.

    The recovery codes are the answer to the confirming POST itself, like a new mail-program
    password: they are in no URL, no session and no later page.
    """
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    if two_factor.is_enabled(mailbox):
        messages.info(request, _("Two-factor sign-in is already on."))
        return redirect("accounts:security")
    device = two_factor.pending_device(mailbox)
    if device is None:
        return redirect("accounts:security")
    form = SetupCodeForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        codes = actions.confirm_two_factor(
            mailbox, form.cleaned_data["code"], ip=client_ip(request)
        )
        if codes is not None:
            device.refresh_from_db()
            django_otp.login(request, device)
            sudo.start(request)
            return render(request, "accounts/recovery_codes.html", {"codes": codes, "new": True})
        form.add_error("code", _("The code is wrong. Check the time on your phone and try again."))
        status = 400
    context = {
        "form": form,
        "qr_code": two_factor.qr_code_svg(device),
        "manual_key": two_factor.manual_key(device),
    }
    return render(request, "accounts/two_factor_setup.html", context, status=status)


@sensitive_post_parameters("code")
@never_cache
@login_required
@require_POST
def two_factor_disable(request: HttpRequest) -> HttpResponse:
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    form = CodeForm(request.POST)
    if not form.is_valid():
        return _security_page(request, mailbox, form, status=400)
    ip = client_ip(request)
    attempt = throttling.attempt(
        mailbox.address, ip, throttling.known_device(request, mailbox.address, mailbox)
    )
    if attempt.refused:
        form.add_error(None, throttled_error())
        return _security_page(request, mailbox, form, status=429)
    if not actions.disable_two_factor(mailbox, form.cleaned_data["code"], ip=ip):
        form.add_error("code", _("The code is wrong or has already been used."))
        return _security_page(request, mailbox, form, status=400)
    attempt.succeeded()
    messages.success(request, _("Two-factor sign-in is off."))
    return redirect("accounts:security")


@never_cache
@login_required
@require_POST
@sudo.require_sudo_mode(cancel="accounts:security")
def recovery_codes(request: HttpRequest) -> HttpResponse:
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    if not two_factor.is_enabled(mailbox):
        return redirect("accounts:security")
    codes = actions.renew_recovery_codes(mailbox, ip=client_ip(request))
    return render(request, "accounts/recovery_codes.html", {"codes": codes, "new": False})


@sensitive_post_parameters()
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def sudo_confirm(request: HttpRequest) -> HttpResponse:
    """Proof for sudo mode asked by a GET page; afterwards back to that page."""
    next_url = _safe_next(request, request.GET.get("next") or "")
    if request.method == "POST":
        ok, form, status = sudo.check_proof(request)
        if ok:
            return _go_next(next_url)
        return sudo.challenge(request, form, status, action=request.get_full_path())
    if sudo.is_active(request):
        return _go_next(next_url)
    return sudo.challenge(request, action=request.get_full_path())
