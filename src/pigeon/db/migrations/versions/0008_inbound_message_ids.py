"""inbound WhatsApp messages are applied once per provider message id

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 11:00:00

Infobip posts an inbound message again when its webhook saw no 2xx in time; each post told
the tenant again (`whatsapp.message.received`). `inbound_messages` keeps the ids already
applied, per owner, for the events' retention.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import pigeon.db.tables

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("owner", sa.String(length=24), nullable=False),
        sa.Column("provider_message_id", sa.String(length=100), nullable=False),
        sa.Column("received_at", pigeon.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "provider_message_id", name=op.f("pk_inbound_messages")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_received_at"), ["received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_received_at"))
    op.drop_table("inbound_messages")
