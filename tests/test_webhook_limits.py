"""A large webhook neither freezes the API nor floods the log.

A request carries at most MAX_WEBHOOK_ENTRIES entries (Infobip sends a few hundred at most);
a longer one is refused before anything is applied. A full-size batch of reports is applied
in chunks that let other requests through, and logged as one summary line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pigeon.webhooks.schemas import MAX_WEBHOOK_ENTRIES
from tests.conftest import DEMO_KEY, Server, make_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("webhooks"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def urls(served: Server) -> dict[str, str]:
    """The demo tenant's webhook paths, by kind."""
    with served.client(DEMO_KEY) as client:
        hooks = client.get("/v1/extensions/infobip").json()["webhooks"]
    return {
        "reports": hooks["deliveryReports"].removeprefix(served.base_url),
        "inbound": hooks["inbound"].removeprefix(served.base_url),
    }


def _reports(ids: list[str]) -> dict[str, Any]:
    status = {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"}
    return {"results": [{"messageId": i, "status": status} for i in ids]}


def _inbound(count: int, start: int = 0) -> dict[str, Any]:
    return {
        "results": [
            {"from": f"38591{start + i:07d}", "to": "447860088593", "message": {"text": "hi"}}
            for i in range(count)
        ]
    }


@pytest.mark.parametrize("kind", ["reports", "inbound"])
def test_more_entries_than_the_cap_are_refused_at_once(
    served: Server, urls: dict[str, str], kind: str
) -> None:
    count = 50_000
    body = (
        _reports([f"unknown-{i}" for i in range(count)]) if kind == "reports" else _inbound(count)
    )
    with httpx.Client(base_url=served.base_url, timeout=60) as client:
        started = time.monotonic()
        answer = client.post(urls[kind], json=body)
        elapsed = time.monotonic() - started
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["field"] == "results"
    assert str(MAX_WEBHOOK_ENTRIES) in problem["detail"]
    assert elapsed < 5  # before the cap: 6.3 s for the reports, 20 s for the inbound
    log = served.log_path.read_text()
    assert "unknown-49999" not in log


def test_a_full_batch_of_reports_leaves_the_api_responsive_and_logs_one_line(
    served: Server, urls: dict[str, str]
) -> None:
    unknown = [f"never-sent-{i}" for i in range(MAX_WEBHOOK_ENTRIES)]
    before = served.log_path.read_text().count("\n")
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=served.base_url, timeout=60) as client:
            answers.append(client.post(urls["reports"], json=_reports(unknown)))

    poster = threading.Thread(target=post)
    latencies = []
    with httpx.Client(base_url=served.base_url, timeout=30) as health:
        poster.start()
        while poster.is_alive():
            started = time.monotonic()
            assert health.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
    poster.join()
    [answer] = answers
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": MAX_WEBHOOK_ENTRIES, "applied": 0, "unknown": 1000}
    assert max(latencies) < 2.0, latencies
    new_lines = served.log_path.read_text().splitlines()[before:]
    about_reports = [line for line in new_lines if "never-sent-" in line]
    assert len(about_reports) == 1, about_reports[:5]
    assert "unknown=1000" in about_reports[0]


def test_a_full_batch_of_inbound_messages_is_recorded(served: Server, urls: dict[str, str]) -> None:
    with httpx.Client(base_url=served.base_url, timeout=60) as client:
        answer = client.post(urls["inbound"], json=_inbound(MAX_WEBHOOK_ENTRIES, start=5000))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "received": MAX_WEBHOOK_ENTRIES,
        "applied": MAX_WEBHOOK_ENTRIES,
        "unknown": 0,
    }
