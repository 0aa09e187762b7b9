"""GET /ready: 200 when the database answers at the code's migration head, else 503 saying
which; /health stays the liveness check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from pigeon.db.revisions import MIGRATIONS, code_heads
from tests.conftest import DATABASES, make_server
from tests.databases import execute


def test_ready_when_migrated_and_503_when_migrations_are_behind(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.start()
    url = srv.env["PIGEON_DATABASE_URL"]
    try:
        ready = httpx.get(f"{srv.base_url}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        head = ready.json()["revision"]
        assert ready.json()["status"] == "ready"
        assert head > "0001"

        assert execute(url, "UPDATE alembic_version SET version_num = '0001'") == 1
        behind = httpx.get(f"{srv.base_url}/ready", timeout=10)
        assert behind.status_code == 503
        assert behind.headers["content-type"] == "application/problem+json"
        assert behind.headers["retry-after"]
        problem = behind.json()
        assert problem["code"] == "migrations_not_at_head"
        assert "0001" in problem["detail"]
        assert head in problem["detail"]
        assert "pigeon db upgrade" in problem["detail"]
        assert httpx.get(f"{srv.base_url}/health", timeout=10).status_code == 200

        assert execute(url, f"UPDATE alembic_version SET version_num = '{head}'") == 1
        assert httpx.get(f"{srv.base_url}/ready", timeout=10).status_code == 200
    finally:
        srv.stop()


def test_the_heads_ready_wants_are_the_ones_alembic_migrates_to() -> None:
    # /ready reads them from the version scripts without Alembic (see pigeon.db.revisions).
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert code_heads() == tuple(sorted(ScriptDirectory.from_config(config).get_heads()))


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="drops a PostgreSQL database")
def test_ready_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.start()
    try:
        assert httpx.get(f"{srv.base_url}/ready", timeout=10).status_code == 200
        assert DATABASES.cluster is not None
        name = srv.env["PIGEON_DATABASE_URL"].rsplit("/", 1)[1]

        async def drop() -> None:
            conn = await asyncpg.connect(DATABASES.cluster.url("postgres"))  # type: ignore[union-attr]
            try:
                await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())
        gone = httpx.get(f"{srv.base_url}/ready", timeout=15)
        assert gone.status_code == 503, gone.text
        assert gone.headers["content-type"] == "application/problem+json"
        problem = gone.json()
        assert problem["code"] == "database_unavailable"
        assert "does not answer" in problem["detail"]
        assert "postgres@" not in problem["detail"]  # no connection URL in the answer
        again = httpx.get(f"{srv.base_url}/ready", timeout=15)  # a fresh connection fails too
        assert again.status_code == 503
        assert again.json()["code"] == "database_unavailable"
    finally:
        srv.stop()
