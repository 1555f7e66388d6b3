"""The admin's address search: one index for the prefix and the page's order (issue 23).

``mailbox_address_prefix_idx`` (varchar_pattern_ops) goes: PostgreSQL already has the same
index, ``accounts_mailbox_address_..._like``, which Django adds to every unique text column.
Either serves ``address LIKE 'user1%'`` but cannot give the page its order, so PostgreSQL
either sorted every match or walked the primary key hoping for matches. An index on the
address in the "C" collation (byte order, whatever the database's collation) does both:
``address COLLATE "C" LIKE 'user1%' ORDER BY address COLLATE "C" LIMIT 50`` reads 50 entries.

Built concurrently: with millions of mailboxes a plain build would stop sign-ups for a minute.
Only on PostgreSQL; SQLite compares bytes already.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps


def create_index(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS mailbox_address_bytes_idx "
            'ON accounts_mailbox ((address COLLATE "C"))'
        )


def drop_index(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS mailbox_address_bytes_idx")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("accounts", "0005_mailbox_sending_limits_lift_at"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="mailbox", name="mailbox_address_prefix_idx"),
        migrations.RunPython(create_index, drop_index),
    ]
