"""Drop the ``LIKE`` indexes of the password lookup key and the notice key (issue 23).

Django gives every unique text column on PostgreSQL a second index in ``varchar_pattern_ops``
(``..._like``), for ``LIKE 'prefix%'``. Nothing searches these two columns by pattern: a login
and the auth policy read the key by equality (through the unique index), a notice by its id.
But every write pays for it: ending a password writes a new entry in each index of its row,
and a lookup key is a random hash, so at 10,000,000 mailboxes the entry lands on a page of
its own. The idle-expiry job's WAL was one seventh this index's full-page images (measured
with pg_walinspect: 16 MB of 112 MB in 3 s), the same as the unique index beside it.

Dropped concurrently (logins and blocks go on), on PostgreSQL only; SQLite has no such index.
The model still says ``unique=True``, so an AlterField of either column would bring its index
back: drop it again then.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

COLUMNS = [("mailaccess_apppassword", "lookup_key"), ("mailaccess_notice", "key")]

FIND = """
SELECT i.relname
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
JOIN pg_opclass o ON o.oid = x.indclass[0]
WHERE t.relname = %s AND a.attname = %s AND x.indnatts = 1
  AND o.opcname IN ('varchar_pattern_ops', 'text_pattern_ops')
"""


def drop_indexes(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for table, column in COLUMNS:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(FIND, [table, column])
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(name)}")


def restore_indexes(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for model_name, field_name in (("AppPassword", "lookup_key"), ("Notice", "key")):
        model = apps.get_model("mailaccess", model_name)
        like = schema_editor._create_like_index_sql(model, model._meta.get_field(field_name))  # type: ignore[attr-defined]
        if like is not None:
            schema_editor.execute(like)


class Migration(migrations.Migration):
    # DROP INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [("mailaccess", "0016_apppassword_allowed_networks")]

    operations = [migrations.RunPython(drop_indexes, restore_indexes)]
