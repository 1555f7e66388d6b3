"""The table Dovecot's passdb reads, filled from the view (issue 23).

The view ``mailaccess_dovecot_passdb`` joins four tables and computes the refusal on every
login: PostgreSQL spent 0.5-1 ms planning it again for each of Dovecot's plain-text queries.
The table holds the view's rows (``mailaccess/passdb.py``: the access actions rewrite a
mailbox's rows in the same transaction), behind one unique index that covers the query. This
migration creates it with that index and fills it from the existing rows, so Dovecot can be
pointed at it (deploy/dovecot/dovecot-sql.conf.ext) as soon as it has run. On PostgreSQL only,
like the view.
"""

import importlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _passdb():  # the SQL as of this migration
    return importlib.import_module("mailaccess.passdb")


def fill(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        passdb = _passdb()
        schema_editor.execute(passdb.INDEX_SQL)
        for statement in passdb.REBUILD_SQL.split(";\n"):
            if statement.strip():
                schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("mailaccess", "0012_dovecot_passdb_reason_after_verified_password"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="DovecotPassdb",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("user", models.CharField(max_length=254)),
                ("lookup_key", models.CharField(max_length=64)),
                ("service", models.CharField(max_length=8)),
                ("password", models.CharField(max_length=128)),
                ("nologin", models.CharField(max_length=1, null=True)),
                ("reason", models.CharField(max_length=255, null=True)),
                ("app_password", models.BigIntegerField()),
                ("expires_at", models.DateTimeField(null=True)),
                (
                    "mailbox",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "db_table": "mailaccess_passdb",
                "default_permissions": (),
            },
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
