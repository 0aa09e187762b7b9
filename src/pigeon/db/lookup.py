"""Keyed reads for the hot path: rows whose key is in a list, straight through the driver.

The accept path reads a few rows per batch by key (users, idempotency records). Through
SQLAlchemy each such read costs a few hundred microseconds of statement handling (an expanding
IN is compiled anew for each list length) before the database does tens of microseconds of
work: on PostgreSQL it was 13% of an API process under load. So the statement text is built
once per (table, columns, key, list length) from the table's own definition, runs straight
on the driver (SQLite's cursor; on PostgreSQL `exec_driver_sql`, which skips the compiler),
and its results are converted with the column types' own result processors.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table


def rows_by_key(
    conn: Connection, table: Table, key: str, values: Sequence[Any], columns: tuple[str, ...] = ()
) -> list[Any]:
    """The rows of `table` whose `key` column is one of `values` (columns: all by default).

    Each row reads like a Core row: attributes named after the columns.
    """
    if not values:
        return []
    names = columns or tuple(c.name for c in table.columns)
    sql, row_type, processors = _plan(conn.dialect, table, key, names, len(values))
    raw: Sequence[Any]
    if conn.dialect.name == "sqlite":
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            raw = cursor.execute(sql, tuple(values)).fetchall()
        finally:
            cursor.close()
    else:
        # Through SQLAlchemy's connection (not its compiler): a lost connection is noticed
        # and invalidated as for any other statement.
        raw = conn.exec_driver_sql(sql, tuple(values)).fetchall()
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
    if dialect.name == "sqlite":
        marks = ", ".join("?" for _ in range(count))
    else:  # asyncpg's numbered parameters
        marks = ", ".join(f"${i}" for i in range(1, count + 1))
    # Names come from our own table definitions, never from input; values are bound.
    sql = f'SELECT {quoted} FROM "{table.name}" WHERE "{key}" IN ({marks})'  # noqa: S608
    processors = tuple(
        table.c[n].type.dialect_impl(dialect).result_processor(dialect, None) for n in names
    )
    row_type = namedtuple(f"{table.name}_row", names, rename=True)  # type: ignore[misc]
    return sql, row_type, processors if any(processors) else None
