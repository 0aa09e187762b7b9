"""Many-row inserts for the hot path: on SQLite straight through the driver.

SQLAlchemy's per-row parameter processing costs more than SQLite's own insert; for rows built
by our code, of types we know, we convert values once and hand tuples to the driver (still
inside the caller's transaction). PostgreSQL takes the ordinary Core path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import JSON, Connection, Table

from pigeon.db.tables import UTCDateTime


@functools.lru_cache(maxsize=64)
def _sqlite_datetime(value: datetime | None) -> str | None:
    # The storage format SQLAlchemy's SQLite DATETIME reads back (naive UTC, microseconds).
    # Cached: the rows of one batch share their few timestamps.
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _same(value: Any) -> Any:
    return value


def _converter(column_type: Any) -> Callable[[Any], Any]:
    if isinstance(column_type, UTCDateTime):
        return _sqlite_datetime
    if isinstance(column_type, JSON):
        return _sqlite_json
    return _same


@cache
def _plan(table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[Callable[[Any], Any], ...]]:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    # Names come from our own table definitions, never from input.
    sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'  # noqa: S608
    return sql, tuple(_converter(table.c[c].type) for c in columns)


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (dicts with the same keys) in one executemany."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), list(rows))
        return
    columns = tuple(rows[0])
    sql, converters = _plan(table, columns)
    conn.exec_driver_sql(sql, _sqlite_tuples(columns, converters, rows))


def _sqlite_tuples(
    columns: Sequence[str],
    converters: Sequence[Callable[[Any], Any]],
    rows: Sequence[dict[str, Any]],
) -> list[Any]:
    """The rows as parameter lists in column order, converting only the columns that need it."""
    take = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    special = [(i, convert) for i, convert in enumerate(converters) if convert is not _same]
    if not special:
        return [take(row) for row in rows]
    values = []
    for row in rows:
        row_values = list(take(row))
        for i, convert in special:
            row_values[i] = convert(row_values[i])
        values.append(row_values)
    return values
