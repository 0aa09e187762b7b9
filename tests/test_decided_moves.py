"""Status changes decided before their write transaction are written only if still true.

The worker reads the rows, decides their changes and builds their events outside the write
transaction, so that the database's write lock is held only while they are written. A report
applied in between (a provider's webhook, on another process) must win as if the worker had
read after it: nothing moves backwards, no event is told twice or out of order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.engine import create_engine, reader_for
from pigeon.demo import DEMO_ACCOUNT_ID
from pigeon.dispatch.outcomes import record_outcomes, sent_moves
from pigeon.messages import status
from pigeon.messages.reports import StatusReport, decide_moves, move_statuses, read_states
from pigeon.providers.base import SendOutcome
from tests.conftest import DEMO_ID, DEMO_KEY, make_server


def _history(message: dict[str, Any]) -> list[str]:
    return [entry["status"]["name"] for entry in message.get("history", [])]


def _sent(client: Any, text: str) -> str:
    """Send an SMS to the demo User: its message id."""
    sent = client.post(f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": text}})
    assert sent.status_code == 200, sent.text
    return str(sent.json()["messages"][0]["messageId"])


def test_a_report_applied_between_the_read_and_the_write_wins(tmp_path: Path) -> None:
    server = make_server(tmp_path, "--no-worker")
    server.start()
    try:
        with server.client(DEMO_KEY) as client:
            message_id = _sent(client, "raced")
            unraced = _sent(client, "not raced")
            url = server.env["PIGEON_DATABASE_URL"]

            async def race() -> None:
                engine = create_engine(url)
                try:
                    # The worker's view: both messages accepted, the provider took them.
                    async with engine.connect() as conn:
                        rows = await conn.run_sync(read_states, [message_id, unraced])
                        await conn.rollback()
                    now = utcnow()
                    outcomes = [
                        SendOutcome(mid, status.ENROUTE, f"provider-{mid}")
                        for mid in (message_id, unraced)
                    ]
                    reports, changes = sent_moves(outcomes, "sandbox", now)
                    decided = decide_moves(
                        rows, reports=reports, source="worker", sent=changes, attempted=True
                    )
                    # Meanwhile the delivery report of the first one is applied.
                    async with engine.begin() as conn:
                        await conn.run_sync(
                            lambda c: move_statuses(
                                c,
                                reports=[StatusReport(message_id, status.DELIVERED)],
                                source="report",
                            )
                        )
                    async with engine.begin() as conn:
                        await conn.run_sync(
                            lambda c: record_outcomes(
                                c,
                                outcomes=outcomes,
                                worker_id="test",
                                provider_name="sandbox",
                                settings=Settings(),
                                now=now,
                                decided=decided,
                            )
                        )
                finally:
                    await engine.dispose()

            asyncio.run(race())
            raced = client.get(f"/v1/messages/{message_id}").json()
            assert raced["status"]["name"] == "DELIVERED_TO_HANDSET"
            # What the worker learned is still recorded, decided again on the row as it was.
            assert raced["attempts"] == 1
            assert raced["providerMessageId"] == f"provider-{message_id}"
            assert _history(raced) == ["PENDING_ACCEPTED", "DELIVERED_TO_HANDSET"]
            calm = client.get(f"/v1/messages/{unraced}").json()
            assert calm["status"]["name"] == "PENDING_ENROUTE"
            assert calm["attempts"] == 1
            assert _history(calm) == ["PENDING_ACCEPTED", "PENDING_ENROUTE"]
            events = client.get("/v1/events", params={"limit": 100}).json()["items"]
            told = sorted(
                (e["type"], e["data"]["messageId"], e["data"]["status"]["name"])
                for e in events
                if e["data"]["messageId"] in (message_id, unraced)
            )
            assert told == sorted(
                [
                    ("sms.message.delivered", message_id, "DELIVERED_TO_HANDSET"),
                    ("sms.message.sent", unraced, "PENDING_ENROUTE"),
                ]
            )
    finally:
        server.stop()


def test_a_message_is_read_from_one_snapshot_while_its_send_is_recorded(tmp_path: Path) -> None:
    """GET /v1/messages/{id} reads the message, its history and its attempts in three
    statements; a send recorded between the first and the others must not show its attempt
    and history without its status (it did on PostgreSQL under READ COMMITTED)."""
    from sqlalchemy.ext.asyncio import AsyncConnection

    from pigeon.messages.query import get_message

    server = make_server(tmp_path, "--no-worker")
    server.start()
    try:
        with server.client(DEMO_KEY) as client:
            message_id = _sent(client, "read me")
        url = server.env["PIGEON_DATABASE_URL"]

        async def read_while_recorded() -> tuple[Any, Any]:
            engine = create_engine(url)
            reader = reader_for(engine, url)
            try:
                reading: list[AsyncConnection] = []
                execute = AsyncConnection.execute

                async def execute_then_record(self: AsyncConnection, *args: Any, **kw: Any) -> Any:
                    result = await execute(self, *args, **kw)
                    if self in reading:  # after the message's row, before the rest
                        reading.remove(self)
                        outcome = SendOutcome(message_id, status.ENROUTE, "provider-1")
                        async with engine.begin() as other:
                            await other.run_sync(
                                lambda c: record_outcomes(
                                    c,
                                    outcomes=[outcome],
                                    worker_id="test",
                                    provider_name="sandbox",
                                    settings=Settings(),
                                )
                            )
                    return result

                AsyncConnection.execute = execute_then_record  # type: ignore[method-assign]
                try:
                    # As the API reads (on SQLite a read-only engine: the writing one's
                    # transactions take the file's write lock).
                    async with reader.connect() as conn:
                        reading.append(conn)
                        during = await get_message(
                            conn=conn, account_id=DEMO_ACCOUNT_ID, message_id=message_id
                        )
                finally:
                    AsyncConnection.execute = execute  # type: ignore[method-assign]
                async with engine.connect() as conn:
                    after = await get_message(
                        conn=conn, account_id=DEMO_ACCOUNT_ID, message_id=message_id
                    )
                return during, after
            finally:
                if reader is not engine:
                    await reader.dispose()
                await engine.dispose()

        during, after = asyncio.run(read_while_recorded())
        assert during.status.name == "PENDING_ACCEPTED"
        assert [e.status.name for e in during.history] == ["PENDING_ACCEPTED"]
        assert during.deliveryAttempts == []
        assert after.status.name == "PENDING_ENROUTE"
        assert [e.status.name for e in after.history] == ["PENDING_ACCEPTED", "PENDING_ENROUTE"]
        assert [a.outcome for a in after.deliveryAttempts] == ["accepted"]
    finally:
        server.stop()
