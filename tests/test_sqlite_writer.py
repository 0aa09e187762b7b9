"""The process's SQLite writer: jobs that queue up are committed together, each one isolated."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pigeon.db.writer import SqliteWriter


def _insert(conn: Connection, value: int, *, fail: bool = False) -> int:
    conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": value})
    if fail:
        raise ValueError("this job fails after its insert")
    return value


def _values(conn: Connection) -> list[int]:
    return [row.x for row in conn.execute(text("SELECT x FROM t ORDER BY x"))]


def _create(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))


def test_jobs_waiting_together_commit_together_and_a_failing_one_alone_is_rolled_back(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{tmp_path / 'w.db'}")
        try:
            await writer.transaction(_create)
            release = threading.Event()
            # The writer thread is held by the first job while the next three queue up: they
            # run as one group (one BEGIN IMMEDIATE, one COMMIT), each in its own savepoint.
            blocker = asyncio.wrap_future(writer.submit(lambda conn: release.wait(10)))
            jobs = [
                asyncio.ensure_future(writer.transaction(_insert, 1)),
                asyncio.ensure_future(writer.transaction(_insert, 2, fail=True)),
                asyncio.ensure_future(writer.transaction(_insert, 3)),
            ]
            await asyncio.sleep(0.05)
            release.set()
            await blocker
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert results[0] == 1
            assert isinstance(results[1], ValueError)
            assert results[2] == 3
            assert await writer.transaction(_values) == [1, 3]
            # A job alone that fails leaves nothing behind either.
            with pytest.raises(ValueError, match="fails after"):
                await writer.transaction(_insert, 4, fail=True)
            assert await writer.transaction(_values) == [1, 3]
        finally:
            await writer.close()

    asyncio.run(run())


def test_a_closed_writer_refuses_new_jobs(tmp_path: Path) -> None:
    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{tmp_path / 'w.db'}")
        await writer.transaction(_create)
        await writer.close()
        with pytest.raises(RuntimeError):
            await writer.transaction(_values)

    asyncio.run(run())
