"""The process's SQLite writer: jobs of one kind that queue up are committed together, each one
isolated; accept batches and transactions never share a commit and take turns."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pigeon.db.errors import unavailable_reason
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


def _batch(conn: Connection, value: int, fail: bool = False) -> int:
    """An accept batch as the accept path submits one: a statement on the driver's
    connection, its own transaction when it runs alone."""
    conn.connection.driver_connection.execute("INSERT INTO t (x) VALUES (?)", (value,))  # type: ignore[union-attr]
    if fail:
        raise ValueError("this batch fails after its insert")
    return value


def test_accept_batches_waiting_together_commit_together_and_a_failing_one_is_rolled_back(
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
                asyncio.wrap_future(writer.submit(_batch, 1)),
                asyncio.wrap_future(writer.submit(_batch, 2, True)),
                asyncio.wrap_future(writer.submit(_batch, 3)),
            ]
            await asyncio.sleep(0.05)
            release.set()
            await blocker
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert results[0] == 1
            assert isinstance(results[1], ValueError)
            assert results[2] == 3
            assert await writer.transaction(_values) == [1, 3]
            # A transaction that fails leaves nothing behind either.
            with pytest.raises(ValueError, match="fails after"):
                await writer.transaction(_insert, 4, fail=True)
            assert await writer.transaction(_values) == [1, 3]
        finally:
            await writer.close()

    asyncio.run(run())


async def _hold(
    writer: SqliteWriter, *, transaction: bool
) -> tuple[asyncio.Future[None], threading.Event]:
    """Occupy the writer thread with one job (a transaction or an accept batch) until the
    event returned is set; the jobs queued meanwhile wait together."""
    started, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        started.set()
        release.wait(10)

    blocker = (
        asyncio.ensure_future(writer.transaction(hold))
        if transaction
        else asyncio.wrap_future(writer.submit(hold))
    )
    assert await asyncio.to_thread(started.wait, 10)
    return blocker, release


def test_transactions_are_never_grouped_with_accept_batches(tmp_path: Path) -> None:
    """A transaction (a chunk of reports, a worker's step: hundreds of rows) is never grouped
    with accept batches, which would wait for its whole run; the two kinds take turns."""
    ran: list[tuple[str, bool]] = []  # (job, whether it ran in a savepoint of a group)

    def job(conn: Connection, name: str) -> None:
        ran.append((name, conn.in_nested_transaction()))

    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{tmp_path / 'w.db'}")
        try:
            blocker, release = await _hold(writer, transaction=True)
            # Queued in this order while the writer is busy with a transaction.
            jobs: list[asyncio.Future[None]] = []
            for kind, name in [
                ("transaction", "report chunk 1"),
                ("batch", "accept batch 1"),
                ("transaction", "report chunk 2"),
                ("batch", "accept batch 2"),
                ("batch", "accept batch 3"),
            ]:
                if kind == "batch":
                    jobs.append(asyncio.wrap_future(writer.submit(job, name)))
                else:
                    jobs.append(asyncio.ensure_future(writer.transaction(job, name)))
                await asyncio.sleep(0)  # the task queues its job now
            release.set()
            await blocker
            await asyncio.gather(*jobs)
        finally:
            await writer.close()

    asyncio.run(run())
    # After a transaction, the batches that waited, in one group (each in its savepoint),
    # although the first was queued after a transaction; then the transactions' group.
    assert ran == [
        ("accept batch 1", True),
        ("accept batch 2", True),
        ("accept batch 3", True),
        ("report chunk 1", True),
        ("report chunk 2", True),
    ]


def test_accept_batches_and_transactions_alternate_while_both_keep_coming(
    tmp_path: Path,
) -> None:
    """Neither starves the other: after a group of batches the transactions' turn comes."""
    ran: list[str] = []

    def job(conn: Connection, name: str) -> None:
        ran.append(name)

    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{tmp_path / 'w.db'}")
        try:
            blocker, release = await _hold(writer, transaction=False)
            jobs: list[asyncio.Future[None]] = [
                asyncio.ensure_future(writer.transaction(job, f"t{i}")) for i in (1, 2)
            ]
            await asyncio.sleep(0)
            jobs += [asyncio.wrap_future(writer.submit(job, f"a{i}")) for i in (1, 2)]
            release.set()
            await blocker
            await asyncio.gather(*jobs)
        finally:
            await writer.close()

    asyncio.run(run())
    # The blocking batch was an accept group: the transactions next, then the batches.
    assert ran == ["t1", "t2", "a1", "a2"]


def test_a_closed_writer_refuses_new_jobs(tmp_path: Path) -> None:
    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{tmp_path / 'w.db'}")
        await writer.transaction(_create)
        await writer.close()
        with pytest.raises(RuntimeError):
            await writer.transaction(_values)

    asyncio.run(run())


def test_writers_of_one_file_take_turns_on_its_lock_file_and_give_up_past_their_timeout(
    tmp_path: Path,
) -> None:
    """Each transaction holds `<database>-writer.lock` (as `pigeon serve`'s API and its worker
    process do); a writer that cannot have its turn within its busy timeout fails as SQLite
    would (SQLITE_BUSY: 503 `database_unavailable` to a request), then writes again once the
    other process's turn is over."""
    database = tmp_path / "w.db"

    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{database}", busy_timeout_ms=300)
        try:
            await writer.transaction(_create)
            lock = os.open(f"{database}-writer.lock", os.O_RDWR)
            try:
                held = threading.Event()
                release = threading.Event()

                def hold(conn: Connection) -> None:
                    _insert(conn, 1)
                    held.set()
                    release.wait(10)

                # While a job runs, its turn is held: another process could not take it.
                job = asyncio.ensure_future(writer.transaction(hold))
                assert await asyncio.to_thread(held.wait, 10)
                with pytest.raises(BlockingIOError):
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                release.set()
                await job
                # Another process's turn (only the lock file: SQLite's own lock is free).
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                started = time.monotonic()
                with pytest.raises(sqlite3.OperationalError) as refused:
                    await writer.transaction(_insert, 2)
                assert time.monotonic() - started >= 0.29
                assert unavailable_reason(refused.value) == (
                    "the database is locked by another connection"
                )
                # Its turn ends while a job waits: the job runs, at once.
                waiting = asyncio.ensure_future(writer.transaction(_insert, 3))
                await asyncio.sleep(0.1)
                assert not waiting.done()
                fcntl.flock(lock, fcntl.LOCK_UN)
                assert await asyncio.wait_for(waiting, 5) == 3
            finally:
                os.close(lock)
            assert await writer.transaction(_values) == [1, 3]
        finally:
            await writer.close()

    asyncio.run(run())


def test_what_a_commit_counts_runs_after_the_turn_and_only_if_it_committed(
    tmp_path: Path,
) -> None:
    """`metrics.on_commit` work (counting final statuses) does not hold the file: it runs once
    the transaction has committed and the writer's turn is over, before its result is handed
    over; a job rolled back, alone or in a group, counts nothing."""
    from pigeon import metrics

    database = tmp_path / "w.db"
    counted: list[tuple[int, bool, list[int]]] = []

    def count(value: int) -> None:
        # Another process could take the turn now, and would see the row.
        lock = os.open(f"{database}-writer.lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
            fcntl.flock(lock, fcntl.LOCK_UN)
        except BlockingIOError:
            free = False
        finally:
            os.close(lock)
        with sqlite3.connect(database) as other:
            seen = [row[0] for row in other.execute("SELECT x FROM t ORDER BY x")]
        counted.append((value, free, seen))

    def counting(conn: Connection, value: int, fail: bool = False) -> int:
        metrics.on_commit(conn, lambda: count(value))
        return _insert(conn, value, fail=fail)

    async def run() -> None:
        writer = SqliteWriter(f"sqlite:///{database}")
        try:
            await writer.transaction(_create)
            assert await writer.transaction(counting, 1) == 1
            assert counted == [(1, True, [1])]  # before the result came back
            with pytest.raises(ValueError, match="fails after"):
                await writer.transaction(counting, 2, fail=True)
            # Three transactions queued behind a blocker share one commit; the failing one's
            # count goes with its savepoint.
            blocker, release = await _hold(writer, transaction=True)
            jobs = [
                asyncio.ensure_future(writer.transaction(counting, 3)),
                asyncio.ensure_future(writer.transaction(counting, 4, True)),
                asyncio.ensure_future(writer.transaction(counting, 5)),
            ]
            await asyncio.sleep(0.05)
            release.set()
            await blocker
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert results[0] == 3
            assert isinstance(results[1], ValueError)
            assert results[2] == 5
            assert counted == [(1, True, [1]), (3, True, [1, 3, 5]), (5, True, [1, 3, 5])]
        finally:
            await writer.close()

    asyncio.run(run())
