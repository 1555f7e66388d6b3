"""The mailbox admin: where support answers "why can't my Outlook log in?".

Support staff see a mailbox's access state, its mail-program passwords (never their hashes)
and its audit trail on one page, and change access only through ``mailaccess.actions``
(buttons and bulk actions from ``mailaccess/admin_views.py``). Built for a million
mailboxes: no full count, no per-row queries, filters on indexed columns.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib import admin
from django.contrib.admin.views.main import ORDER_VAR
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce, Collate
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Mailbox, normalize_address
from audit.models import AuditEvent
from mailaccess import activity, admin_views
from mailaccess.models import AppPassword, BlockReason, ExternalAccess, Notice

# django-stubs makes Paginator and ModelAdmin generic; Django's own classes cannot be
# subscripted at run time, so the parameters exist for the type checker only.
if TYPE_CHECKING:
    AnyPaginator = Paginator[Any]
    AnyModelAdmin = admin.ModelAdmin[Any]
    MailboxModelAdmin = admin.ModelAdmin[Mailbox]
else:
    AnyPaginator = Paginator
    AnyModelAdmin = MailboxModelAdmin = admin.ModelAdmin

# The changelist counts at most this many rows: beyond it the page says "more than".
COUNT_LIMIT = 1000
AUDIT_ROWS_ON_PAGE = 50


class CappedCountPaginator(AnyPaginator):
    """Counts at most ``COUNT_LIMIT + 1`` rows instead of a full COUNT(*).

    ``COUNT(*)`` over a million mailboxes reads the whole table on every changelist load;
    ``SELECT COUNT(*) FROM (... LIMIT 1001)`` stops early, even under a filter that matches
    one row in a hundred. The price: pages beyond the cap
    cannot be reached by number; support narrows the search instead.
    """

    @cached_property
    def count(self) -> int:
        # Only the primary key, in no order: the page's annotations and joins for display
        # would otherwise run for all the counted rows.
        # The admin pages a QuerySet; the stubs type object_list as any sequence.
        rows = self.object_list.order_by().values("pk")  # type: ignore[attr-defined]
        return int(rows[: COUNT_LIMIT + 1].count())

    @property
    def capped(self) -> bool:
        return self.count > COUNT_LIMIT


class ReadOnlyAdmin(AnyModelAdmin):
    """The admin of a table that changes only through the actions: every app's read-only pages
    (the access models, the audit log) use it."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    # Sorting by a column without an index would sort the whole table for one page.
    sortable_by: ClassVar[tuple[str, ...]] = ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: Any, search_term: str
    ) -> tuple[Any, bool]:
        # The whole address, matched exactly through the mailbox's unique index: a
        # "contains" search would read every row of a table this size.
        term = normalize_address(search_term)
        if not term:
            return queryset, False
        return queryset.filter(mailbox__address=term), False


