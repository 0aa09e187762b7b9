"""The Infobip CDP sync: persons are mirrored to the tenant's Infobip People while enabled.

Creating or updating a person queues a job (one per identity: a newer change replaces an
older pending one); workers run the jobs with the same lease and retry rules as messages.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.db.tables import cdp_sync_jobs, identities, infobip_extensions


async def request_sync(*, conn: AsyncConnection, account_id: str, identity_id: str) -> None:
    """Queue a sync of this identity if it is a person and the tenant's extension is on."""
    enabled = (
        await conn.execute(
            select(infobip_extensions.c.account_id).where(
                infobip_extensions.c.account_id == account_id
            )
        )
    ).first()
    kind = (
        await conn.execute(select(identities.c.type).where(identities.c.id == identity_id))
    ).scalar_one()
    if enabled is None or kind != "person":
        return
    now = utcnow()
    await conn.execute(delete(cdp_sync_jobs).where(cdp_sync_jobs.c.identity_id == identity_id))
    await conn.execute(
        cdp_sync_jobs.insert().values(
            identity_id=identity_id,
            account_id=account_id,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    await conn.execute(
        update(identities)
        .where(identities.c.id == identity_id)
        .values(sync_state="pending", sync_error=None)
    )


def sync_view(row: Any) -> dict[str, Any] | None:
    """The sync state as the API shows it; None when the identity was never synced."""
    if row.sync_state is None:
        return None
    return {"state": row.sync_state, "error": row.sync_error, "syncedAt": row.synced_at}


async def request_sync_all(*, conn: AsyncConnection, account_id: str) -> None:
    """Queue a sync of every person of the tenant (the extension was just enabled or changed)."""
    now = utcnow()
    persons = (
        (
            await conn.execute(
                select(identities.c.id).where(
                    identities.c.account_id == account_id, identities.c.type == "person"
                )
            )
        )
        .scalars()
        .all()
    )
    await conn.execute(delete(cdp_sync_jobs).where(cdp_sync_jobs.c.account_id == account_id))
    if not persons:
        return
    await conn.execute(
        cdp_sync_jobs.insert(),
        [
            {
                "identity_id": identity_id,
                "account_id": account_id,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for identity_id in persons
        ],
    )
    await conn.execute(
        update(identities)
        .where(identities.c.account_id == account_id, identities.c.type == "person")
        .values(sync_state="pending", sync_error=None)
    )
