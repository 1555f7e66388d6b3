"""The audit log moves here from mailaccess, its table and rows untouched.

The model is created in the migration state only: its table ``mailaccess_auditevent`` (and
its indexes and foreign keys to the mailbox) stay as mailaccess's migrations made them, and
mailaccess 0015 drops the model from its own state. The content type moves along, so the
permissions that name it (support's ``view_auditevent``) and the admin's history follow.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor, *, source, target):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if ContentType.objects.using(db).filter(app_label=target, model="auditevent").exists():
        return
    ContentType.objects.using(db).filter(app_label=source, model="auditevent").update(
        app_label=target
    )


def to_audit(apps, schema_editor):
    move_content_type(apps, schema_editor, source="mailaccess", target="audit")


def back_to_mailaccess(apps, schema_editor):
    move_content_type(apps, schema_editor, source="audit", target="mailaccess")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
        ("mailaccess", "0014_password_activity"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "address",
                            models.CharField(max_length=254, verbose_name="mailbox address"),
                        ),
                        (
                            "action",
                            models.CharField(
                                choices=[
                                    ("access_enabled", "access switched on"),
                                    ("access_disabled", "access switched off"),
                                    ("access_blocked", "access blocked"),
                                    ("access_unblocked", "block lifted"),
                                    ("password_created", "mail-program password created"),
                                    ("password_revoked", "mail-program password revoked"),
                                    ("plan_changed", "plan changed"),
                                    ("sending_limits_lifted", "free sending limits lifted early"),
                                    ("status_changed", "status changed"),
                                    ("web_password_changed", "web password changed"),
                                    ("expiry_warned", "expiry warning sent"),
                                    ("signed_in", "signed in"),
                                    ("two_factor_enabled", "two-factor sign-in switched on"),
                                    ("two_factor_disabled", "two-factor sign-in switched off"),
                                    ("recovery_codes_created", "new recovery codes created"),
                                    ("recovery_code_used", "recovery code used"),
                                ],
                                max_length=24,
                                verbose_name="action",
                            ),
                        ),
                        (
                            "reason",
                            models.CharField(
                                blank=True,
                                choices=[
                                    ("hourly_limit", "hourly sending limit exceeded"),
                                    ("compromised", "password stolen, mailbox sent spam"),
                                    ("inactive", "mailbox became inactive"),
                                    ("idle", "not used for two months"),
                                    ("faulty_program", "too many connections from a mail program"),
                                    ("support", "switched off by customer support"),
                                ],
                                max_length=16,
                                verbose_name="block reason",
                            ),
                        ),
                        (
                            "actor_kind",
                            models.CharField(
                                choices=[
                                    ("user", "the mailbox owner"),
                                    ("support", "support staff"),
                                    ("system", "the system"),
                                ],
                                max_length=8,
                                verbose_name="done by",
                            ),
                        ),
                        (
                            "actor_label",
                            models.CharField(
                                blank=True, max_length=254, verbose_name="done by (name)"
                            ),
                        ),
                        (
                            "ip",
                            models.GenericIPAddressField(
                                blank=True, null=True, verbose_name="client IP"
                            ),
                        ),
                        (
                            "justification",
                            models.CharField(
                                blank=True, max_length=500, verbose_name="justification"
                            ),
                        ),
                        (
                            "detail",
                            models.JSONField(blank=True, default=dict, verbose_name="detail"),
                        ),
                        (
                            "created_at",
                            models.DateTimeField(
                                db_index=True,
                                default=django.utils.timezone.now,
                                verbose_name="time",
                            ),
                        ),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "mailbox",
                            models.ForeignKey(
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="audit_events",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "audit event",
                        "verbose_name_plural": "audit log",
                        "db_table": "mailaccess_auditevent",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [
                            models.Index(
                                fields=["mailbox", "-created_at"], name="audit_mailbox_idx"
                            ),
                            models.Index(
                                fields=["action", "created_at"], name="audit_action_time_idx"
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(to_audit, back_to_mailaccess),
    ]
