"""The password lookup key and the notice key have no LIKE index (mailaccess migration 0017):
each was one more random page written per ended password or new notice, for no reader."""

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def indexes_of(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cursor.fetchall())


@pytest.mark.parametrize(
    ("table", "column"), [("mailaccess_apppassword", "lookup_key"), ("mailaccess_notice", "key")]
)
def test_the_key_is_unique_without_a_pattern_index(table: str, column: str) -> None:
    indexes = indexes_of(table)
    on_column = {name: sql for name, sql in indexes.items() if f"({column}" in sql}
    assert not [sql for sql in on_column.values() if "pattern_ops" in sql], on_column
    assert [sql for sql in on_column.values() if sql.startswith("CREATE UNIQUE INDEX")], on_column
