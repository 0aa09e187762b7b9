"""index only the messages that have a provider message id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:30:00

A message has no provider message id until dispatch has sent it, so the full index gained an
entry (NULL) for every accepted send: one more B-tree insert, and its page written to the
write-ahead log, in every commit of the accept path. Delivery reports look messages up by
`provider_message_id IN (...)`, which implies IS NOT NULL, so both engines use the partial
index for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_messages_provider_message_id"
HAS_PROVIDER_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index(INDEX, table_name="messages")
    op.create_index(
        INDEX,
        "messages",
        ["provider_message_id"],
        sqlite_where=HAS_PROVIDER_ID,
        postgresql_where=HAS_PROVIDER_ID,
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="messages")
    op.create_index(INDEX, "messages", ["provider_message_id"])
