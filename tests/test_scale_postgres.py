"""Scale-out on PostgreSQL: 2 API processes, 3 workers, one killed and one stopped mid-run.

Every accepted message must end with a final status (none lost), and the messages the fake
Infobip received twice may number at most what the killed worker had in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import text

from pigeon.db.engine import create_engine
from tests.conftest import DATABASES, ROOT, Server, free_port, server_env
from tests.databases import scalar
from tests.factories import create_tenant

pytestmark = pytest.mark.skipif(
    DATABASES.engine != "postgresql", reason="scale-out is a PostgreSQL configuration"
)

MESSAGES = int(os.environ.get("PIGEON_SCALE_MESSAGES", "20000"))
CONCURRENCY = 64
FAKE_KEY = "scale-test-infobip-key"


def query(database_url: str, sql: str) -> int:
    return int(scalar(database_url, sql))


def status_counts(database_url: str) -> dict[str, int]:
    async def run() -> dict[str, int]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    text("SELECT status_id, count(*) FROM messages GROUP BY status_id")
                )
                return {str(row[0]): int(row[1]) for row in result}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def start_fake(port: int, log: Path) -> subprocess.Popen[bytes]:
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.infobip",
            "--port",
            str(port),
            "--api-key",
            FAKE_KEY,
            "--report-delay",
            "0.2",
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/__fake/summary", timeout=1)
            return fake
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(log.read_text())


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pigeon", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


class KeepAliveClient:
    """A bare HTTP/1.1 keep-alive connection: the load must come from Pigeon, not the client.

    httpx spends about a millisecond of CPU per request, which on two shared cores made the
    client, not the servers, the bottleneck of this test.
    """

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {self.api_key}\r\n"
            f"idempotency-key: {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def send_all(
    port: int, api_key: str, total: int, on_progress: dict[int, object]
) -> list[str]:
    """Send `total` SMS through the HTTP API; call on_progress[n]() after n were accepted."""
    accepted: list[str] = []
    pending = list(range(total - 1, -1, -1))

    async def sender() -> None:
        client = KeepAliveClient(port, api_key)
        try:
            while pending:
                i = pending.pop()
                body = msgspec.json.encode(
                    {"to": f"38598{i:06d}1", "content": {"text": f"scale {i}"}}
                )
                try:
                    status, answer = await client.post("/v1/apps/message/sms", body, f"scale-{i}")
                except (OSError, asyncio.IncompleteReadError) as exc:
                    raise AssertionError(f"after {len(accepted)} accepted: {exc!r}") from exc
                assert status == 200, answer
                accepted.append(msgspec.json.decode(answer)["messages"][0]["messageId"])
                action = on_progress.pop(len(accepted), None)
                if callable(action):
                    await asyncio.to_thread(action)
        finally:
            client.close()

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return accepted


def test_many_processes_lose_nothing_and_send_twice_only_what_a_killed_worker_held(
    tmp_path: Path,
) -> None:
    fake_port = free_port()
    fake = start_fake(fake_port, tmp_path / "fake.log")
    env = server_env(
        tmp_path,
        PIGEON_PROVIDER="infobip",
        PIGEON_INFOBIP_BASE_URL=f"http://127.0.0.1:{fake_port}",
        PIGEON_INFOBIP_API_KEY=FAKE_KEY,
        PIGEON_SECRET_KEY="scale-test-secret",
        PIGEON_WORKER_LEASE_SECONDS="5",
        PIGEON_WORKER_POLL_INTERVAL="0.1",
        PIGEON_LOG_LEVEL="INFO",
    )
    env["PIGEON_PUBLIC_URL"] = f"http://127.0.0.1:{env['PIGEON_PORT']}"
    database_url = env["PIGEON_DATABASE_URL"]
    api = Server(
        env=env,
        port=int(env["PIGEON_PORT"]),
        log_path=tmp_path / "api.log",
        extra_args=["--workers", "2", "--no-worker"],
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        api.start()
        workers = [start_worker(env, tmp_path / f"worker{n}.log") for n in range(3)]
        tenant = create_tenant(api)
        killed: dict[str, int] = {}

        def kill_first_worker() -> None:
            # Kill it while it holds a claimed batch, if it gets one within a few seconds:
            # that is the case at-least-once delivery must survive.
            pid = workers[0].pid
            holding = f"SELECT count(*) FROM messages WHERE lease_owner LIKE '%:{pid}:%'"
            deadline = time.monotonic() + 5
            while query(database_url, holding) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            killed["in_flight"] = query(database_url, holding)

        def stop_second_worker() -> None:
            workers[1].send_signal(signal.SIGTERM)

        started = time.monotonic()
        accepted = asyncio.run(
            send_all(
                api.port,
                tenant.api_key,
                MESSAGES,
                {MESSAGES // 3: kill_first_worker, 2 * MESSAGES // 3: stop_second_worker},
            )
        )
        ingest_seconds = time.monotonic() - started
        assert workers[1].wait(timeout=60) == 0, "SIGTERM must stop a worker cleanly"

        deadline = time.monotonic() + float(os.environ.get("PIGEON_SCALE_WAIT", "600"))
        while query(database_url, "SELECT count(*) FROM messages WHERE group_id = 1") > 0:
            assert time.monotonic() < deadline, (
                f"messages still pending: status counts {status_counts(database_url)}"
            )
            time.sleep(1)
        total_seconds = time.monotonic() - started

        stored = query(database_url, "SELECT count(*) FROM messages")
        delivered = query(database_url, "SELECT count(*) FROM messages WHERE status_id = 5")
        summary = httpx.get(f"http://127.0.0.1:{fake_port}/__fake/summary", timeout=30).json()
        duplicates = sum(n - 1 for n in summary["duplicates"].values())
        lost = len(set(accepted)) - delivered
        print(
            f"\nscale-out: messages sent: {len(accepted)}, lost: {lost}, "
            f"duplicates: {duplicates} (the killed worker had {killed['in_flight']} in flight); "
            f"ingest {len(accepted) / ingest_seconds:.0f} req/s, "
            f"all final after {total_seconds:.1f} s"
        )
        assert len(accepted) == len(set(accepted)) == MESSAGES == stored
        assert lost == 0
        assert summary["unique_messages"] == MESSAGES
        assert duplicates <= killed["in_flight"]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
        if api.process is not None and api.process.poll() is None:
            api.stop()
        fake.terminate()
        fake.wait(timeout=10)
