"""PostgreSQL: Pigeon's prepared statements are planned for their actual values, every time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.engine import create_engine
from tests.conftest import DATABASES

pytestmark = pytest.mark.skipif(DATABASES.engine != "postgresql", reason="PostgreSQL planning")
PLANS = (
    "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
    " FROM pg_prepared_statements WHERE statement LIKE 'SELECT v FROM records%'"
)


def _migrated(tmp_path: Path) -> Settings:
    """Settings for a new database at the code's migration head."""
    from pigeon.db.migrate import upgrade

    settings = Settings(database_url=DATABASES.new_url(tmp_path), secret_key="plans-test")
    upgrade(settings)
    return settings


def _demo_message(message_id: str) -> dict[str, Any]:
    """A message row of the demo tenant's, as the accept path plans one."""
    from pigeon.demo import DEMO_ACCOUNT_ID
    from pigeon.messages.plan import message_row
    from pigeon.messages.rules import Draft

    draft = Draft(
        DEMO_ACCOUNT_ID, "sms", "app", None, "38598123456", "platform", "Pigeon", {"text": "x"}
    )
    return message_row(message_id, draft, utcnow())


def _plans_of(statement_like: str) -> str:
    """How often the prepared statements like it ran on a cached plan and on a custom one."""
    return (
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
        f" WHERE statement LIKE '{statement_like}'"
    )


def test_a_read_prepared_on_an_empty_table_is_not_stuck_with_its_first_plan(
    tmp_path: Path,
) -> None:
    # asyncpg prepares each statement; after five runs PostgreSQL may cache a generic plan,
    # and one made while the table was empty is a sequential scan that stays as it grows.
    url = DATABASES.new_url(tmp_path)

    async def scenario() -> tuple[int, int, str]:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE records (k varchar PRIMARY KEY, v text)"))
            read = text("SELECT v FROM records WHERE k IN (:a, :b, :c)")
            async with engine.connect() as conn:
                for n in range(10):
                    await conn.execute(read, {"a": f"a{n}", "b": f"b{n}", "c": f"c{n}"})
                await conn.execute(
                    text(
                        "INSERT INTO records SELECT 'k' || i, 'v' FROM generate_series(1, 20000) i"
                    )
                )
                found = (await conn.execute(read, {"a": "k1", "b": "k2", "c": "nope"})).all()
                plans = (await conn.execute(text(PLANS))).one()
                mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one()
                await conn.rollback()
            assert len(found) == 2
            return int(plans[0]), int(plans[1]), str(mode)
        finally:
            await engine.dispose()

    generic, custom, mode = asyncio.run(scenario())
    assert generic == 0
    assert custom >= 11
    assert mode == "force_custom_plan"


def test_the_accept_batch_insert_reuses_its_plan_and_leaves_the_setting_alone(
    tmp_path: Path,
) -> None:
    # The accept path's insert takes its rows as JSON parameters: its plan depends on no
    # value, and planning it for each batch cost PostgreSQL more than running it. It is let
    # use a cached plan for its own transaction only; reads after it are planned anew.
    from pigeon.demo import seed_demo
    from pigeon.ids import new_message_id
    from pigeon.messages.pg_batch import run_batch

    settings = _migrated(tmp_path)
    batch_plans = (
        _plans_of("%INSERT INTO idempotency_keys%")
        + " AND statement NOT LIKE '%pg_prepared_statements%'"
    )

    def message() -> dict[str, Any]:
        return _demo_message(new_message_id())

    async def scenario() -> tuple[int, int, str, int]:
        engine = create_engine(settings.database_url)
        try:
            await seed_demo(engine, settings)
            async with engine.connect() as conn:
                for _ in range(10):
                    async with conn.begin():
                        await conn.run_sync(run_batch, [message(), message()], [None, None])
                generic, custom = (await conn.execute(text(batch_plans))).one()
                mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one()
                stored = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one()
                await conn.rollback()
            return int(generic), int(custom), str(mode), int(stored)
        finally:
            await engine.dispose()

    generic, custom, mode, stored = asyncio.run(scenario())
    assert stored == 20
    assert generic >= 5  # PostgreSQL plans the first five runs for their values, then caches
    assert custom <= 5
    assert mode == "force_custom_plan"


def test_bulk_inserts_reuse_their_plans_and_give_the_setting_back_within_the_transaction(
    tmp_path: Path,
) -> None:
    # Each row a bulk insert writes has its foreign keys checked by a query PostgreSQL keeps
    # prepared; under force_custom_plan it was planned again for every row. The insert runs
    # with cached plans, and the statements after it in the same transaction are planned for
    # their values again.
    from pigeon.db.bulk import insert_rows
    from pigeon.db.tables import message_events
    from pigeon.demo import seed_demo
    from pigeon.ids import new_message_id
    from pigeon.messages.pg_batch import run_batch

    settings = _migrated(tmp_path)
    insert_plans = _plans_of('INSERT INTO "message_events"%')
    ids = [new_message_id() for _ in range(10)]

    async def scenario() -> tuple[int, int, list[str], int]:
        engine = create_engine(settings.database_url)
        try:
            await seed_demo(engine, settings)
            modes = []
            async with engine.connect() as conn:
                async with conn.begin():
                    rows = [_demo_message(i) for i in ids]
                    await conn.run_sync(run_batch, rows, [None] * len(rows))
                for message_id in ids:
                    async with conn.begin():
                        history = {
                            "message_id": message_id,
                            "status_id": 7,
                            "source": "worker",
                            "at": utcnow(),
                            "detail": None,
                        }
                        await conn.run_sync(insert_rows, message_events, [history])
                        show = text("SHOW plan_cache_mode")
                        modes.append((await conn.execute(show)).scalar_one())
                generic, custom = (await conn.execute(text(insert_plans))).one()
                count = text("SELECT count(*) FROM message_events WHERE status_id = 7")
                written = (await conn.execute(count)).scalar_one()
                await conn.rollback()
            return int(generic), int(custom), modes, int(written)
        finally:
            await engine.dispose()

    generic, custom, modes, written = asyncio.run(scenario())
    assert written == 10
    assert generic >= 5
    assert custom <= 5
    assert set(modes) == {"force_custom_plan"}
