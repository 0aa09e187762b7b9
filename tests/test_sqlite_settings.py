"""SQLite: every connection Pigeon opens is durable, and the write-ahead log stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from pigeon.db.engine import WAL_AUTOCHECKPOINT_PAGES, create_sync_engine
from tests.conftest import DATABASES

pytestmark = pytest.mark.skipif(DATABASES.engine != "sqlite", reason="SQLite's settings")


def _pragma(engine: Engine, name: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()


def test_each_connection_commits_durably_to_the_write_ahead_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pigeon.db'}"
    for engine in (create_sync_engine(url), create_sync_engine(url, read_only=True)):
        try:
            assert _pragma(engine, "journal_mode") == "wal"
            assert _pragma(engine, "synchronous") == 2  # FULL: an fsync with every commit
            assert _pragma(engine, "wal_autocheckpoint") == WAL_AUTOCHECKPOINT_PAGES
        finally:
            engine.dispose()


def test_the_write_ahead_log_is_checkpointed_and_reused_under_steady_writes(
    tmp_path: Path,
) -> None:
    # Commits that write far more pages than one checkpoint interval: the log is copied back
    # and written again from its start, so the file never grows much past the interval.
    path = tmp_path / "pigeon.db"
    engine = create_sync_engine(f"sqlite:///{path}")
    page = 4096
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE filler (body BLOB)")
            conn.commit()
            for _ in range(3 * WAL_AUTOCHECKPOINT_PAGES // 16):
                conn.exec_driver_sql("INSERT INTO filler VALUES (randomblob(16 * 4000))")
                conn.commit()
        wal = path.with_name("pigeon.db-wal").stat().st_size
    finally:
        engine.dispose()
    assert wal < (WAL_AUTOCHECKPOINT_PAGES + 64) * (page + 24)
