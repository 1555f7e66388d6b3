"""Inserting a job's page of rows in one statement, without a model instance per row.

``bulk_create`` builds a model instance for every row and prepares every field of every row
(about a fifth of an idle-expiry page's time at 10,000,000 mailboxes, issue 23). The jobs'
rows differ in two or three columns only (the mailbox, its address, a detail); the rest (the
action, the actor, the time) is the same for the whole page. On PostgreSQL ``insert_rows``
sends each varying column as one array and every other value once:
``INSERT ... SELECT ... FROM unnest(%s::bigint[], ...) WITH ORDINALITY ... RETURNING id``.
Elsewhere (SQLite, the embedded default) it is ``bulk_create``: the same rows, the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field, Model


def insert_rows(
    model: type[Model], *, per_row: Mapping[str, Sequence[Any]], same: Mapping[str, Any]
) -> list[Any]:
    """Insert one row per position of ``per_row``'s sequences (field name: a value per row);
    ``same`` gives fields one value for every row; the other fields take their defaults.

    Returns the new primary keys, in the rows' order.
    """
    lengths = {len(values) for values in per_row.values()}
    if len(lengths) != 1:
        raise ValueError("every per-row field needs one value per row")
    [count] = lengths
    if not count:
        return []
    using = router.db_for_write(model)
    connection = connections[using]
    if connection.vendor != "postgresql":
        names = list(per_row)
        created = model._default_manager.using(using).bulk_create(
            model(**same, **dict(zip(names, values, strict=True)))
            for values in zip(*per_row.values(), strict=True)
        )
        return [instance.pk for instance in created]

    meta = model._meta
    fields: dict[str, Field[Any, Any]] = {
        name: meta.get_field(name)  # type: ignore[misc]
        for name in [*per_row, *same]
    }
    values: dict[str, Any] = dict(same)
    for field in meta.concrete_fields:
        given = {field.name, field.attname} & fields.keys()
        if not given and field is not meta.pk:
            fields[field.name], values[field.name] = field, field.get_default()

    def prepared(field: Field[Any, Any], value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    quote = connection.ops.quote_name
    arrays = [
        [prepared(fields[name], value) for value in column] for name, column in per_row.items()
    ]
    # Without the type's length (varchar, not varchar(254)): nothing is cut short.
    array_types = [str(fields[name].db_type(connection)).split("(")[0] for name in per_row]
    aliases = [f"c{number}" for number in range(len(per_row))]
    select = [f"row.{alias}" for alias in aliases] + ["%s"] * (len(fields) - len(per_row))
    constants = [prepared(fields[name], value) for name, value in values.items()]
    # Names from the model's _meta only; every value goes as a parameter.
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(field.column) for field in fields.values())}) "
        f"SELECT {', '.join(select)} "
        f"FROM unnest({', '.join(f'%s::{kind}[]' for kind in array_types)}) "
        f"WITH ORDINALITY AS row ({', '.join(aliases)}, n) "
        # Inserted, and so returned, in the rows' order.
        f"ORDER BY row.n RETURNING {quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*constants, *arrays])
        keys = [row[0] for row in cursor.fetchall()]
    if len(keys) != count:
        raise RuntimeError(f"inserted {len(keys)} rows of {count}")
    return keys
