"""A batch of accepted sends as one SQLite statement: one call into SQLite per commit.

The accept path's SQLite writer thread needs the GIL back after every call into SQLite, and
while the event loop is busy each hand-over costs a few hundred microseconds. So a batch is
one `INSERT INTO accept_rows VALUES (...), (...)`: one row per accepted send, holding what
differs between sends of its message's columns and its idempotency record's. `accept_rows` is
a TEMP view (it exists only on the writer's own connection, never in the schema) whose
INSTEAD OF trigger, for each row:
- inserts the message and its first event (PENDING_ACCEPTED, from "api");
- inserts its idempotency record, or replaces the key's expired one (an upsert);
- fails the whole statement with REPLAYED when the key's record is live, so that the upsert
  changed nothing (the batch was planned without reading the records: see `AcceptPipeline`).

Run outside an explicit transaction, that one statement is its own transaction: it takes the
write lock (waiting up to the busy timeout for another process), inserts everything, and
commits with its fsync before it returns; on any error nothing of it is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from pigeon.db.bulk import SQLITE_MAX_PARAMETERS, json_text, quoted, sqlite_datetime
from pigeon.idempotency.store import replace_expired
from pigeon.messages.plan import ACCEPTED_STATUS_CODE, NEW_MESSAGE_STATE

# A new message's columns that a row binds; the rest (error, provider, lease, sent_at...)
# start NULL.
MESSAGE_COLUMNS = (
    "id",
    "account_id",
    "channel",
    "recipient_type",
    "recipient_id",
    "destination",
    "route",
    "sender",
    "content",
    "created_at",
)
# An idempotency record's columns that a row binds: its account_id and created_at are the
# message's, and its status_code is ACCEPTED_STATUS_CODE.
RECORD_COLUMNS = ("scope", "method", "path", "key", "fingerprint", "response_body", "expires_at")
COLUMNS = MESSAGE_COLUMNS + RECORD_COLUMNS

# The most sends one statement holds (SQLite's limit on bound parameters).
MAX_ROWS = SQLITE_MAX_PARAMETERS // len(COLUMNS)

# The error message of a batch that holds a send whose idempotency key has a live record.
REPLAYED = "pigeon: an idempotency key of this batch has a live record"


def _setup_sql() -> str:
    nulls = ", ".join("NULL" for _ in COLUMNS)
    state = NEW_MESSAGE_STATE
    message = (*MESSAGE_COLUMNS, *state, "next_attempt_at", "updated_at")
    message_values = (
        quoted(MESSAGE_COLUMNS, "NEW."),
        *(str(value) for value in state.values()),
        "NEW.created_at, NEW.created_at",
    )
    record = ("scope", "account_id", *RECORD_COLUMNS[1:], "status_code", "created_at")
    record_values = f"{quoted(record[:-2], 'NEW.')}, {ACCEPTED_STATUS_CODE}, NEW.created_at"
    # Names and numbers come from our own definitions, never from input.
    return f"""
CREATE TEMP VIEW IF NOT EXISTS accept_rows ({quoted(COLUMNS)}) AS SELECT {nulls};
CREATE TEMP TRIGGER IF NOT EXISTS accept_rows_insert INSTEAD OF INSERT ON accept_rows BEGIN
  INSERT INTO messages ({quoted(message)}) VALUES ({", ".join(message_values)});
  INSERT INTO message_events (message_id, status_id, source, at)
    VALUES (NEW.id, {state["status_id"]}, 'api', NEW.created_at);
  INSERT INTO idempotency_keys ({quoted(record)})
    SELECT {record_values} WHERE NEW.scope IS NOT NULL
    {replace_expired(record)};
  SELECT RAISE(ABORT, '{REPLAYED}') WHERE NEW.scope IS NOT NULL AND changes() = 0;
END;
"""  # noqa: S608


SETUP_SQL = _setup_sql()

_message_values = itemgetter(*MESSAGE_COLUMNS)
_record_values = itemgetter(*RECORD_COLUMNS)
_NO_RECORD = (None,) * len(RECORD_COLUMNS)
_CONTENT = MESSAGE_COLUMNS.index("content")
_CREATED_AT = MESSAGE_COLUMNS.index("created_at")
assert RECORD_COLUMNS[-1] == "expires_at"  # `batch_statement` converts a record's last value


@functools.lru_cache(maxsize=256)
def _insert_sql(count: int) -> str:
    row = "(" + ", ".join("?" for _ in COLUMNS) + ")"
    # Names come from our own definitions; the values are bound.
    return f"INSERT INTO accept_rows ({quoted(COLUMNS)}) VALUES {', '.join([row] * count)}"  # noqa: S608


def batch_statement(
    new_messages: Sequence[dict[str, Any]], records: Sequence[dict[str, Any] | None]
) -> tuple[str, list[Any]]:
    """The batch as one `accept_rows` insert (a batch of up to MAX_ROWS sends).

    `records[i]` is the idempotency record of `new_messages[i]` (None without an
    idempotency-key). The statement fails with REPLAYED if one of the keys has a live record.
    """
    parameters: list[Any] = []
    for message, record in zip(new_messages, records, strict=True):
        values = list(_message_values(message))
        values[_CONTENT] = json_text(values[_CONTENT])
        values[_CREATED_AT] = sqlite_datetime(values[_CREATED_AT])
        parameters += values
        if record is None:
            parameters += _NO_RECORD
        else:
            parameters += _record_values(record)
            parameters[-1] = sqlite_datetime(parameters[-1])  # its expires_at
    return _insert_sql(len(new_messages)), parameters
