"""The databases tests run on: a SQLite file, or a throwaway PostgreSQL 15 cluster.

`pytest --db=postgresql` starts its own PostgreSQL server in a temporary directory (as the
`postgres` user when run as root, since PostgreSQL refuses root), creates one database per
Pigeon under test, and removes the whole cluster at the end of the session.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import asyncpg


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} was not found; install PostgreSQL 15")
    return found


class PostgresCluster:
    """A private PostgreSQL server on 127.0.0.1, owned by the test session."""

    def __init__(self, *, durable: bool = False) -> None:
        # Tests run without fsync (nothing they check needs the disk); `make bench` measures
        # the durable server a deployment runs (PostgreSQL's defaults: fsync, full pages).
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="pigeon-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        data = str(self.root / "data")
        self._run(
            _pg_bin("initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after `halt`), on the same port and data."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300 -c shared_buffers=128MB"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def halt(self) -> None:
        """Stop the server at once, as a crash would, keeping its data for `resume`."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run(
                _pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        name = f"pigeon_{next(self._names)}"

        async def create() -> None:
            conn = await asyncpg.connect(self.url("postgres"))
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)


def _run_sql(database_url: str, sql: str, *, write: bool) -> Any:
    """Run one SQL statement on any Pigeon database, in a transaction that commits if `write`."""
    from sqlalchemy import text

    from pigeon.db.engine import create_engine

    async def run() -> Any:
        engine = create_engine(database_url)
        try:
            async with engine.begin() if write else engine.connect() as conn:
                result = await conn.execute(text(sql))
                return int(result.rowcount) if write else result.scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def scalar(database_url: str, sql: str) -> Any:
    """The single value a SQL query returns, from any Pigeon database."""
    return _run_sql(database_url, sql, write=False)


def execute(database_url: str, sql: str) -> int:
    """Run one SQL statement on any Pigeon database; the number of rows it changed."""
    return int(_run_sql(database_url, sql, write=True))


class Databases:
    """Hands out a new database URL for each Pigeon a test starts."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.cluster: PostgresCluster | None = None

    def start(self) -> None:
        if self.engine == "postgresql":
            self.cluster = PostgresCluster()
            self.cluster.start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def new_url(self, directory: Path) -> str:
        if self.cluster is not None:
            return self.cluster.new_database()
        return f"sqlite:///{directory / 'pigeon.db'}"
