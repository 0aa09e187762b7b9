"""A database that cannot serve answers 503 database_unavailable, never 500, and recovers.

Every write path (sends on the fast path and Litestar's, users, identities, extensions,
webhooks, the CLI's keys) is tried while another connection holds the database's write lock
past PIGEON_DATABASE_TIMEOUT_SECONDS; nothing it tried is written, the log has one line for
the incident, and the same requests succeed once the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import (
    DATABASES,
    DEMO_ID,
    DEMO_KEY,
    PIGEON,
    ROOT,
    Server,
    count_rows,
    make_server,
)
from tests.databases import PostgresCluster, scalar
from tests.fakes.receiver import Receiver

TIMEOUT = "0.5"
SLOW_REPORTS = {"PIGEON_SANDBOX_REPORT_DELAY": "3600"}  # sent messages stay en route
# What the write paths touch, locked against writes (reads go on) on PostgreSQL.
WRITTEN_TABLES = (
    "users, identities, messages, message_events, infobip_extensions, idempotency_keys, "
    "api_keys, whatsapp_interactions, platform_state"
)


@contextmanager
def held_write_lock(database_url: str) -> Iterator[None]:
    """Another connection holds the write lock (SQLite) or write locks on every table Pigeon
    writes (PostgreSQL) until the block ends."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    ready, release = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {WRITTEN_TABLES} IN EXCLUSIVE MODE")
                ready.set()
                while not release.is_set():
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    assert not failed, failed
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def _incidents(log: str) -> dict[str, int]:
    """The "database unavailable" lines of each process of `pigeon serve`: one an incident
    in each (its children, the dispatch worker and the webhook deliveries, whose lines join
    the API's, name themselves)."""
    lines = [line for line in log.splitlines() if "database unavailable" in line]
    children = {
        name: sum(f"process={name}" in line for line in lines) for name in ("worker", "deliveries")
    }
    return {"api": len(lines) - sum(children.values()), **children}


def assert_one_incident_each(log: str) -> None:
    """The API logged the outage once; each child at most once (it may not have written)."""
    counts = _incidents(log)
    assert counts["api"] == 1, (counts, log[-3000:])
    assert counts["worker"] <= 1, (counts, log[-3000:])
    assert counts["deliveries"] <= 1, (counts, log[-3000:])


def platform_reports_url(server: Server) -> str:
    for line in server.cli("webhooks").splitlines():
        if line.startswith("delivery_reports:"):
            return line.split(": ", 1)[1].removeprefix(server.base_url)
    raise AssertionError("no delivery_reports URL")


def write_requests(server: Server, client: httpx.Client) -> dict[str, tuple[str, str, Any]]:
    """One request per write path, on rows that exist (created here, before any lock)."""
    user = client.post("/v1/users", json={"username": f"u-{uuid.uuid4().hex}"}).json()
    identity = client.post("/v1/identities", json={"type": "neutral"}).json()
    sent = client.post(f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "x"}})
    message_id = sent.json()["messages"][0]["messageId"]
    # The report below must have a change to write: the message is sent (en route), and the
    # sandbox's own report waits an hour (SLOW_REPORTS). A report that changes nothing is
    # answered without a write, whatever the database's state.
    deadline = time.monotonic() + 30
    while client.get(f"/v1/messages/{message_id}").json()["status"]["name"] != "PENDING_ENROUTE":
        assert time.monotonic() < deadline, "the message was not sent"
        time.sleep(0.05)
    report = {
        "results": [
            {
                "messageId": message_id,
                "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5},
            }
        ]
    }
    inbound = {"results": [{"from": "385981234567", "to": "447860088593"}]}
    reports = platform_reports_url(server)
    return {
        "create user": ("POST", "/v1/users", {"username": f"n-{uuid.uuid4().hex}"}),
        "patch user": ("PATCH", f"/v1/users/{DEMO_ID}", {"data": {"patched": True}}),
        "delete user": ("DELETE", f"/v1/users/{user['id']}", None),
        "create identity": ("POST", "/v1/identities", {"type": "company"}),
        "patch identity": ("PATCH", f"/v1/identities/{DEMO_ID}", {"country": "HR"}),
        "delete identity": ("DELETE", f"/v1/identities/{identity['id']}", None),
        "send (fast path)": (
            "POST",
            f"/v1/users/{DEMO_ID}/message/sms",
            {"content": {"text": "y"}},
        ),
        "send (Litestar's route)": (
            "POST",
            f"/v1/users/{DEMO_ID}/message/sms/",
            {"content": {"text": "z"}},
        ),
        "delivery report": ("POST", reports, report),
        "inbound webhook": ("POST", reports.replace("/reports", "/inbound"), inbound),
        "delete extension": ("DELETE", "/v1/extensions/infobip", None),
    }


