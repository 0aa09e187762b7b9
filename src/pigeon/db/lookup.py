"""Keyed reads for the hot path: rows whose key is in a list, on SQLite straight through the driver.

The accept path reads a few rows per batch by key (users, idempotency records). Through
SQLAlchemy each such read costs a few hundred microseconds of statement handling (an expanding
IN is compiled anew for each list length) before SQLite does tens of microseconds of work. On
SQLite the statement text is built once per (table, columns, key, list length) from the table's
own definition and results are converted with the column types' own result processors; on
PostgreSQL the ordinary Core select runs.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, select


def rows_by_key(
    conn: Connection, table: Table, key: str, values: Sequence[Any], columns: tuple[str, ...] = ()
) -> list[Any]:
    """The rows of `table` whose `key` column is one of `values` (columns: all by default).

    Each row reads like a Core row: attributes named after the columns.
    """
    if not values:
        return []
    names = columns or tuple(c.name for c in table.columns)
    if conn.dialect.name != "sqlite":
        query = select(*(table.c[n] for n in names)).where(table.c[key].in_(values))
        return list(conn.execute(query))
    sql, row_type, processors = _plan(conn.dialect, table, key, names, len(values))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        raw = cursor.execute(sql, tuple(values)).fetchall()
    finally:
        cursor.close()
    if processors is None:
        return [row_type._make(r) for r in raw]
    return [row_type._make(_convert(r, processors)) for r in raw]


Processors = tuple[Callable[[Any], Any] | None, ...]


def _convert(raw: tuple[Any, ...], processors: Processors) -> list[Any]:
    return [value if p is None else p(value) for value, p in zip(raw, processors, strict=True)]


@cache
def _plan(
    dialect: Any, table: Table, key: str, names: tuple[str, ...], count: int
) -> tuple[str, Any, Processors | None]:
    quoted = ", ".join(f'"{n}"' for n in names)
    marks = ", ".join("?" for _ in range(count))
    # Names come from our own table definitions, never from input; values are bound.
    sql = f'SELECT {quoted} FROM "{table.name}" WHERE "{key}" IN ({marks})'  # noqa: S608
    processors = tuple(
        table.c[n].type.dialect_impl(dialect).result_processor(dialect, None) for n in names
    )
    row_type = namedtuple(f"{table.name}_row", names, rename=True)  # type: ignore[misc]
    return sql, row_type, processors if any(processors) else None
