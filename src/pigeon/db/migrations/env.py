"""Alembic environment: runs migrations through the same async engine the app uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pigeon.db.engine import create_engine
from pigeon.db.tables import metadata

config = context.config


# Any constant will do: it names the lock every `pigeon db upgrade` takes on PostgreSQL.
MIGRATION_LOCK_ID = 7_406_119_001


def _run(connection: Connection) -> None:
    # Every migration runs in the one transaction begun here, which `_run_async` commits:
    # begun before `configure`, alembic commits none itself. (Left to begin it, alembic would
    # commit after each migration on SQLite, where it assumes DDL is not transactional; a
    # concurrent upgrade could then take the lock in between and run the next migration too.)
    if connection.dialect.name == "postgresql":
        # Concurrent upgrades queue here; each then reads the version the previous one left.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    else:
        connection.begin()  # SQLite: BEGIN IMMEDIATE, its write lock: the same effect
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(config.attributes["database_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `pigeon db upgrade`")
asyncio.run(_run_async())
