"""Events with several processes on PostgreSQL: a killed worker loses no delivery, and a
stream client on one API process sees what another accepted and a worker dispatched."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import DATABASES, ROOT, Server, make_server
from tests.databases import scalar
from tests.factories import create_tenant
from tests.fakes.receiver import Received, Receiver

pytestmark = pytest.mark.skipif(
    DATABASES.engine != "postgresql", reason="several API and worker processes need PostgreSQL"
)

MESSAGES = 150  # each makes two events: sent and delivered


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pigeon", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def send_many(server: Server, api_key: str, count: int) -> list[str]:
    ids = []
    with server.client(api_key) as api:
        for _ in range(count):
            response = api.post(
                "/v1/apps/message/sms", json={"to": "385981230001", "content": {"text": "x"}}
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["messages"][0]["messageId"])
    return ids


def held_by(api: Server, pid: int) -> int:
    """The deliveries leased to the worker process `pid` and not recorded."""
    return int(
        scalar(
            api.env["PIGEON_DATABASE_URL"],
            "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'"
            f" AND lease_owner LIKE '%:{pid}:%'",
        )
    )


def test_a_worker_killed_during_a_burst_of_deliveries_loses_none(
    tmp_path: Path, receiver: Receiver
) -> None:
    def slow_answer(_: Received) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.02)  # deliveries stay in flight long enough to be killed under
        return 200, {}, b"ok"

    receiver.answer = slow_answer
    api = make_server(
        tmp_path,
        "--no-worker",
        PIGEON_ALLOW_PRIVATE_URLS="1",
        PIGEON_WORKER_LEASE_SECONDS="3",
        PIGEON_WEBHOOK_TIMEOUT_SECONDS="2",
        PIGEON_WEBHOOK_ENDPOINT_CONCURRENCY="4",
    )
    api.start()
    workers = [start_worker(api.env, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        tenant = create_tenant(api)
        with api.client(tenant.api_key) as client:
            response = client.post("/v1/webhook-endpoints", json={"url": receiver.url})
            assert response.status_code == 201, response.text
        sender = asyncio.new_event_loop()
        try:
            send = sender.run_in_executor(None, send_many, api, tenant.api_key, MESSAGES)
            receiver.wait_for(lambda rs: len(rs) >= 40, timeout=60)
            # Killed while it holds deliveries (the other worker may have claimed them all
            # until now): a kill of an idle worker would prove nothing.
            deadline = time.monotonic() + 30
            while held_by(api, workers[0].pid) == 0:
                assert time.monotonic() < deadline, "the first worker never held a delivery"
                time.sleep(0.02)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            # What the killed worker held: leased to it, not recorded. Only these may come twice.
            held = held_by(api, workers[0].pid)
            assert held > 0, "the kill caught no delivery in flight"
            sender.run_until_complete(send)
        finally:
            sender.close()
        database_url = api.env["PIGEON_DATABASE_URL"]
        expected = 2 * MESSAGES
        deadline = time.monotonic() + 90
        while len({r.headers["webhook-id"] for r in receiver.received}) < expected:
            assert time.monotonic() < deadline, (
                f"{len({r.headers['webhook-id'] for r in receiver.received})} of {expected} "
                "events delivered"
            )
            time.sleep(0.2)
        events = int(scalar(database_url, "SELECT count(*) FROM events"))
        assert events == expected
        ids = [r.headers["webhook-id"] for r in receiver.received]
        duplicates = len(ids) - len(set(ids))
        assert duplicates <= held
        pending = int(
            scalar(
                database_url, "SELECT count(*) FROM webhook_deliveries WHERE state != 'succeeded'"
            )
        )
        deadline = time.monotonic() + 10
        while pending:
            assert time.monotonic() < deadline, f"{pending} deliveries not recorded as succeeded"
            time.sleep(0.2)
            pending = int(
                scalar(
                    database_url,
                    "SELECT count(*) FROM webhook_deliveries WHERE state != 'succeeded'",
                )
            )
        print(
            f"events {events}, delivered {len(set(ids))}, held by the killed worker {held}, "
            f"duplicates {duplicates}"
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        api.stop()


def test_a_stream_client_on_another_api_process_sees_the_events(tmp_path: Path) -> None:
    first = make_server(tmp_path / "a")
    (tmp_path / "a").mkdir()
    first.start()
    (tmp_path / "b").mkdir()
    second = make_server(
        tmp_path / "b", "--no-worker", PIGEON_DATABASE_URL=first.env["PIGEON_DATABASE_URL"]
    )
    second.start()
    try:
        tenant = create_tenant(first)

        async def run() -> None:
            url = second.base_url.replace("http://", "ws://") + "/v1/stream"
            async with connect(url, additional_headers={"x-api-key": tenant.api_key}) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert hello["realm"] == tenant.account_id
                [message_id] = await asyncio.to_thread(send_many, first, tenant.api_key, 1)
                got = []
                for _ in range(2):
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                    lag = time.time() - int(got[-1]["timestamp"]) / 1000
                    assert lag < 1.5, f"{got[-1]['event']} arrived {lag:.2f} s after the change"
                assert [(m["event"], m["data"]) for m in got] == [
                    ("sms.message.sent", message_id),
                    ("sms.message.delivered", message_id),
                ]

        asyncio.run(run())
    finally:
        second.stop()
        first.stop()