def _send(client: httpx.Client, request: tuple[str, str, Any]) -> httpx.Response:
    method, path, body = request
    return (
        client.request(method, path, json=body)
        if body is not None
        else client.request(method, path)
    )


def _counts(url: str) -> dict[str, int]:
    """Rows per table, read without waiting for the write lock."""
    tables = ("users", "identities", "messages", "api_keys", "whatsapp_interactions")
    if not url.startswith("sqlite"):
        return {table: count_rows(url, table) for table in tables}
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_a_lock_held_past_the_timeout_answers_503_on_every_write_path(tmp_path: Path) -> None:
    server = make_server(tmp_path, PIGEON_DATABASE_TIMEOUT_SECONDS=TIMEOUT, **SLOW_REPORTS)
    server.start()
    url = server.env["PIGEON_DATABASE_URL"]
    try:
        with server.client(DEMO_KEY) as client:
            requests = write_requests(server, client)
            before = _counts(url)
            account = str(scalar(url, "SELECT account_id FROM api_keys LIMIT 1"))
            with held_write_lock(url), ThreadPoolExecutor(len(requests)) as pool:
                started = time.monotonic()
                answers = dict(
                    zip(
                        requests,
                        pool.map(lambda r: _send(client, r), requests.values()),
                        strict=True,
                    )
                )
                elapsed = time.monotonic() - started  # the requests', not the CLI's start-up
                key = _cli(server, "keys", "create", "--account", account)
                during = _counts(url)
            assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(
                requests, 503
            )
            for answer in answers.values():
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["code"] == "database_unavailable"
                assert int(answer.headers["retry-after"]) >= 1
            assert key.returncode == 1
            assert "error: " in key.stderr
            assert "Traceback" not in key.stderr
            # A pool of one connection did not keep anyone waiting 30 s.
            assert elapsed < 15
            assert during == before  # nothing half-written
            again = {name: _send(client, r).status_code for name, r in requests.items()}
            assert all(code < 300 for code in again.values()), again
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert_one_incident_each(log)
    assert "Traceback" not in log


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIGEON, *args],
        env=server.env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _as_unprivileged() -> list[str]:
    """A command prefix that drops root (which ignores file permissions), or nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only file cannot be simulated")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _make_read_only(server: Server, tmp_path: Path) -> list[str]:
    """Make the server's database refuse writes; the command prefix to start Pigeon with."""
    url = server.env["PIGEON_DATABASE_URL"]
    if url.startswith("sqlite"):
        prefix = _as_unprivileged()
        os.chmod(tmp_path, 0o777)  # SQLite may create its -wal and -shm files there
        for path in tmp_path.glob("pigeon.db*"):
            os.chmod(path, 0o444)
        return prefix
    _alter_database(url, "SET default_transaction_read_only = on")
    return []


def _alter_database(url: str, change: str) -> None:
    """ALTER DATABASE on a test database, and end its sessions so that new ones see it."""
    name = url.rsplit("/", 1)[1]

    async def alter() -> None:
        conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
        try:
            await conn.execute(f'ALTER DATABASE "{name}" {change}')
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
        finally:
            await conn.close()

    asyncio.run(alter())


