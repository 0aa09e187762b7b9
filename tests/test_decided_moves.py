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
from pigeon.db.engine import create_engine
from pigeon.dispatch.outcomes import record_outcomes, sent_moves
from pigeon.messages import status
from pigeon.messages.reports import StatusReport, decide_moves, move_statuses, read_states
from pigeon.providers.base import SendOutcome
from tests.conftest import DEMO_ID, DEMO_KEY, make_server


def _history(message: dict[str, Any]) -> list[str]:
    return [entry["status"]["name"] for entry in message.get("history", [])]


def test_a_report_applied_between_the_read_and_the_write_wins(tmp_path: Path) -> None:
    server = make_server(tmp_path, "--no-worker")
    server.start()
    try:
        with server.client(DEMO_KEY) as client:
            sent = client.post(
                f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "raced"}}
            )
            assert sent.status_code == 200, sent.text
            message_id = sent.json()["messages"][0]["messageId"]
            unraced = client.post(
                f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "not raced"}}
            ).json()["messages"][0]["messageId"]
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
