"""The Orangepill event stream: GET /v1/stream over a real WebSocket (the `websockets` client)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, make_server
from tests.factories import Tenant, create_tenant

# Generous against a shared machine; the bound is a second.
PROMPT = 1.5


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("stream"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def owner(stream_server: Server) -> Tenant:
    return create_tenant(stream_server)


def ws_url(server: Server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/stream"


def send_sms(server: Server, api_key: str, to: str) -> str:
    with server.client(api_key) as api:
        response = api.post("/v1/apps/message/sms", json={"to": to, "content": {"text": "x"}})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


async def next_message(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def notifications(
    ws: ClientConnection, count: int, timeout: float = 10
) -> list[dict[str, Any]]:
    """The next `count` notifications, each with the time it arrived (`arrived`, epoch ms)."""
    got = []
    while len(got) < count:
        message = await next_message(ws, timeout)
        message["arrived"] = time.time() * 1000
        got.append(message)
    return got


def assert_prompt(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        lag = (message["arrived"] - int(message["timestamp"])) / 1000
        assert lag < PROMPT, f"{message['event']} arrived {lag:.2f} s after the change"


def test_handshake_key_then_each_event_of_a_message(stream_server: Server, owner: Tenant) -> None:
    async def run() -> None:
        async with connect(
            ws_url(stream_server), additional_headers={"x-api-key": owner.api_key}
        ) as ws:
            hello = await next_message(ws)
            assert hello["type"] == "subscribe"
            assert hello["realm"] == owner.account_id
            assert abs(int(hello["timestamp"]) - time.time() * 1000) < 60_000
            delivered = await asyncio.to_thread(
                send_sms, stream_server, owner.api_key, "385981230001"
            )
            got = await notifications(ws, 2)
            assert [(m["type"], m["event"], m["data"]) for m in got] == [
                ("notification", "sms.message.sent", delivered),
                ("notification", "sms.message.delivered", delivered),
            ]
            assert_prompt(got)

    asyncio.run(run())


def test_subscribe_message_as_orangepill_clients_do(stream_server: Server, owner: Tenant) -> None:
    async def run() -> None:
        async with connect(ws_url(stream_server)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "realm": owner.api_key}))
            hello = await next_message(ws)
            assert hello == {
                "type": "subscribe",
                "realm": owner.account_id,
                "timestamp": hello["timestamp"],
            }
            rejected = await asyncio.to_thread(
                send_sms, stream_server, owner.api_key, "385981230005"
            )
            [failed] = await notifications(ws, 1)
            assert (failed["event"], failed["data"]) == ("sms.message.failed", rejected)
            assert_prompt([failed])

    asyncio.run(run())


@pytest.mark.parametrize("how", ["header", "subscribe", "garbage"])
def test_a_bad_key_is_refused_with_1008(stream_server: Server, how: str) -> None:
    async def run() -> None:
        headers = {"x-api-key": "not-a-key"} if how == "header" else {}
        async with connect(ws_url(stream_server), additional_headers=headers) as ws:
            if how == "subscribe":
                await ws.send(json.dumps({"type": "subscribe", "realm": "not-a-key"}))
            elif how == "garbage":
                await ws.send("hello?")
            error = await next_message(ws)
            assert error["type"] == "error"
            assert error["realm"] == "Invalid Realm Key."
            assert int(error["timestamp"]) > 0
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008

    asyncio.run(run())


def test_a_tenant_sees_only_its_own_events(stream_server: Server, owner: Tenant) -> None:
    other = create_tenant(stream_server)

    async def run() -> None:
        async with (
            connect(ws_url(stream_server), additional_headers={"x-api-key": owner.api_key}) as mine,
            connect(
                ws_url(stream_server), additional_headers={"x-api-key": other.api_key}
            ) as theirs,
        ):
            await next_message(mine)
            await next_message(theirs)
            their_message = await asyncio.to_thread(
                send_sms, stream_server, other.api_key, "385981230005"
            )
            my_message = await asyncio.to_thread(
                send_sms, stream_server, owner.api_key, "385981230005"
            )
            [their_event] = await notifications(theirs, 1)
            [my_event] = await notifications(mine, 1)
            assert their_event["data"] == their_message
            assert my_event["data"] == my_message
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(theirs.recv(), 1.0)

    asyncio.run(run())


def insert_events(database_url: str, account_id: str, count: int) -> None:
    """Many events for one tenant at once, written straight to the table."""
    from pigeon.clock import utcnow
    from pigeon.db.bulk import insert_rows
    from pigeon.db.engine import create_engine
    from pigeon.db.tables import events

    async def run() -> None:
        engine = create_engine(database_url)
        now = utcnow()
        rows = [
            {
                "id": f"evt_bulk{account_id[:8]}{i:012d}",
                "account_id": account_id,
                "type": "sms.message.sent",
                "message_id": str(i),
                "created_at": now,
                "body": "{}",
            }
            for i in range(count)
        ]
        try:
            for start in range(0, count, 5000):
                async with engine.begin() as conn:
                    await conn.run_sync(insert_rows, events, rows[start : start + 5000])
        finally:
            await engine.dispose()

    asyncio.run(run())


async def drain(ws: ClientConnection, at_most: int) -> None:
    for _ in range(at_most):
        await asyncio.wait_for(ws.recv(), 10)


def small_buffer_socket(port: int) -> socket.socket:
    """A connection that takes little before it stops the sender: a client that does not read
    fills it quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def logged(server: Server, line: str, times: int, timeout: float = 60) -> None:
    """Wait until the server's log holds `line` `times` times."""
    deadline = time.monotonic() + timeout
    while server.log_path.read_text().count(line) < times:
        assert time.monotonic() < deadline, f"{line!r} not logged {times} times in {timeout} s"
        await asyncio.sleep(0.1)


def test_a_client_that_does_not_read_is_closed_with_1008_and_others_are_not(
    stream_server: Server, owner: Tenant
) -> None:
    too_slow = "stream client too slow: disconnected"

    async def run() -> None:
        headers = {"x-api-key": owner.api_key}
        before = stream_server.log_path.read_text().count(too_slow)
        async with (
            connect(
                ws_url(stream_server),
                additional_headers=headers,
                max_queue=1,
                compression=None,
                sock=small_buffer_socket(stream_server.port),
            ) as slow,
            connect(ws_url(stream_server), additional_headers=headers) as reader,
        ):
            await next_message(slow)
            await next_message(reader)
            count = 60_000  # more than the socket buffers and the server's queue hold

            async def read_all() -> None:
                for _ in range(count):
                    message = await next_message(reader, timeout=30)
                    assert message["type"] == "notification"

            reading = asyncio.create_task(read_all())
            inserting = asyncio.create_task(
                asyncio.to_thread(
                    insert_events, stream_server.env["PIGEON_DATABASE_URL"], owner.account_id, count
                )
            )
            # The slow client stopped reading: its queue fills and the server closes it...
            await logged(stream_server, too_slow, before + 1)
            # ...with 1008, which the client gets once it reads again, after what was sent
            # before it, though the close was sent while its connection was full: even when
            # it reads again only seconds later (past the 5 s the handler waits for a close).
            await asyncio.sleep(7)
            with pytest.raises(ConnectionClosed) as closed:
                await drain(slow, count)
            assert closed.value.rcvd is not None, "closed without a close frame"
            assert closed.value.rcvd.code == 1008
            await inserting
            await reading
            # The reader is still served.
            message_id = await asyncio.to_thread(
                send_sms, stream_server, owner.api_key, "385981230005"
            )
            [event] = await notifications(reader, 1)
            assert event["data"] == message_id

    asyncio.run(run())
