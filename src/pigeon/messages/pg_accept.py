"""The accept path's PostgreSQL writer: one batch at a time, on a connection held while they come.

Each batch is one transaction on the async engine: plan (`plan`), then one statement that
inserts its rows (`pg_batch`), then the commit. Checking a connection out of the pool for each
batch cost a round trip to the server (the pool's ping) and about 8% of an API process's time
under load, so the connection is held while batches keep coming. One left idle for
HOLD_IDLE_SECONDS goes back to the pool, and the next checkout pings it first. If the held one
turns out to be gone (the server restarted) while the batch is still reading, the batch is
tried once more on a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.config import Settings
from pigeon.idempotency.store import KeyInUse
from pigeon.messages.pg_batch import run_batch
from pigeon.messages.plan import KeyCollision, Outcome, SendRequest, plan_batch

log = structlog.get_logger("pigeon.accept")
HOLD_IDLE_SECONDS = 1.0


class PostgresAcceptWriter:
    """Batches of sends on PostgreSQL: plan and insert in one transaction, one at a time."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._held: AsyncConnection | None = None
        self._held_until = 0.0

    def start(self, on_room: Callable[[], None]) -> None:
        """Nothing to start: a batch's end is its room (the pipeline sees it)."""

    def has_room(self, queued: int, in_flight: int) -> bool:
        """One batch at a time: each holds the connection until its commit."""
        return not in_flight

    def write(self, batch: list[SendRequest]) -> Awaitable[list[Outcome]]:
        """Plan the batch as if its keys were new, and write it."""
        return self._run(batch, read_keys=False)

    async def rewrite(self, batch: list[SendRequest]) -> list[Outcome]:
        """Plan the batch reading its idempotency records, and write it."""
        return await self._run(batch, read_keys=True)

    async def close(self) -> None:
        """Give the held connection back."""
        held, self._held = self._held, None
        await self._release(held)

    async def _run(self, batch: list[SendRequest], *, read_keys: bool) -> list[Outcome]:
        for attempt in range(2):
            conn = await self._connection()
            planned = False
            try:
                async with conn.begin():
                    outcomes, writes = await conn.run_sync(
                        plan_batch, batch, self.settings, read_keys=read_keys
                    )
                    planned = True
                    await conn.run_sync(run_batch, writes.messages, writes.keys)
            except KeyInUse:
                raise  # rolled back; the connection is sound
            except IntegrityError as exc:
                # Another process stored one of these idempotency keys after the batch read
                # them (rolled back; the connection is sound).
                raise KeyCollision() from exc
            except BaseException as exc:
                self._held = None  # the next batch starts on another connection
                await self._release(conn, broken=True)
                lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
                if lost and not planned and attempt == 0:
                    continue  # the held connection was gone before anything was written
                raise
            self._held_until = asyncio.get_running_loop().time() + HOLD_IDLE_SECONDS
            return outcomes
        raise AssertionError("unreachable")

    async def _connection(self) -> AsyncConnection:
        """The connection batches run on: the held one, unless it has been idle too long."""
        if self._held is not None and asyncio.get_running_loop().time() > self._held_until:
            held, self._held = self._held, None
            await self._release(held)
        if self._held is None:
            self._held = await self.engine.connect()
        return self._held

    async def _release(self, conn: AsyncConnection | None, *, broken: bool = False) -> None:
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            await conn.close()
        except Exception:
            log.warning("closing an accept connection failed", exc_info=True)
