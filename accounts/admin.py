from django.contrib import admin

from accounts.models import Mailbox


@admin.register(Mailbox)
class MailboxAdmin(admin.ModelAdmin):
    list_display = ["address", "plan", "status", "language", "last_login"]
    list_filter = ["plan", "status", "is_staff"]
    search_fields = ["address"]
    show_full_result_count = False
    exclude = ["password"]
    readonly_fields = ["last_login", "date_joined", "password_changed_at", "status_changed_at"]
