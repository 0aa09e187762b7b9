"""Many-row inserts and updates for the hot paths, one round trip each.

SQLAlchemy's per-row parameter processing costs more than the database's own work; for rows
built by our code, of types we know, we convert values once and hand them to the driver (still
inside the caller's transaction). SQLite takes tuples in one executemany. PostgreSQL takes the
rows as one JSON array and turns it back into typed rows with `json_to_recordset`: a thousand
rows are one statement to plan and execute instead of a thousand, and one msgspec encode
instead of a parameter per value (asyncpg's per-element array encoding costs ten times more).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import JSON, Connection, LargeBinary, Table
from sqlalchemy.dialects import postgresql

from pigeon.db.tables import UTCDateTime

Converter = Callable[[Any], Any]

_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
# PostgreSQL: plans kept for the rest of the transaction, and the connections' own again.
CACHED_PLANS = "SET LOCAL plan_cache_mode = auto"
CUSTOM_PLANS = "SET LOCAL plan_cache_mode TO DEFAULT"


@functools.lru_cache(maxsize=64)
def sqlite_datetime(value: datetime | None) -> str | None:
    # The storage format SQLAlchemy's SQLite DATETIME reads back (naive UTC, microseconds).
    # Cached: the rows of one batch share their few timestamps.
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def json_text(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _same(value: Any) -> Any:
    return value


def _converter(column_type: Any) -> Converter:
    if isinstance(column_type, UTCDateTime):
        return sqlite_datetime
    if isinstance(column_type, JSON):
        return json_text
    return _same


def quoted(names: Sequence[str], prefix: str = "") -> str:
    """Column names for SQL text: `"a", "b"` (with a prefix: `NEW."a", NEW."b"`)."""
    return ", ".join(f'{prefix}"{name}"' for name in names)


def _is_binary(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, LargeBinary)


def _pg_type(table: Table, column: str) -> str:
    """A column's type in `pg_recordset`'s rows (bytes travel as base64 text)."""
    return "text" if _is_binary(table, column) else str(table.c[column].type.compile(_PG_DIALECT))


def pg_recordset(table: Table, columns: Sequence[str], parameter: int = 1) -> str:
    """`json_to_recordset($1::json) AS v(column TYPE, ...)`: the rows of one JSON parameter.

    Bytes travel in JSON as base64 text (msgspec's encoding): a binary column is read as text
    here and decoded by `pg_values`.
    """
    types = ", ".join(f'"{c}" {_pg_type(table, c)}' for c in columns)
    return f"json_to_recordset(${parameter}::json) AS v({types})"


def pg_value(table: Table, column: str) -> str:
    """A column of `pg_recordset`'s rows, as its table's type (`v."c"`, bytes decoded)."""
    if _is_binary(table, column):
        return f"decode(v.\"{column}\", 'base64')"
    return f'v."{column}"'


def pg_values(table: Table, columns: Sequence[str]) -> str:
    """The columns of `pg_recordset`'s rows, in order, for a SELECT list."""
    return ", ".join(pg_value(table, c) for c in columns)


@cache
def _sqlite_insert(table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[Converter, ...]]:
    marks = ", ".join("?" for _ in columns)
    # Names come from our own table definitions, never from input.
    sql = f'INSERT INTO "{table.name}" ({quoted(columns)}) VALUES ({marks})'  # noqa: S608
    return sql, tuple(_converter(table.c[c].type) for c in columns)


@cache
def _sqlite_update(
    table: Table, columns: tuple[str, ...], key: str
) -> tuple[str, tuple[Converter, ...]]:
    """UPDATE by `key` with the SET values first and the key last, as the tuples are built."""
    assignments = ", ".join(f'"{c}" = ?' for c in columns[:-1])
    sql = f'UPDATE "{table.name}" SET {assignments} WHERE "{key}" = ?'  # noqa: S608
    return sql, tuple(_converter(table.c[c].type) for c in columns)


@cache
def _pg_insert(table: Table, columns: tuple[str, ...]) -> str:
    source = pg_recordset(table, columns)
    values = pg_values(table, columns)
    return f'INSERT INTO "{table.name}" ({quoted(columns)}) SELECT {values} FROM {source}'  # noqa: S608


@cache
def _pg_update(table: Table, columns: tuple[str, ...], key: str) -> str:
    assignments = ", ".join(f'"{c}" = {pg_value(table, c)}' for c in columns if c != key)
    source = pg_recordset(table, columns)
    return (
        f'UPDATE "{table.name}" AS t SET {assignments} '  # noqa: S608
        f'FROM {source} WHERE t."{key}" = {pg_value(table, key)}'
    )


@cache
def _datetime_columns(table: Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in columns if isinstance(table.c[c].type, UTCDateTime))


def pg_rows(table: Table, columns: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one JSON array; datetimes travel as RFC 3339 text with their offset."""
    for name in _datetime_columns(table, columns):
        # The rows of a batch share a few timestamps: check each distinct one once.
        for value in set(map(itemgetter(name), rows)):
            if value is not None and value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
    return msgspec.json.encode(rows).decode()


def _row_values(
    columns: Sequence[str], converters: Sequence[Converter]
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values in column order, converting only the columns that need it."""
    take = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    special = [(i, convert) for i, convert in enumerate(converters) if convert is not _same]
    if not special:
        return take

    def values(row: dict[str, Any]) -> tuple[Any, ...]:
        converted = list(take(row))
        for i, convert in special:
            converted[i] = convert(converted[i])
        return tuple(converted)

    return values


def _sqlite_tuples(
    columns: Sequence[str], converters: Sequence[Converter], rows: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """The rows as parameter tuples (what exec_driver_sql takes as an executemany)."""
    values = _row_values(columns, converters)
    return [values(row) for row in rows]


def _dialect(conn: Connection) -> str:
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise ValueError(f"bulk statements support SQLite and PostgreSQL, not {name}")
    return name


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (dicts with the same keys) in one statement."""
    if not rows:
        return
    columns = tuple(rows[0])
    if _dialect(conn) == "postgresql":
        # The insert's plan depends on no value, but each row's foreign keys are checked by a
        # query PostgreSQL keeps prepared, which Pigeon's connections' force_custom_plan
        # (`db.engine`) would plan again for every row: a third of the server's CPU in the
        # e2e rows. Cached plans for the statement, then back to the connection's setting.
        conn.exec_driver_sql(CACHED_PLANS)
        conn.exec_driver_sql(_pg_insert(table, columns), (pg_rows(table, columns, rows),))
        conn.exec_driver_sql(CUSTOM_PLANS)
        return
    sql, converters = _sqlite_insert(table, columns)
    conn.exec_driver_sql(sql, _sqlite_tuples(columns, converters, rows))


SQLITE_MAX_PARAMETERS = 32_766  # SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32


def update_rows(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, key: str = "id"
) -> None:
    """Update rows by `key`: each dict (all with the same keys) names its row and new values."""
    if not rows:
        return
    columns = (*(name for name in rows[0] if name != key), key)
    if _dialect(conn) == "postgresql":
        conn.exec_driver_sql(_pg_update(table, columns, key), (pg_rows(table, columns, rows),))
        return
    sql, converters = _sqlite_update(table, columns, key)
    conn.exec_driver_sql(sql, _sqlite_tuples(columns, converters, rows))


@cache
def _sqlite_update_if(
    table: Table, columns: tuple[str, ...], key: str, guarded: tuple[str, ...]
) -> tuple[str, tuple[Converter, ...]]:
    """`_sqlite_update` that also matches the guarded columns (their values after the key)."""
    sql, converters = _sqlite_update(table, columns, key)
    matched = "".join(f' AND "{c}" = ?' for c in guarded)
    return sql + matched, converters


@cache
def _pg_update_if(
    table: Table, columns: tuple[str, ...], key: str, guarded: tuple[str, ...]
) -> str:
    assignments = ", ".join(f'"{c}" = {pg_value(table, c)}' for c in columns if c != key)
    # The guarded columns' expected values travel as `seen_<column>`, of the column's type.
    types = ", ".join(
        [
            *(f'"{c}" {_pg_type(table, c)}' for c in columns),
            *(f'"seen_{c}" {_pg_type(table, c)}' for c in guarded),
        ]
    )
    matched = "".join(f' AND t."{c}" = v."seen_{c}"' for c in guarded)
    return (
        f'UPDATE "{table.name}" AS t SET {assignments} '  # noqa: S608
        f"FROM json_to_recordset($1::json) AS v({types}) "
        f'WHERE t."{key}" = {pg_value(table, key)}{matched}'
    )


def update_rows_if(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    guarded: Sequence[str],
    seen: Sequence[Sequence[Any]],
    *,
    key: str = "id",
) -> int:
    """`update_rows` for the rows whose `guarded` columns still hold the values `seen` (one
    tuple per row, in the rows' order); the number of rows updated."""
    if not rows:
        return 0
    columns = (*(name for name in rows[0] if name != key), key)
    names = tuple(guarded)
    if _dialect(conn) == "postgresql":
        payload = [
            {**row, **{f"seen_{c}": v for c, v in zip(names, values, strict=True)}}
            for row, values in zip(rows, seen, strict=True)
        ]
        result = conn.exec_driver_sql(
            _pg_update_if(table, columns, key, names),
            (pg_rows(table, columns, payload),),
        )
        return int(result.rowcount)
    sql, converters = _sqlite_update_if(table, columns, key, names)
    tuples = _sqlite_tuples(columns, converters, rows)
    result = conn.exec_driver_sql(
        sql, [(*values, *was) for values, was in zip(tuples, seen, strict=True)]
    )
    return int(result.rowcount)
