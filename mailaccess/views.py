import hmac
import secrets

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import Mailbox
from accounts.sudo import require_sudo_mode
from accounts.throttling import client_ip
from audit.models import Actor
from mailaccess import actions, activity, autoconfig, instructions, sending_limits
from mailaccess.forms import AccessSwitchForm, DevicePasswordForm
from mailaccess.models import AppPassword, ExternalAccess, Notice, NoticeKind


def _access_of(mailbox: Mailbox) -> ExternalAccess:
    """The mailbox's access row, or an unsaved "off" one: reading never writes."""
    try:
        return ExternalAccess.objects.get(mailbox=mailbox)
    except ExternalAccess.DoesNotExist:
        return ExternalAccess(mailbox=mailbox)


@login_required
@require_GET
def settings_index(request: HttpRequest) -> HttpResponse:
    return render(request, "mailaccess/settings_index.html")


# "Add a password" answers its POST with the secret, so reloading that page would post again
# and make a second password. Each rendered form carries a one-time token kept in the session;
# a reload brings back a spent one. A few are kept, so two open tabs both work.
FORM_TOKENS_SESSION_KEY = "device_password_form_tokens"
FORM_TOKENS_KEPT = 5


def _issue_form_token(request: HttpRequest) -> str:
    token = secrets.token_urlsafe(16)
    tokens = [*request.session.get(FORM_TOKENS_SESSION_KEY, [])][-(FORM_TOKENS_KEPT - 1) :]
    request.session[FORM_TOKENS_SESSION_KEY] = [*tokens, token]
    return token


def _spend_form_token(request: HttpRequest, token: str) -> bool:
    tokens = list(request.session.get(FORM_TOKENS_SESSION_KEY, []))
    for kept in tokens:
        if token and hmac.compare_digest(kept, token):
            tokens.remove(kept)
            request.session[FORM_TOKENS_SESSION_KEY] = tokens
            return True
    return False


