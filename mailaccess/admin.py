"""Read-only admin pages of the access models.

Access, passwords and notices change only through ``mailaccess.actions``
(the buttons on the mailbox page): here nobody, not even a superuser, adds, edits or deletes
them. Password hashes and lookup keys are never shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from accounts.admin import ReadOnlyAdmin
from mailaccess.models import (
    AppPassword,
    ExternalAccess,
    NewProgramAlert,
    Notice,
    PasswordActivity,
    SendingLimit,
)

# django-stubs makes ModelAdmin generic; Django's cannot be subscripted at run time.
if TYPE_CHECKING:
    SendingLimitModelAdmin = admin.ModelAdmin[SendingLimit]
else:
    SendingLimitModelAdmin = admin.ModelAdmin


@admin.register(SendingLimit)
class SendingLimitAdmin(SendingLimitModelAdmin):
    list_display = ["plan", "per_minute", "per_hour"]


@admin.register(ExternalAccess)
class ExternalAccessAdmin(ReadOnlyAdmin):
    list_display = ["mailbox", "enabled", "block_reason", "blocked_at", "last_activity_at"]
    list_filter = ["enabled", "block_reason", "requires_password_change"]
    list_select_related = ["mailbox"]
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")


@admin.register(AppPassword)
class AppPasswordAdmin(ReadOnlyAdmin):
    list_display = [
        "mailbox",
        "label",
        "allowed_protocols",
        "created_at",
        "last_used_at",
        "last_used_protocol",
        "last_used_ip",
        "last_used_client",
        "revoked_at",
    ]
    list_select_related = ["mailbox"]
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")
    # password_hash and lookup_key are left out on purpose: never shown to anyone.
    fields = [
        "mailbox",
        "label",
        "allow_imap",
        "allow_pop3",
        "allow_smtp",
        "created_at",
        "last_used_at",
        "last_used_protocol",
        "last_used_ip",
        "last_used_client",
        "revoked_at",
    ]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).defer("password_hash", "lookup_key")

    @admin.display(description=_("protocols"))
    def allowed_protocols(self, app_password: AppPassword) -> str:
        return ", ".join(app_password.protocols())


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "mailbox", "kind", "reason", "emailed_at", "read_at"]
    list_filter = ["kind", "reason"]
    list_select_related = ["mailbox"]
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")
    exclude = ["key"]


@admin.register(PasswordActivity)
class PasswordActivityAdmin(ReadOnlyAdmin):
    """What the owner sees under "Recent activity": support answers "why can't my Outlook
    log in?" from the same list."""

    list_display = [
        "last_at",
        "mailbox",
        "app_password",
        "kind",
        "reason",
        "protocol",
        "ip",
        "client",
        "count",
        "first_at",
        "retry_at",
    ]
    list_filter = ["kind", "reason", "protocol"]
    list_select_related = ["mailbox", "app_password"]
    sortable_by = ("last_at",)
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")

    def get_queryset(self, request: HttpRequest) -> Any:
        return (
            super()
            .get_queryset(request)
            .defer("app_password__password_hash", "app_password__lookup_key")
        )


@admin.register(NewProgramAlert)
class NewProgramAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "signed_in_at",
        "mailbox",
        "app_password",
        "protocol",
        "ip",
        "client",
        "used_at",
    ]
    list_select_related = ["mailbox", "app_password"]
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")
    exclude = ["notice"]