def test_a_read_only_database_stops_serve_at_start_up() -> None:
    # Not under pytest's tmp_path: its parents are private to root, the server may not be.
    where = Path(tempfile.mkdtemp(prefix="pigeon-read-only-"))
    try:
        server = make_server(where)
        server.start()
        server.stop()
        prefix = _make_read_only(server, where)
        started = subprocess.run(
            [*prefix, *PIGEON, "serve"],
            env=server.env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert started.returncode == 1, started.stderr[-2000:]
    assert "error: the database is read-only: Pigeon cannot write to" in started.stderr
    assert "Traceback" not in started.stderr


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="a PostgreSQL database")
def test_postgresql_turned_read_only_answers_503_until_it_is_writable(tmp_path: Path) -> None:
    server = make_server(tmp_path, PIGEON_DATABASE_TIMEOUT_SECONDS="1", **SLOW_REPORTS)
    server.start()
    url = server.env["PIGEON_DATABASE_URL"]
    try:
        with server.client(DEMO_KEY) as client:
            requests = write_requests(server, client)
            _alter_database(url, "SET default_transaction_read_only = on")
            answers = {name: _send(client, r) for name, r in requests.items()}
            assert {n: a.status_code for n, a in answers.items()} == dict.fromkeys(requests, 503)
            assert all(a.json()["code"] == "database_unavailable" for a in answers.values())
            assert client.get(f"/v1/users/{DEMO_ID}").status_code == 200  # reads go on
            _alter_database(url, "RESET default_transaction_read_only")
            again = {name: _send(client, r).status_code for name, r in requests.items()}
            assert all(code < 300 for code in again.values()), again
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert_one_incident_each(log)
    assert "Traceback" not in log


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="a PostgreSQL server to lose")
def test_postgresql_gone_answers_503_and_pigeon_recovers_when_it_is_back(tmp_path: Path) -> None:
    cluster = PostgresCluster()  # its own: the suite's server is shared by every test
    cluster.start()
    try:
        server = make_server(
            tmp_path,
            PIGEON_DATABASE_URL=cluster.new_database(),
            PIGEON_DATABASE_TIMEOUT_SECONDS="1",
            **SLOW_REPORTS,
        )
        server.start()
        receiver = Receiver().start()
        try:
            with server.client(DEMO_KEY) as client:
                requests = write_requests(server, client)
                hook = {"url": receiver.url, "events": ["sms.message.sent"]}
                assert client.post("/v1/webhook-endpoints", json=hook).status_code == 201
                cluster.halt()
                started = time.monotonic()
                answers = {name: _send(client, r) for name, r in requests.items()}
                elapsed = time.monotonic() - started
                assert {n: a.status_code for n, a in answers.items()} == dict.fromkeys(
                    requests, 503
                )
                for answer in answers.values():
                    assert answer.json()["code"] == "database_unavailable"
                    assert answer.headers["retry-after"] == "5"
                assert elapsed < 30
                time.sleep(2)  # the background loops (dispatch, deliveries, stream) fail too
                cluster.resume()
                again = {name: _send(client, r).status_code for name, r in requests.items()}
                assert all(code < 300 for code in again.values()), again
                # The delivery loop is back too: a message sent now is posted to the endpoint.
                sent = _send(client, requests["send (fast path)"]).json()
                message_id = sent["messages"][0]["messageId"]
                deadline = time.monotonic() + 30
                while message_id not in {
                    r.event["data"].get("messageId") for r in receiver.received
                }:
                    assert time.monotonic() < deadline, "no delivery after the database came back"
                    time.sleep(0.1)
        finally:
            server.stop()
            receiver.stop()
    finally:
        cluster.stop()
    log = server.log_path.read_text()
    assert_one_incident_each(log)
    assert "Traceback" not in log


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


@pytest.mark.skipif(DATABASES.engine != "sqlite", reason="a SQLite file on a small disk")
def test_a_full_disk_answers_503_until_there_is_room(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "32m")
    try:
        server = make_server(
            tmp_path, PIGEON_DATABASE_URL=f"sqlite:///{disk / 'pigeon.db'}", **SLOW_REPORTS
        )
        server.start()
        try:
            with server.client(DEMO_KEY) as client:
                filler = disk / "filler"
                with filler.open("wb") as out, contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * (1 << 20))
                        out.flush()
                before = _counts(server.env["PIGEON_DATABASE_URL"])
                big = {"x": "y" * 60_000}
                answers = [
                    client.post("/v1/users", json={"username": f"f{i}", "data": big})
                    for i in range(40)
                ] + [
                    client.post(
                        f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "x" * 1000}}
                    )
                    for _ in range(40)
                ]
                assert {a.status_code for a in answers} == {503}
                assert {a.json()["code"] for a in answers} == {"database_unavailable"}
                assert _counts(server.env["PIGEON_DATABASE_URL"]) == before
                filler.unlink()
                assert client.post("/v1/users", json={"username": "room"}).status_code == 201
                sent = client.post(
                    f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "x"}}
                )
                assert sent.status_code == 200
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    log = server.log_path.read_text()
    assert_one_incident_each(log)
    assert "Traceback" not in log
