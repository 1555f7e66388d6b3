from django.contrib import admin

from mailaccess.models import AuditEvent, SendingLimit


@admin.register(SendingLimit)
class SendingLimitAdmin(admin.ModelAdmin):
    list_display = ["plan", "per_minute", "per_hour"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "address", "action", "reason", "actor_kind", "actor_label"]
    list_filter = ["action", "reason", "actor_kind"]
    search_fields = ["address"]
    show_full_result_count = False

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