class AccessFilter(admin.SimpleListFilter):
    title = _("external access")
    parameter_name = "access"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("on", _("on")), ("off", _("off"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> QuerySet[Mailbox]:
        if self.value() == "on":
            return queryset.filter(external_access__enabled=True)
        if self.value() == "off":
            # A mailbox without an access row has access off too.
            return queryset.exclude(external_access__enabled=True)
        return queryset


class BlockReasonFilter(admin.SimpleListFilter):
    title = _("block reason")
    parameter_name = "block"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("any", _("any block")), *BlockReason.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> QuerySet[Mailbox]:
        value = self.value()
        if value == "any":
            return queryset.filter(external_access__block_reason__gt="")
        if value in BlockReason.values:
            return queryset.filter(external_access__block_reason=value)
        return queryset


class LastUseFilter(admin.SimpleListFilter):
    """The last use of a mail program (or switching on): what the two-month expiry counts."""

    title = _("last use of mail programs")
    parameter_name = "used"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("1", _("today")),
            ("7", _("in the last 7 days")),
            ("30", _("in the last 30 days")),
            ("older", _("more than 60 days ago")),
            ("never", _("never")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> QuerySet[Mailbox]:
        value = self.value()
        now = timezone.now()
        if value in ("1", "7", "30"):
            since = now - timedelta(days=int(value))
            return queryset.filter(external_access__last_activity_at__gte=since)
        if value == "older":
            return queryset.filter(external_access__last_activity_at__lt=now - timedelta(days=60))
        if value == "never":
            return queryset.exclude(external_access__last_activity_at__isnull=False)
        return queryset


# Fields only a superuser may set: they make staff and superusers.
PRIVILEGE_FIELDS = ["is_staff", "is_superuser", "groups", "user_permissions"]
# Changed only through mailaccess.actions, which audit them.
ACTION_FIELDS = ["plan", "status", "status_changed_at"]


@admin.register(Mailbox)
class MailboxAdmin(MailboxModelAdmin):
    list_display = [
        "address",
        "plan",
        "status",
        "access_state",
        "block_reason",
        "live_passwords",
        "last_use",
        "last_login",
    ]
    list_filter = [
        "plan",
        "status",
        AccessFilter,
        BlockReasonFilter,
        LastUseFilter,
        "is_staff",
    ]
    list_select_related = ["external_access"]
    # Only columns with an index to walk: sorting a million rows by plan would sort them all.
    sortable_by = ("address", "last_login")
    search_fields = ["address"]
    search_help_text = _("The mailbox address or its beginning, e.g. 12345@inbox.lv or 12345")
    show_full_result_count = False
    # Facet counts would run one COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    list_per_page = 50
    exclude = ["password"]
    filter_horizontal = ["groups", "user_permissions"]
    change_form_template = "admin/accounts/mailbox/change_form.html"
    change_list_template = "admin/accounts/mailbox/change_list.html"
    readonly_fields = [
        "last_login",
        "date_joined",
        "password_changed_at",
        *ACTION_FIELDS,
    ]
    actions = [
        # The stubs' overloads of admin.action take a function first; Django also takes the
        # options alone and returns the decorator.
        admin.action(  # type: ignore[call-overload]
            permissions=[action.codename], description=action.title
        )(admin_views.bulk_support_action(action))
        for action in admin_views.SUPPORT_ACTIONS.values()
    ]

    def has_block_access_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailaccess.block_access")

    def has_unblock_access_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailaccess.unblock_access")

    def has_disable_access_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailaccess.disable_access")

    def has_change_plan_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailaccess.change_plan")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A mailbox is created by sign-up with its password, not from a blank admin form.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += PRIVILEGE_FIELDS
        return fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Mailbox]:
        live = (
            AppPassword.objects.live()
            .filter(mailbox=OuterRef("pk"))
            .order_by()
            .values("mailbox")
            .annotate(n=Count("pk"))
            .values("n")
        )
        # A correlated subquery, not a JOIN with GROUP BY: it runs for the rows on the page
        # only, through the partial index of live passwords.
        return (
            super()
            .get_queryset(request)
            .annotate(live_password_count=Coalesce(Subquery(live), 0, output_field=IntegerField()))
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Mailbox], search_term: str
    ) -> tuple[QuerySet[Mailbox], bool]:
        term = normalize_address(search_term)
        if not term:
            return queryset, False
        # Addresses are stored lower-case, so a case-sensitive prefix match of the lower-cased
        # term finds them whatever case support typed.
        if connection.vendor != "postgresql":
            found = queryset.filter(address__startswith=term)
            return (found if ORDER_VAR in request.GET else found.order_by("address")), False
        # On PostgreSQL through the byte-ordered address index (accounts migration 0006): it
        # gives the prefix's range and the page's order at once, so a page reads 50 index
        # entries however many addresses share the prefix. Ordered by the newest first, as
        # without a search, PostgreSQL walks the primary key backwards looking for matches:
        # with 10,000,000 mailboxes a prefix the newest ones lack read millions of rows.
        found = queryset.alias(address_bytes=Collate("address", "C")).filter(
            address_bytes__startswith=term
        )
        # A column support chose to sort by wins (then the matches are sorted in full).
        return (found if ORDER_VAR in request.GET else found.order_by("address_bytes")), False

    @staticmethod
    def _access(mailbox: Mailbox) -> ExternalAccess | None:
        try:
            return mailbox.external_access
        except ExternalAccess.DoesNotExist:
            return None

    @admin.display(description=_("external access"), boolean=True)
    def access_state(self, mailbox: Mailbox) -> bool:
        access = self._access(mailbox)
        return bool(access and access.enabled)

    @admin.display(description=_("block reason"))
    def block_reason(self, mailbox: Mailbox) -> str | None:
        access = self._access(mailbox)
        return access.get_block_reason_display() if access and access.block_reason else None

    @admin.display(description=_("mail-program passwords"))
    def live_passwords(self, mailbox: Mailbox) -> int:
        return getattr(mailbox, "live_password_count", 0)

    @admin.display(
        description=_("last use of mail programs"), ordering="external_access__last_activity_at"
    )
    def last_use(self, mailbox: Mailbox) -> Any:
        access = self._access(mailbox)
        return access.last_activity_at if access else None

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "dashboard/",
                wrap(self.dashboard_view),
                name="support_dashboard",
            ),
            path(
                "<int:object_id>/support/<slug:slug>/",
                wrap(self.support_action_view),
                name="accounts_mailbox_support_action",
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.support_dashboard(request, self)

    def support_action_view(self, request: HttpRequest, object_id: int, slug: str) -> HttpResponse:
        return admin_views.support_action_view(request, self, object_id, slug)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), **self._support_context(request, object_id)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _support_context(self, request: HttpRequest, object_id: str) -> dict[str, Any]:
        """Access state, passwords, notices and the audit trail for the mailbox page.

        Password rows are read without their hash and lookup key: what is not loaded cannot
        be rendered by mistake.
        """
        try:
            pk = int(object_id)
        except ValueError:
            return {}
        access = ExternalAccess.objects.filter(mailbox_id=pk).first()
        return {
            "access": access,
            "app_passwords": list(
                AppPassword.objects.filter(mailbox_id=pk)
                .defer("password_hash", "lookup_key")
                .order_by("-created_at")
            ),
            "audit_events": list(AuditEvent.objects.filter(mailbox_id=pk)[:AUDIT_ROWS_ON_PAGE]),
            "audit_rows_on_page": AUDIT_ROWS_ON_PAGE,
            "notices": list(Notice.objects.filter(mailbox_id=pk)[:10]),
            "support_actions": admin_views.allowed_actions(request),
            # What the owner sees in the panel: "why can't my Outlook log in?"
            "password_activity": activity.history(pk),
        }
