"""What support staff do to a mailbox's access from the admin, and their dashboard.

Each support action is one entry of ``SUPPORT_ACTIONS``: its permission, the form that asks
for its choice (a block reason, a plan) and the call into ``mailaccess.actions`` that does the
work. The mailbox admin (``accounts/admin.py``) offers every entry twice: as a button on the
mailbox page, with a confirmation page of its own, and as a bulk admin action, with an
intermediate confirmation page. Both post back with the CSRF token and both name the staff
member in the audit row through ``Actor.support``, with the address the request came from
and the justification every support form asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, ngettext_lazy

from accounts.models import Mailbox, Plan
from accounts.throttling import client_ip
from audit.models import (
    JUSTIFICATION_MAX_LENGTH,
    JUSTIFICATION_MIN_LENGTH,
    Actor,
    AuditAction,
    AuditEvent,
)
from mailaccess import actions
from mailaccess.models import BlockReason, ExternalAccess, Notice, NoticeKind

# A bulk action runs one locked transaction per mailbox: "select all 1,000,000" would hold a
# request for hours. Larger sweeps are a job for a Celery task, not a click.
BULK_LIMIT = 1000

DASHBOARD_DAYS = 7
DASHBOARD_MAX_DAYS = 90


class SupportForm(forms.Form):
    """Every support action says why: the audit row keeps it with who, when and from where."""

    justification = forms.CharField(
        label=gettext_lazy("Justification"),
        help_text=gettext_lazy(
            "Why, in a sentence (a ticket number helps). Kept in the mailbox's audit trail "
            "with your name and address."
        ),
        min_length=JUSTIFICATION_MIN_LENGTH,
        max_length=JUSTIFICATION_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={
            "required": gettext_lazy("Say why: support actions are recorded with a reason."),
            "min_length": ngettext_lazy(
                "Say why in at least %(limit_value)d character.",
                "Say why in at least %(limit_value)d characters.",
                "limit_value",
            ),
            "max_length": ngettext_lazy(
                "Keep it to %(limit_value)d character at most.",
                "Keep it to %(limit_value)d characters at most.",
                "limit_value",
            ),
        },
    )


class ConfirmForm(SupportForm):
    """Nothing to choose: the confirmation page is the question (and the reason)."""


class BlockForm(SupportForm):
    # "Compromised" has its own action, which says what it does to the web password.
    reason = forms.ChoiceField(
        label=gettext_lazy("Block reason"),
        choices=[(r.value, r.label) for r in BlockReason if r != BlockReason.COMPROMISED],
        initial=BlockReason.SUPPORT,
    )
    field_order = ["reason", "justification"]


class ChangePlanForm(SupportForm):
    plan = forms.ChoiceField(label=gettext_lazy("New plan"), choices=Plan.choices)
    field_order = ["plan", "justification"]


@dataclass(frozen=True)
class SupportAction:
    slug: str
    title: Promise
    question: Promise
    permission: str
    form_class: type[SupportForm]
    # Does the work for one mailbox; returns False when there was nothing to change.
    run: Callable[[Mailbox, Actor, dict[str, Any], str | None], bool]

    @property
    def codename(self) -> str:
        return self.permission.partition(".")[2]

    def allowed(self, request: HttpRequest) -> bool:
        return request.user.has_perm(self.permission)


def _block(mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None) -> bool:
    notice = actions.block_access(
        mailbox,
        BlockReason(data["reason"]),
        actor=actor,
        ip=ip,
        justification=data["justification"],
    )
    return notice is not None


def _mark_compromised(mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None) -> bool:
    notice = actions.block_access(
        mailbox, BlockReason.COMPROMISED, actor=actor, ip=ip, justification=data["justification"]
    )
    return notice is not None


def _unblock(mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None) -> bool:
    return actions.unblock_access(mailbox, actor=actor, ip=ip, justification=data["justification"])


def _end_passwords(mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None) -> bool:
    return actions.disable_access(mailbox, actor=actor, ip=ip, justification=data["justification"])


def _change_plan(mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None) -> bool:
    return actions.change_plan(
        mailbox, Plan(data["plan"]), actor=actor, ip=ip, justification=data["justification"]
    )


def _lift_sending_limits(
    mailbox: Mailbox, actor: Actor, data: dict[str, Any], ip: str | None
) -> bool:
    return actions.lift_sending_limits(
        mailbox, actor=actor, ip=ip, justification=data["justification"]
    )


SUPPORT_ACTIONS: dict[str, SupportAction] = {
    action.slug: action
    for action in [
        SupportAction(
            "block",
            gettext_lazy("Block access"),
            gettext_lazy(
                "Block external access? Every mail-program password stops working and the "
                "owner gets a notice with the reason."
            ),
            "mailaccess.block_access",
            BlockForm,
            _block,
        ),
        SupportAction(
            "compromised",
            gettext_lazy("Mark as compromised"),
            gettext_lazy(
                "Mark the password as stolen? Access is blocked, every mail-program password "
                "stops working, and access can come back only after the owner changes the web "
                "password."
            ),
            "mailaccess.block_access",
            ConfirmForm,
            _mark_compromised,
        ),
        SupportAction(
            "unblock",
            gettext_lazy("Lift the block"),
            gettext_lazy(
                "Lift the block? Access stays off: the owner switches it on again and gets a "
                "new password."
            ),
            "mailaccess.unblock_access",
            ConfirmForm,
            _unblock,
        ),
        SupportAction(
            "end-passwords",
            gettext_lazy("End all mail-program passwords"),
            gettext_lazy(
                "Switch access off and end every mail-program password? Mail programs stop "
                "working until the owner switches access on again."
            ),
            "mailaccess.disable_access",
            ConfirmForm,
            _end_passwords,
        ),
        SupportAction(
            "change-plan",
            gettext_lazy("Change plan"),
            gettext_lazy(
                "Change the plan? Going back to Inbox Mail applies its sending limits at once. "
                "An upgrade to Inbox Mail+ lifts them at once for a mailbox in good standing, "
                "and within two working days for one blocked for misuse in the last 30 days."
            ),
            "mailaccess.change_plan",
            ChangePlanForm,
            _change_plan,
        ),
        SupportAction(
            "lift-sending-limits",
            gettext_lazy("Lift sending limits now"),
            gettext_lazy(
                "Lift the Inbox Mail sending limits of this Inbox Mail+ mailbox now, before "
                "the date they would be lifted anyway?"
            ),
            "mailaccess.change_plan",
            ConfirmForm,
            _lift_sending_limits,
        ),
    ]
}


def allowed_actions(request: HttpRequest) -> list[SupportAction]:
    return [action for action in SUPPORT_ACTIONS.values() if action.allowed(request)]


def _report(request: HttpRequest, action: SupportAction, changed: int, unchanged: int) -> None:
    if changed:
        messages.success(
            request,
            ngettext(
                "%(action)s: done for %(count)d mailbox.",
                "%(action)s: done for %(count)d mailboxes.",
                changed,
            )
            % {"action": action.title, "count": changed},
        )
    if unchanged:
        messages.info(
            request,
            ngettext(
                "%(action)s: nothing to change for %(count)d mailbox.",
                "%(action)s: nothing to change for %(count)d mailboxes.",
                unchanged,
            )
            % {"action": action.title, "count": unchanged},
        )


def _run(
    request: HttpRequest, action: SupportAction, mailboxes: Iterable[Mailbox], data: dict[str, Any]
) -> None:
    assert isinstance(request.user, Mailbox)
    actor = Actor.support(request.user)
    # The address as the sign-in throttle reads it: REMOTE_ADDR, which behind the HTTPS proxy
    # uvicorn sets from the proxy's header (--proxy-headers), never a header a client chose.
    ip = client_ip(request)
    changed = unchanged = 0
    for mailbox in mailboxes:
        if action.run(mailbox, actor, data, ip):
            changed += 1
        else:
            unchanged += 1
    _report(request, action, changed, unchanged)


def support_action_view(
    request: HttpRequest, model_admin: ModelAdmin[Mailbox], object_id: int, slug: str
) -> HttpResponse:
    """One mailbox: GET asks for confirmation, POST acts and goes back to the mailbox page."""
    action = SUPPORT_ACTIONS.get(slug)
    if action is None:
        raise Http404
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    if not action.allowed(request):
        raise PermissionDenied
    mailbox = get_object_or_404(Mailbox, pk=object_id)
    form = action.form_class(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        _run(request, action, [mailbox], form.cleaned_data)
        return redirect("admin:accounts_mailbox_change", mailbox.pk)
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": action.title,
        "action": action,
        "form": form,
        "mailboxes": [mailbox],
        "original": mailbox,
        "opts": opts,
        "app_label": opts.app_label,
        "cancel_url": reverse("admin:accounts_mailbox_change", args=[mailbox.pk]),
    }
    # A POST that reaches here had a bad choice: nothing changed, the form says why.
    status = 400 if request.method == "POST" else 200
    return TemplateResponse(
        request, "admin/accounts/mailbox/support_action.html", context, status=status
    )


def bulk_support_action(
    action: SupportAction,
) -> Callable[[ModelAdmin[Mailbox], HttpRequest, QuerySet[Mailbox]], HttpResponse | None]:
    """An admin action: the first POST shows the confirmation page, the second one acts."""

    def run(
        model_admin: ModelAdmin[Mailbox], request: HttpRequest, queryset: QuerySet[Mailbox]
    ) -> HttpResponse | None:
        queryset = queryset.select_related(None).order_by("pk")
        # The ids the staff member saw and confirmed; never re-run the changelist's filters.
        selected = list(queryset.values_list("pk", flat=True)[: BULK_LIMIT + 1])
        if len(selected) > BULK_LIMIT:
            messages.error(
                request,
                _("Select at most %(limit)d mailboxes for one action.") % {"limit": BULK_LIMIT},
            )
            return None
        form = action.form_class(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            _run(request, action, queryset.filter(pk__in=selected), form.cleaned_data)
            return None
        opts = model_admin.model._meta
        context = {
            **model_admin.admin_site.each_context(request),
            "title": action.title,
            "action": action,
            "action_name": f"support_{action.slug.replace('-', '_')}",
            "form": form,
            "mailboxes": queryset.filter(pk__in=selected).only("pk", "address"),
            "count": len(selected),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "opts": opts,
            "app_label": opts.app_label,
            "cancel_url": reverse("admin:accounts_mailbox_changelist"),
        }
        return TemplateResponse(request, "admin/accounts/mailbox/support_action.html", context)

    run.__name__ = f"support_{action.slug.replace('-', '_')}"
    return run


def _days(request: HttpRequest) -> int:
    try:
        days = int(request.GET.get("days", DASHBOARD_DAYS))
    except ValueError:
        return DASHBOARD_DAYS
    return min(max(days, 1), DASHBOARD_MAX_DAYS)


def support_dashboard(request: HttpRequest, model_admin: ModelAdmin[Mailbox]) -> HttpResponse:
    """Blocks per reason and notices over the last days, and how many have access on now.

    Every figure is one aggregate over an index (audit action and time, notice time, the
    partial index of mailboxes with access on), so the page stays cheap at a million
    mailboxes.
    """
    if not request.user.has_perm("mailaccess.view_support_dashboard"):
        raise PermissionDenied
    days = _days(request)
    since = timezone.now() - timedelta(days=days)

    blocks = AuditEvent.objects.filter(action=AuditAction.ACCESS_BLOCKED, created_at__gte=since)
    per_reason = dict(
        blocks.order_by().values_list("reason").annotate(n=Count("id")).values_list("reason", "n")
    )
    per_day: dict[Any, dict[str, int]] = {}
    for day, reason, count in (
        blocks.order_by()
        .annotate(day=TruncDate("created_at"))
        .values_list("day", "reason")
        .annotate(n=Count("id"))
        .values_list("day", "reason", "n")
    ):
        per_day.setdefault(day, {})[reason] = count
    # Separate counts, not one aggregate with filters: each is served by its own index,
    # where one aggregate would read the whole table.
    access_on = ExternalAccess.objects.filter(enabled=True).count()
    blocked_now = dict(
        ExternalAccess.objects.filter(block_reason__gt="")
        .order_by()
        .values_list("block_reason")
        .annotate(n=Count("pk"))
        .values_list("block_reason", "n")
    )
    reasons = list(BlockReason)
    block_rows = [
        {
            "reason": reason,
            "count": per_reason.get(reason.value, 0),
            "now": blocked_now.get(reason.value, 0),
        }
        for reason in reasons
    ]
    day_rows = [
        {"day": day, "counts": [per_day[day].get(reason.value, 0) for reason in reasons]}
        for day in sorted(per_day, reverse=True)
    ]

    notices = Notice.objects.filter(created_at__gte=since).order_by()
    notice_counts = notices.aggregate(
        created=Count("id"),
        emailed=Count("id", filter=Q(emailed_at__isnull=False)),
        blocked=Count("id", filter=Q(kind=NoticeKind.BLOCKED)),
        expiry=Count("id", filter=Q(kind=NoticeKind.EXPIRY_WARNING)),
    )

    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Support dashboard"),
        "days": days,
        "day_choices": [1, 7, 30, 90],
        "since": since,
        "reasons": reasons,
        "block_rows": block_rows,
        "blocks_total": sum(per_reason.values()),
        "day_rows": day_rows,
        "notices": notice_counts,
        "access_on": access_on,
        "blocked_now_total": sum(blocked_now.values()),
        "opts": opts,
        "app_label": opts.app_label,
    }
    return TemplateResponse(request, "admin/mailaccess/support_dashboard.html", context)
