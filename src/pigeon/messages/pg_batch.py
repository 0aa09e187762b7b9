"""A batch of accepted sends as one PostgreSQL statement (after one SET: see `run_batch`).

The rows travel as two JSON parameters (the messages, and their idempotency records). One
statement, with data-modifying CTEs:
- inserts each idempotency record. A key whose record has expired is replaced. A key with a
  live record (a retried request) is left alone, and is missing from the count the statement
  returns;
- inserts the messages and their first events (PENDING_ACCEPTED, from "api").

`run_batch` raises KeyInUse when that count is short. The caller rolls the transaction back
and plans the batch again, reading the records, to replay their answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

from pigeon.db.bulk import CACHED_PLANS, pg_recordset, pg_rows, pg_values, quoted
from pigeon.db.tables import idempotency_keys, messages
from pigeon.idempotency.store import KeyInUse, replace_expired


@cache
def _statement(message_columns: tuple[str, ...], record_columns: tuple[str, ...]) -> str:
    # Names come from our own table definitions, never from input; the rows are bound.
    return f"""
WITH k AS (
  INSERT INTO idempotency_keys ({quoted(record_columns)})
  SELECT {pg_values(idempotency_keys, record_columns)}
  FROM {pg_recordset(idempotency_keys, record_columns, 2)}
  {replace_expired(record_columns)}
  RETURNING 1
), m AS (
  INSERT INTO messages ({quoted(message_columns)})
  SELECT {pg_values(messages, message_columns)} FROM {pg_recordset(messages, message_columns, 1)}
  RETURNING id, status_id, created_at
), e AS (
  INSERT INTO message_events (message_id, status_id, source, at)
  SELECT id, status_id, 'api', created_at FROM m
)
SELECT count(*) FROM k"""  # noqa: S608


def run_batch(
    conn: Connection,
    new_messages: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any] | None],
) -> None:
    """Insert a batch's messages, first events and idempotency records, in the caller's
    transaction; KeyInUse if one of the keys has a live record (nothing is then to be kept)."""
    if not new_messages:
        return
    # Pigeon's connections plan every statement for its values (`db.engine`), since a plan
    # cached while a table is new can stay a sequential scan as it grows. This one's plan
    # depends on no value and scans no table (rows from two JSON parameters, inserts,
    # primary-key conflicts), and planning its CTEs each time cost PostgreSQL more than
    # executing them: let it be cached, for the rest of this transaction only.
    conn.exec_driver_sql(CACHED_PLANS)
    # In key order: two processes inserting the same keys lock them in the same order, so one
    # waits for the other instead of the two deadlocking.
    kept = sorted((r for r in records if r is not None), key=itemgetter("scope"))
    message_columns = tuple(new_messages[0])
    record_columns = tuple(kept[0]) if kept else tuple(c.name for c in idempotency_keys.columns)
    stored = conn.exec_driver_sql(
        _statement(message_columns, record_columns),
        (
            pg_rows(messages, message_columns, new_messages),
            pg_rows(idempotency_keys, record_columns, kept),
        ),
    ).scalar_one()
    if stored != len(kept):
        raise KeyInUse()
