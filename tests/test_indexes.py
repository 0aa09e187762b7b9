"""The lookups that must stay fast as tables grow use the indexes meant for them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
    query = report_lookup({"2250be2d4219-3af1-78856-aabe-1362af1edfd2", "36871234"})
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    path = settings.sqlite_path()
    assert path is not None
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]

    searches = [step for step in plan if step.startswith(("SEARCH", "SCAN"))]
    assert searches == [
        "SEARCH messages USING INDEX sqlite_autoindex_messages_1 (id=?)",
        f"SEARCH messages USING INDEX {PROVIDER_INDEX} (provider_message_id=?)",
    ]
