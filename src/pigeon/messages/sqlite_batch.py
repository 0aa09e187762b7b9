"""A batch of accepted sends as one SQLite statement: one call into SQLite per commit.

The accept path's SQLite writer thread needs the GIL back after every call into SQLite, and
while the event loop is busy each hand-over costs a few hundred microseconds. So a batch is
one `INSERT INTO accept_rows VALUES (...), (...)`: one row per accepted send, holding the
message's columns and its idempotency record's. `accept_rows` is a TEMP view (it exists only
on the writer's own connection, never in the schema) whose INSTEAD OF trigger, for each row:
- fails the whole statement with REPLAYED when the send's idempotency key already has a live
  record (the batch was planned without reading the records: see `AcceptPipeline`);
- deletes the key's expired record, if any (the send replaces it);
- inserts the message, its first event (PENDING_ACCEPTED, from "api") and its idempotency
  record.

Run outside an explicit transaction, that one statement is its own transaction: it takes the
write lock (waiting up to the busy timeout for another process), inserts everything, and
commits with its fsync before it returns; on any error nothing of it is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, MetaData, Table

from pigeon.db.bulk import SQLITE_MAX_PARAMETERS, quoted, sqlite_insert_statements
from pigeon.db.tables import idempotency_keys, messages

# The columns a new message sets; the rest (error, provider, lease, sent_at...) start NULL.
NEW_MESSAGE_COLUMNS = (
    "id",
    "account_id",
    "channel",
    "recipient_type",
    "recipient_id",
    "destination",
    "route",
    "sender",
    "content",
    "status_id",
    "group_id",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)
# An idempotency record's own columns; its account_id and created_at are the message's.
_RECORD_COLUMNS = (
    "scope",
    "method",
    "path",
    "key",
    "fingerprint",
    "status_code",
    "response_body",
    "expires_at",
)

accept_rows = Table(
    "accept_rows",
    MetaData(),  # not Pigeon's metadata: a view on the writer's connection, not a table
    *(Column(name, messages.c[name].type) for name in NEW_MESSAGE_COLUMNS),
    *(Column(name, idempotency_keys.c[name].type) for name in _RECORD_COLUMNS),
)

# The most sends one statement holds (SQLite's limit on bound parameters).
MAX_ROWS = SQLITE_MAX_PARAMETERS // len(accept_rows.columns)


def _setup_sql() -> str:
    columns = [c.name for c in accept_rows.columns]
    record = ("scope", "account_id", *_RECORD_COLUMNS[1:], "created_at")
    nulls = ", ".join("NULL" for _ in columns)
    # Names come from our own table definitions, never from input.
    return f"""
CREATE TEMP VIEW IF NOT EXISTS accept_rows ({quoted(columns)}) AS SELECT {nulls};
CREATE TEMP TRIGGER IF NOT EXISTS accept_rows_insert INSTEAD OF INSERT ON accept_rows BEGIN
  SELECT RAISE(ABORT, '{REPLAYED}') WHERE NEW.scope IS NOT NULL AND EXISTS (
    SELECT 1 FROM idempotency_keys WHERE scope = NEW.scope AND expires_at > NEW.created_at);
  DELETE FROM idempotency_keys
    WHERE NEW.scope IS NOT NULL AND scope = NEW.scope AND expires_at <= NEW.created_at;
  INSERT INTO messages ({quoted(NEW_MESSAGE_COLUMNS)})
    VALUES ({quoted(NEW_MESSAGE_COLUMNS, "NEW.")});
  INSERT INTO message_events (message_id, status_id, source, at)
    VALUES (NEW.id, NEW.status_id, 'api', NEW.created_at);
  INSERT INTO idempotency_keys ({quoted(record)})
    SELECT {quoted(record, "NEW.")} WHERE NEW.scope IS NOT NULL;
END;
"""  # noqa: S608


# The error message of a batch that holds a send whose idempotency key has a live record.
REPLAYED = "pigeon: an idempotency key of this batch has a live record"
SETUP_SQL = _setup_sql()


def batch_statement(
    new_messages: Sequence[dict[str, Any]], records: Sequence[dict[str, Any] | None]
) -> tuple[str, list[Any]]:
    """The batch as one `accept_rows` insert (a batch of up to MAX_ROWS sends).

    `records[i]` is the idempotency record of `new_messages[i]` (None without an
    idempotency-key). The statement fails with REPLAYED if one of the keys has a live record.
    """
    none = dict.fromkeys(_RECORD_COLUMNS)
    rows = []
    for message, record in zip(new_messages, records, strict=True):
        row = dict(message)
        if record is None:
            row.update(none)
        else:
            for name in _RECORD_COLUMNS:
                row[name] = record[name]
        rows.append(row)
    [statement] = sqlite_insert_statements(accept_rows, rows)  # one, for MAX_ROWS or fewer
    return statement
