"""PostgreSQL: Pigeon's prepared statements are planned for their actual values, every time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from pigeon.db.engine import create_engine
from tests.conftest import DATABASES

pytestmark = pytest.mark.skipif(DATABASES.engine != "postgresql", reason="PostgreSQL planning")
PLANS = (
    "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
    " FROM pg_prepared_statements WHERE statement LIKE 'SELECT v FROM records%'"
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
