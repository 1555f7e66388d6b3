from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import Mailbox
from accounts.sudo import require_sudo_mode
from mailaccess import actions, autoconfig, instructions, sending_limits
from mailaccess.forms import AccessSwitchForm
from mailaccess.models import Actor, ExternalAccess, Notice


def _access_of(mailbox: Mailbox) -> ExternalAccess:
    """The mailbox's access row, or an unsaved "off" one: reading never writes."""
    try:
        return ExternalAccess.objects.get(mailbox=mailbox)
    except ExternalAccess.DoesNotExist:
        return ExternalAccess(mailbox=mailbox)


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


@login_required
@require_GET
def settings_index(request: HttpRequest) -> HttpResponse:
    return render(request, "mailaccess/settings_index.html")


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
                        mailbox, actor=actor, ip=_client_ip(request)
                    )
                except actions.AccessError as error:
                    messages.error(request, str(error.message))
                    status = 409
                else:
                    if new_password is None:
                        messages.info(request, _("External access is already on."))
            elif actions.disable_access(mailbox, actor=actor, ip=_client_ip(request)):
                messages.success(
                    request,
                    _("External access is off. The mail-program password no longer works."),
                )
                return redirect("mailaccess:mail_programs")
        else:
            status = 400

    access = _access_of(mailbox)
    context = {
        "access": access,
        "form": AccessSwitchForm(initial={"external_access": access.enabled})
        if status == 200
        else form,
        "new_password": new_password,
        # A one-time download of an Apple profile with this password inside.
        "apple_profile_token": autoconfig.stash_profile_password(mailbox, new_password)
        if new_password
        else None,
        "apple_profile_minutes": autoconfig.profile_password_minutes(),
        "servers": instructions.server_table(mailbox),
        "programs": instructions.PROGRAMS,
        "last_uses": access.last_uses(),
        "notices": Notice.objects.filter(mailbox=mailbox, read_at__isnull=True)[:5],
        "sending": sending_limits.sending_panel(mailbox),
    }
    return render(request, "mailaccess/mail_programs.html", context, status=status)


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
        "steps": program.render_steps(mailbox),
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
