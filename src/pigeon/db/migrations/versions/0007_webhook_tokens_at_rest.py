"""webhook tokens are no longer stored: they are derived from the server's secret

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:00:00

A webhook URL's token (`/v1/webhooks/infobip/{owner}/{token}/...`) authenticates Infobip's
delivery reports and inbound messages. It was stored in clear (`accounts.webhook_token`, the
`platform_webhook_token` row of `platform_state`), so whoever could read the database could
forge reports. Tokens are now HMAC(server secret, owner) (`pigeon.webhooks.tokens`): nothing
stored lets one compute them.

URLs already configured in Infobip keep working: the upgrade keeps the SHA-256 of each existing
token in `webhook_token_hashes`, which the webhooks also accept, and drops the clear tokens.
A downgrade cannot bring the clear tokens back: it gives each account a new random token (the
older version then shows new URLs, and the URLs configured before this upgrade stop working).
"""

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import pigeon.db.tables

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLATFORM = "platform"
PLATFORM_TOKEN_ROW = "platform_webhook_token"  # noqa: S105 - a row's name


def _token_hash(token: str) -> str:
    # pigeon.webhooks.tokens.token_hash when this was written
    return hashlib.sha256(token.encode()).hexdigest()


def upgrade() -> None:
    hashes = op.create_table(
        "webhook_token_hashes",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", pigeon.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "token_hash", name=op.f("pk_webhook_token_hashes")),
    )
    bind = op.get_bind()
    now = datetime.now(UTC)
    rows = [
        {"owner": owner, "token_hash": _token_hash(token), "created_at": now}
        for owner, token in bind.execute(sa.text("SELECT id, webhook_token FROM accounts"))
    ]
    platform = bind.execute(
        sa.text("SELECT value FROM platform_state WHERE name = :name"), {"name": PLATFORM_TOKEN_ROW}
    ).scalar_one_or_none()
    if platform is not None:
        rows.append({"owner": PLATFORM, "token_hash": _token_hash(platform), "created_at": now})
    if rows:
        op.bulk_insert(hashes, rows)
    bind.execute(
        sa.text("DELETE FROM platform_state WHERE name = :name"), {"name": PLATFORM_TOKEN_ROW}
    )
    # SQLite 3.35+ drops a plain column in place (no table rebuild, which foreign keys forbid).
    op.execute("ALTER TABLE accounts DROP COLUMN webhook_token")


def downgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("webhook_token", sa.String(length=64), nullable=False, server_default=""),
    )
    bind = op.get_bind()
    for (account_id,) in bind.execute(sa.text("SELECT id FROM accounts")).all():
        bind.execute(
            sa.text("UPDATE accounts SET webhook_token = :token WHERE id = :id"),
            {"token": secrets.token_urlsafe(32), "id": account_id},
        )
    op.drop_table("webhook_token_hashes")
