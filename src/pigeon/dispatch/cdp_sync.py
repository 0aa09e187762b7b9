"""Running CDP sync jobs: upsert each queued person in the tenant's Infobip People."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import cdp_sync_jobs, identities
from pigeon.db.writer import Writer
from pigeon.dispatch.backoff import retry_delay
from pigeon.dispatch.registry import ProviderRegistry
from pigeon.providers.base import ProviderError, TransientError

log = structlog.get_logger("pigeon.cdp_sync")
EXTENSION_GONE = {
    "description": "the Infobip extension was disabled before the person was synced",
    "permanent": True,
}


def claim_due_jobs(
    conn: Connection, *, worker_id: str, limit: int, lease_seconds: float
) -> list[Any]:
    """Lease due sync jobs, with the identity each one mirrors (in the caller's transaction)."""
    now = utcnow()
    due = (
        select(cdp_sync_jobs.c.identity_id)
        .where(
            cdp_sync_jobs.c.next_attempt_at <= now,
            or_(cdp_sync_jobs.c.lease_expires_at.is_(None), cdp_sync_jobs.c.lease_expires_at < now),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = conn.execute(
        update(cdp_sync_jobs)
        .where(cdp_sync_jobs.c.identity_id.in_(due.scalar_subquery()))
        .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(cdp_sync_jobs.c.identity_id, cdp_sync_jobs.c.attempts)
    ).all()
    if not claimed:
        return []
    attempts = {row.identity_id: row.attempts for row in claimed}
    rows = conn.execute(select(identities).where(identities.c.id.in_(list(attempts))))
    return [(row, attempts[row.id]) for row in rows]


async def run_sync_jobs(
    engine: AsyncEngine,
    settings: Settings,
    registry: ProviderRegistry,
    *,
    worker_id: str,
    writer: Writer,
) -> int:
    """One round of CDP sync; the number of jobs run. The claim, every round, goes through
    the process's writer (`db.writer`)."""
    jobs = await writer.transaction(
        claim_due_jobs, worker_id=worker_id, limit=50, lease_seconds=settings.worker_lease_seconds
    )
    for identity, attempts in jobs:
        await _run_one(engine, settings, registry, identity, attempts)
    return len(jobs)


async def _run_one(
    engine: AsyncEngine,
    settings: Settings,
    registry: ProviderRegistry,
    identity: Any,
    attempts: int,
) -> None:
    async with engine.begin() as conn:  # may create the platform webhook token
        people = await registry.people_for(conn=conn, owner=identity.account_id)
    if people is None:
        await _finish(engine, identity.id, state="failed", error=EXTENSION_GONE)
        return
    person = identity.person or {}
    contact = person.get("contactInformation") or {}
    try:
        await people.upsert_person(
            external_id=identity.id,
            first_name=person.get("firstName"),
            last_name=person.get("lastName"),
            phones=[p["number"] for p in contact.get("phone", [])],
            emails=[e["address"] for e in contact.get("email", [])],
        )
    except TransientError as exc:
        error = exc.error or {"description": exc.reason, "permanent": False}
        if attempts + 1 >= settings.max_attempts:
            await _finish(engine, identity.id, state="failed", error=error)
        else:
            await _retry(engine, identity.id, attempts + 1, error, exc.retry_after)
        return
    except ProviderError as exc:
        await _finish(
            engine,
            identity.id,
            state="failed",
            error=exc.error or {"description": exc.reason, "permanent": True},
        )
        log.warning("person sync failed", identity=identity.id, reason=exc.reason)
        return
    await _finish(engine, identity.id, state="synced", error=None)


async def _finish(
    engine: AsyncEngine, identity_id: str, *, state: str, error: dict[str, Any] | None
) -> None:
    values: dict[str, Any] = {"sync_state": state, "sync_error": error}
    if state == "synced":
        values["synced_at"] = utcnow()
    async with engine.begin() as conn:
        await conn.execute(delete(cdp_sync_jobs).where(cdp_sync_jobs.c.identity_id == identity_id))
        await conn.execute(
            update(identities).where(identities.c.id == identity_id).values(**values)
        )


async def _retry(
    engine: AsyncEngine,
    identity_id: str,
    attempts: int,
    error: dict[str, Any],
    retry_after: float | None,
) -> None:
    delay = retry_delay(attempts, retry_after=retry_after)
    async with engine.begin() as conn:
        await conn.execute(
            update(cdp_sync_jobs)
            .where(cdp_sync_jobs.c.identity_id == identity_id)
            .values(
                attempts=attempts,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
            )
        )
        await conn.execute(
            update(identities).where(identities.c.id == identity_id).values(sync_error=error)
        )
