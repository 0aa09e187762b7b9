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
import pytest
from sqlalchemy import text

from pigeon.db.engine import create_engine
from tests.conftest import DATABASES, ROOT, Server, free_port, server_env
from tests.factories import create_tenant

pytestmark = pytest.mark.skipif(
    DATABASES.engine != "postgresql", reason="scale-out is a PostgreSQL configuration"
)

MESSAGES = int(os.environ.get("PIGEON_SCALE_MESSAGES", "20000"))
CONCURRENCY = 64
FAKE_KEY = "scale-test-infobip-key"


def query(database_url: str, sql: str) -> int:
    async def run() -> int:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text(sql))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(run())


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


async def send_all(
    base_url: str, api_key: str, total: int, on_progress: dict[int, object]
) -> list[str]:
    """Send `total` SMS through the HTTP API; call on_progress[n]() after n were accepted."""
    accepted: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"x-api-key": api_key}, limits=limits, timeout=60
    ) as client:

        async def sender() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    response = await client.post(
                        "/v1/apps/message/sms",
                        json={"to": f"38598{i:06d}1", "content": {"text": f"scale {i}"}},
                        headers={"idempotency-key": f"scale-{i}"},
                    )
                except httpx.TransportError as exc:
                    raise AssertionError(f"after {len(accepted)} accepted: {exc!r}") from exc
                assert response.status_code == 200, response.text
                accepted.append(response.json()["messages"][0]["messageId"])
                action = on_progress.pop(len(accepted), None)
                if callable(action):
                    await asyncio.to_thread(action)

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
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            pid = workers[0].pid
            killed["in_flight"] = query(
                database_url,
                f"SELECT count(*) FROM messages WHERE lease_owner LIKE '%:{pid}:%'",
            )

        def stop_second_worker() -> None:
            workers[1].send_signal(signal.SIGTERM)

        started = time.monotonic()
        accepted = asyncio.run(
            send_all(
                api.base_url,
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