def _switching_access_on(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("external_access") == "on"


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
@require_sudo_mode(when=_switching_access_on, cancel="mailaccess:mail_programs")
def mail_programs(request: HttpRequest) -> HttpResponse:
    """The panel "Pasta pārsūtīšana, e-pasta programmas, SMS paziņojumi".

    Switching on answers the POST itself with the new password: never a redirect, so the
    secret is in no URL and no session, and the response is never stored (no-store). A
    reload re-posts "on", finds access already on and shows no password.
    """
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    new_password: str | None = None
    form = AccessSwitchForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            actor = Actor.user(mailbox)
            if form.cleaned_data["external_access"]:
                try:
                    new_password = actions.enable_access(
                        mailbox, actor=actor, ip=client_ip(request)
                    )
                except actions.AccessError as error:
                    messages.error(request, str(error.message))
                    status = 409
                else:
                    if new_password is None:
                        messages.info(request, _("External access is already on."))
            else:
                live = list(
                    AppPassword.objects.live()
                    .filter(mailbox=mailbox)
                    .only("label", "allow_imap", "allow_pop3", "allow_smtp")
                    .order_by("created_at", "pk")
                )
                if live and request.POST.get("ask_first"):
                    return _confirm_switch_off(request, live)
                if actions.disable_access(mailbox, actor=actor, ip=client_ip(request)):
                    messages.success(request, _switched_off_message(len(live)))
                    return redirect("mailaccess:mail_programs")
        else:
            status = 400

    return _panel(
        request,
        mailbox,
        form=None if status == 200 else form,
        new_password=new_password,
        status=status,
    )


def _confirm_switch_off(request: HttpRequest, live: list[AppPassword]) -> HttpResponse:
    """Say which passwords stop before they stop: this POST only renders, the page's own
    form (posted without ``ask_first``) switches off. Works without JavaScript."""
    return render(
        request, "mailaccess/confirm_switch_off.html", {"app_passwords": live, "count": len(live)}
    )


def _switched_off_message(count: int) -> str:
    if not count:
        return _("External access is off.")
    return ngettext(
        "External access is off. %(count)d mail-program password no longer works.",
        "External access is off. %(count)d mail-program passwords no longer work.",
        count,
    ) % {"count": count}


def _panel(
    request: HttpRequest,
    mailbox: Mailbox,
    *,
    form: AccessSwitchForm | None = None,
    device_form: DevicePasswordForm | None = None,
    new_password: str | None = None,
    new_app_password: AppPassword | None = None,
    status: int = 200,
) -> HttpResponse:
    """The panel page, with a password to show once when one was just made."""
    access = _access_of(mailbox)
    context = {
        "access": access,
        "form": form or AccessSwitchForm(initial={"external_access": access.enabled}),
        "new_password": new_password,
        "new_app_password": new_app_password,
        # A one-time download of an Apple profile with this password inside: the profile sets
        # up IMAP and SMTP, so only for a password allowed both.
        "apple_profile_download": autoconfig.stash_profile_password(
            request.session, mailbox, new_password
        )
        if new_password
        and (
            new_app_password is None
            or (new_app_password.allow_imap and new_app_password.allow_smtp)
        )
        else None,
        "apple_profile_minutes": autoconfig.profile_password_minutes(),
        "servers": instructions.server_table(mailbox),
        "programs": instructions.PROGRAMS,
        "last_uses": access.last_uses(),
        # A block is told once, by the box under the switch, and its notice is settled when
        # access is on again: only the other notices (the expiry warning) are banners.
        "notices": activity.with_links(
            Notice.objects.filter(mailbox=mailbox, read_at__isnull=True)
            .exclude(kind=NoticeKind.BLOCKED)
            .select_related("new_program__app_password")[:5]
        ),
        "activity": activity.history(mailbox.pk),
        "activity_days": activity.HISTORY_DAYS,
        # Never the hashes: what is not loaded cannot be rendered.
        "app_passwords": list(
            AppPassword.objects.live()
            .filter(mailbox=mailbox)
            .defer("password_hash", "lookup_key")
            .order_by("created_at", "pk")
        )
        if access.enabled
        else [],
        "device_form": device_form or DevicePasswordForm(),
        "device_form_once": _issue_form_token(request),
        "app_password_cap": settings.APP_PASSWORDS_PER_MAILBOX,
        "sending": sending_limits.sending_panel(mailbox),
    }
    return render(request, "mailaccess/mail_programs.html", context, status=status)


@never_cache
@login_required
@require_POST
@require_sudo_mode(cancel="mailaccess:mail_programs")
def add_app_password(request: HttpRequest) -> HttpResponse:
    """ "Add a password for another device": answered like switching on, with the password in
    this very response (no redirect, no session, no-store), shown once."""
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    form = DevicePasswordForm(request.POST)
    if not form.is_valid():
        return _panel(request, mailbox, device_form=form, status=400)
    if not _spend_form_token(request, request.POST.get("once", "")):
        messages.info(
            request,
            _("This form was already sent: its password is in the list. Nothing new was made."),
        )
        return _panel(request, mailbox, status=409)
    try:
        app_password, text = actions.create_app_password(
            mailbox,
            label=form.cleaned_data["label"],
            protocols=set(form.cleaned_data["protocols"]),
            networks=form.cleaned_data["networks"],
            actor=Actor.user(mailbox),
            ip=client_ip(request),
        )
    except actions.AccessError as error:
        form.add_error(None, str(error.message))
        return _panel(request, mailbox, device_form=form, status=409)
    return _panel(
        request,
        mailbox,
        new_password=text,
        new_app_password=app_password,
    )


@login_required
@require_POST
def revoke_app_password(request: HttpRequest, pk: int) -> HttpResponse:
    """End one device's password. Another mailbox's password is not found (404)."""
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    app_password = get_object_or_404(
        AppPassword.objects.only("pk", "label", "revoked_at"), pk=pk, mailbox=mailbox
    )
    if actions.revoke_app_password(
        mailbox, app_password.pk, actor=Actor.user(mailbox), ip=client_ip(request)
    ):
        messages.success(
            request,
            _("The password “%(label)s” no longer works; your other passwords still do.")
            % {"label": app_password.label or _("Mail programs")},
        )
    else:
        messages.info(request, _("That password had already stopped working."))
    return redirect("mailaccess:mail_programs")


@login_required
@require_GET
def program_instructions(request: HttpRequest, slug: str) -> HttpResponse:
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    program = instructions.PROGRAMS_BY_SLUG.get(slug)
    if program is None:
        raise Http404(_("No instructions for this mail program."))
    context = {
        "program": program,
        "steps": program.illustrated_steps(mailbox),
        "servers": instructions.server_table(mailbox),
        "programs": instructions.PROGRAMS,
    }
    return render(request, "mailaccess/program.html", context)


@login_required
@require_POST
def mark_notice_read(request: HttpRequest, notice_id: int) -> HttpResponse:
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    if not actions.mark_notice_read(mailbox, notice_id):
        raise Http404(_("No such notice."))
    return redirect("mailaccess:mail_programs")


_LINK_STATUS = {"invalid": 404, "expired": 410, "used": 410}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
@require_sudo_mode(cancel="mailaccess:mail_programs")
def not_me(request: HttpRequest, token: str) -> HttpResponse:
    """ "This was not me", from the e-mail or the panel's notice: after signing in (and the
    second step, where it is on) and fresh proof, one button ends the password and its
    open sessions; then on to changing the web password. A GET changes nothing: mail
    scanners open links."""
    mailbox = request.user
    assert isinstance(mailbox, Mailbox)
    try:
        alert = activity.alert_of_link(token, mailbox.pk)
    except activity.LinkError as error:
        return render(
            request,
            "mailaccess/not_me.html",
            {"error": error.code},
            status=_LINK_STATUS[error.code],
        )
    if request.method == "POST":
        label = alert.app_password.label or _("Mail programs")
        if actions.end_password_not_me(
            mailbox, alert.pk, actor=Actor.user(mailbox), ip=client_ip(request)
        ):
            messages.success(
                request,
                _(
                    "The password “%(label)s” no longer works, and its open sessions were "
                    "ended. Now change your web password."
                )
                % {"label": label},
            )
        else:
            messages.info(request, _("This link was already used."))
        return redirect("accounts:change_password")
    return render(
        request,
        "mailaccess/not_me.html",
        {"alert": alert, "lines": activity.alert_lines(alert)},
    )
