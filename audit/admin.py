"""The audit log in the admin: read only, for everybody (see accounts.admin.ReadOnlyAdmin)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from accounts.admin import ReadOnlyAdmin
from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "address",
        "action",
        "reason",
        "actor_kind",
        "actor_label",
        "ip",
        "justification",
    ]
    list_filter = ["action", "reason", "actor_kind"]
    sortable_by = ("created_at",)
    search_fields = ["mailbox__address"]
    search_help_text = _("The whole mailbox address, e.g. 12345@inbox.lv")
    fields = [
        "created_at",
        "address",
        "mailbox",
        "action",
        "reason",
        "actor_kind",
        "actor",
        "actor_label",
        "ip",
        "justification",
        "detail",
    ]
