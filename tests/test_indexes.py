"""The lookups that must stay fast as tables grow use the indexes meant for them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy.dialects import sqlite

from pigeon.config import Settings
from pigeon.db.migrate import alembic_config, upgrade
from pigeon.webhooks.service import report_lookup
from tests.conftest import DATABASES
from tests.databases import scalar

PROVIDER_INDEX = "ix_messages_provider_message_id"


def _index_definition(url: str) -> str:
    if DATABASES.engine == "postgresql":
        return str(
            scalar(url, f"SELECT indexdef FROM pg_indexes WHERE indexname = '{PROVIDER_INDEX}'")
        )
    return str(scalar(url, f"SELECT sql FROM sqlite_master WHERE name = '{PROVIDER_INDEX}'"))


def test_only_sent_messages_are_in_the_provider_message_id_index(tmp_path: Path) -> None:
    # A new message has no provider message id yet: indexing its NULL cost every commit of
    # the accept path one more B-tree insert. The migration makes the index partial, and
    # downgrading gives the full one back.
    settings = Settings(database_url=DATABASES.new_url(tmp_path))
    upgrade(settings)
    assert "provider_message_id IS NOT NULL" in _index_definition(settings.database_url)

    command.downgrade(alembic_config(settings), "0002")
    assert "IS NOT NULL" not in _index_definition(settings.database_url)
    upgrade(settings)
    assert "provider_message_id IS NOT NULL" in _index_definition(settings.database_url)


@pytest.mark.skipif(DATABASES.engine != "sqlite", reason="SQLite's planner, without statistics")
def test_delivery_reports_look_messages_up_by_id_and_provider_id(tmp_path: Path) -> None:
    # With the tenant's account_id in the WHERE clause, SQLite walked that tenant's whole
    # index of messages for every webhook call.
    settings = Settings(database_url=DATABASES.new_url(tmp_path))
    upgrade(settings)
    reported = {"2250be2d4219-3af1-78856-aabe-1362af1edfd2", "36871234"}
    path = settings.sqlite_path()
    assert path is not None
    searches = {}
    for by_provider in (False, True):
        query = report_lookup(reported, "sqlite", by_provider=by_provider)
        sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        with sqlite3.connect(path) as conn:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        searches[by_provider] = [step for step in plan if step.startswith(("SEARCH", "SCAN"))]
    assert searches == {
        False: ["SEARCH messages USING INDEX sqlite_autoindex_messages_1 (id=?)"],
        True: [f"SEARCH messages USING INDEX {PROVIDER_INDEX} (provider_message_id=?)"],
    }


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="PostgreSQL's planner")
def test_a_chunk_of_reports_is_looked_up_through_the_indexes_on_postgresql(
    tmp_path: Path,
) -> None:
    # As one OR of two IN lists of 250 ids, PostgreSQL (its default costs, the table analyzed)
    # chose a sequential scan of every message until the table held a few hundred thousand.
    import asyncio

    from sqlalchemy import text

    from pigeon.db.engine import create_engine

    settings = Settings(database_url=DATABASES.new_url(tmp_path))
    upgrade(settings)
    sent = {str(10**9 + i) for i in range(30_001, 30_251)}

    async def plans() -> list[list[str]]:
        engine = create_engine(settings.database_url)

        async def explain(conn: Any, by_provider: bool) -> list[str]:
            query = report_lookup(sent, "postgresql", by_provider=by_provider)
            compiled = query.compile(dialect=engine.dialect)
            parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
            explained = await conn.exec_driver_sql(f"EXPLAIN {compiled}", parameters)
            return [row[0] for row in explained]

        try:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO accounts VALUES ('a', 'a', now())"))
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, account_id, channel, recipient_type,"
                        " destination, route, content, status_id, group_id, attempts,"
                        " next_attempt_at, created_at, updated_at, provider_message_id)"
                        " SELECT (1000000000 + i)::text, 'a', 'sms', 'app', '385', 'platform',"
                        " '{}', 7, 3, 1, now(), now(), now(), (1000000000 + i)::text"
                        " FROM generate_series(1, 40000) i"
                    )
                )
            async with engine.connect() as conn:
                await conn.execute(text("ANALYZE messages"))
                return [await explain(conn, False), await explain(conn, True)]
        finally:
            await engine.dispose()

    by_id, by_provider = asyncio.run(plans())
    assert not [step for step in by_id if "Seq Scan" in step], by_id
    assert any("pk_messages" in step for step in by_id), by_id
    assert not [step for step in by_provider if "Seq Scan" in step], by_provider
    assert any(PROVIDER_INDEX in step for step in by_provider), by_provider
