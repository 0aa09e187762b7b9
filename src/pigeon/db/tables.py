"""The schema, as SQLAlchemy Core tables: one schema for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(8), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

identities = Table(
    "identities",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("country", String(2)),
    Column("currency", String(3)),
    Column("data", JSON, nullable=False),
    Column("person", JSON),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The Infobip CDP sync: "pending", "synced" or "failed" (None: never asked to sync).
    Column("sync_state", String(16)),
    Column("sync_error", JSON),
    Column("synced_at", UTCDateTime()),
    Index("ix_identities_account_id_id", "account_id", "id"),
)

users = Table(
    "users",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("username", String(200), nullable=False),
    Column("data", JSON, nullable=False),
    Column("channel_sms", String(20)),
    Column("channel_whatsapp", String(20)),
    Column("channel_email", String(320)),
    Column("identity_id", String(24), ForeignKey("identities.id", ondelete="SET NULL")),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_users_account_id_id", "account_id", "id"),
    Index("uq_users_account_id_username", "account_id", "username", unique=True),
    # Inbound WhatsApp to the platform's number finds the Users who wrote (their tenants' event).
    Index("ix_users_channel_whatsapp", "channel_whatsapp"),
)

infobip_extensions = Table(
    "infobip_extensions",
    metadata,
    Column("account_id", String(24), ForeignKey("accounts.id"), primary_key=True),
    Column("base_url", String(500), nullable=False),
    Column("api_key", Text, nullable=False),
    Column("api_key_hint", String(8), nullable=False),
    Column("sms_sender", String(100)),
    Column("whatsapp_sender", String(20)),
    Column("email_sender", String(320)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

whatsapp_interactions = Table(
    "whatsapp_interactions",
    metadata,
    # owner: "platform" for the operator's number, else the tenant's account id.
    Column("owner", String(24), primary_key=True),
    Column("business_number", String(20), primary_key=True),
    Column("customer_number", String(20), primary_key=True),
    Column("first_inbound_at", UTCDateTime(), nullable=False),
    Column("last_inbound_at", UTCDateTime(), nullable=False),
    Column("last_message", JSON),
)

# Inbound WhatsApp messages already applied, by the provider's message id: Infobip posts a
# webhook again when it saw no 2xx in time, and a retry must not tell the tenant twice.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("owner", String(24), primary_key=True),  # as in whatsapp_interactions
    Column("provider_message_id", String(100), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False, index=True),  # when Pigeon got it
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient_type", String(8), nullable=False),
    Column("recipient_id", String(24)),
    Column("destination", String(320), nullable=False),
    # route: "platform" (the operator's provider account) or "tenant" (the Infobip extension).
    Column("route", String(8), nullable=False),
    Column("sender", String(320)),
    Column("content", JSON, nullable=False),
    Column("status_id", Integer, nullable=False),
    Column("group_id", Integer, nullable=False),
    Column("error", JSON),
    Column("provider", String(16)),
    Column("provider_message_id", String(100)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("done_at", UTCDateTime()),
    Index("ix_messages_account_id_id", "account_id", "id"),
    Index("ix_messages_status_id_next_attempt_at", "status_id", "next_attempt_at"),
    # Only sent messages have one (delivery reports look them up): a new message adds no entry.
    Index(
        "ix_messages_provider_message_id",
        "provider_message_id",
        sqlite_where=text("provider_message_id IS NOT NULL"),
        postgresql_where=text("provider_message_id IS NOT NULL"),
    ),
)

message_events = Table(
    "message_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False, index=True),
    Column("status_id", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("detail", JSON),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=False, index=True),
    Column("worker_id", String(64), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("duration_ms", Float),
    # accepted, rejected, transient, or skipped (the provider had it already: not sent again)
    Column("outcome", String(16), nullable=False),
    Column("http_status", Integer),
    Column("response", Text),
    Column("error", JSON),
)

cdp_sync_jobs = Table(
    "cdp_sync_jobs",
    metadata,
    Column("identity_id", String(24), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # A hash of (account, method, path, key): one short primary key that every engine can
    # look many up by at once (row-value IN lists are not indexed by SQLite). `scope_id`.
    Column("scope", LargeBinary(16), primary_key=True),
    Column("account_id", String(24), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

# A console sign-in: the cookie's token is kept only as its SHA-256 (migration 0005).
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

# Webhook tokens that can no longer be derived (pigeon.webhooks.tokens), as SHA-256.
webhook_token_hashes = Table(
    "webhook_token_hashes",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("token_hash", String(64), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

platform_state = Table(
    "platform_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Events to tenants (issue 14): each row is written in the transaction of the change it tells.
events = Table(
    "events",
    metadata,
    # The order events were written in: what the stream tails and the list pages by.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("type", String(40), nullable=False),
    # The message the event is about (Infobip's id for an inbound WhatsApp message).
    Column("message_id", String(100)),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    # The event exactly as every delivery posts it: the signed bytes never change.
    Column("body", Text, nullable=False),
    Index("ix_events_account_id_seq", "account_id", "seq"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("account_id", String(24), ForeignKey("accounts.id"), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("events", JSON),  # the subscribed event types; None: all of them
    Column("description", String(500), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", String(200)),
    Column("secret", Text, nullable=False),  # encrypted (extensions/crypto.py)
    Column("previous_secret", Text),  # encrypted; signs too until rotated_at + the overlap
    Column("rotated_at", UTCDateTime()),
    # The first failed attempt since the last success: an endpoint failing for too long is
    # disabled.
    Column("failing_since", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_endpoints_account_id_id", "account_id", "id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, index=True),
    Column("endpoint_id", String(24), nullable=False),
    Column("state", String(10), nullable=False),  # pending, succeeded, failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", Integer, nullable=False, index=True),
    Column("endpoint_id", String(24), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
    Column("duration_ms", Float),
    Column("response", Text),
    Column("state", String(10), nullable=False),  # the delivery's state after this attempt
    Column("next_attempt_at", UTCDateTime()),
    Index("ix_webhook_attempts_endpoint_id_id", "endpoint_id", "id"),
)
