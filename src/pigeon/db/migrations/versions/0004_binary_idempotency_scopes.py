"""store idempotency scopes as 16 bytes, not 64 hex characters

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:00:00

Every accepted send inserts its idempotency record's scope into the primary key's index, at a
random place (the scope is a hash). Each commit of the accept path so wrote about one index
page per send, and the index split often: a quarter of the key size makes it a quarter the
pages, and makes splits rarer.

A stored scope was the SHA-256 of (account, method, path, key) as 64 hex characters; it is now
the first 16 bytes of the same digest (`pigeon.idempotency.store.scope_id`). The upgrade
converts every record, so a request accepted before it is still recognised when retried after.

A downgrade turns each 16-byte scope back into text (32 hex characters), but the older code
looks records up by the full 64-character digest: requests accepted before a downgrade are
not recognised as repeats by the older version until their records expire.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPE_BYTES = 16  # pigeon.idempotency.store.SCOPE_BYTES when this was written
HEX = 2 * SCOPE_BYTES


def _sqlite_function(name: str, function: object) -> None:
    # SQLite (3.40 on Debian 12) has hex() but no unhex(): the conversion runs in Python.
    op.get_bind().connection.dbapi_connection.create_function(  # type: ignore[union-attr]
        name, 1, function, deterministic=True
    )


def _from_hex(scope: str | bytes) -> bytes:
    return scope if isinstance(scope, bytes) else bytes.fromhex(scope[:HEX])


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "idempotency_keys",
            "scope",
            type_=sa.LargeBinary(length=SCOPE_BYTES),
            existing_nullable=False,
            postgresql_using=f"decode(substr(scope, 1, {HEX}), 'hex')",
        )
        return
    # SQLite keeps a blob as it is in any column: convert the values, then the declared type
    # (the table is rebuilt, its rows copied unchanged).
    _sqlite_function("pigeon_scope_from_hex", _from_hex)
    op.execute("UPDATE idempotency_keys SET scope = pigeon_scope_from_hex(scope)")
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.alter_column(
            "scope",
            type_=sa.LargeBinary(length=SCOPE_BYTES),
            existing_type=sa.String(length=64),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "idempotency_keys",
            "scope",
            type_=sa.String(length=64),
            existing_nullable=False,
            postgresql_using="encode(scope, 'hex')",
        )
        return
    op.execute("UPDATE idempotency_keys SET scope = lower(hex(scope))")
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.alter_column(
            "scope",
            type_=sa.String(length=64),
            existing_type=sa.LargeBinary(length=SCOPE_BYTES),
            existing_nullable=False,
        )
