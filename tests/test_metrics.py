"""GET /metrics counts exactly what happened: sends, deliveries, reports, provider calls, the
queue; under `--workers 2` the sum over the processes; `pigeon worker --metrics-port` its own."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    DATABASES,
    DEMO_ID,
    DEMO_KEY,
    PIGEON,
    ROOT,
    Server,
    free_port,
    make_server,
    wait_for_final,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
USER_SMS = "/v1/users/{user_id}/message/sms"
APP_SMS = "/v1/apps/message/sms"
SEND = f"/v1/users/{DEMO_ID}/message/sms"


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{sample} appears twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labels_of(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name}


def eventually(base_url: str, check: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """Scrape until `check` holds (a commit is counted as it happens, a scrape may be early)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base_url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def send_sms(client: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> str:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose counters only this module's sends move."""
    srv = make_server(tmp_path_factory.mktemp("metrics"))
    srv.start()
    yield srv
    srv.stop()


def test_sends_deliveries_and_reports_are_counted_exactly(own_server: Server) -> None:
    with own_server.client(DEMO_KEY) as client:
        ids = [send_sms(client, SEND, {"content": {"text": f"hello {n}"}}) for n in range(3)]
        key = uuid.uuid4().hex
        ids.append(
            send_sms(client, SEND, {"content": {"text": "once"}}, **{"idempotency-key": key})
        )
        replayed = client.post(
            SEND, json={"content": {"text": "once"}}, headers={"idempotency-key": key}
        )
        assert replayed.headers["idempotent-replayed"] == "true"
        for number in ("385981230002", "385981240002", "385981230005"):
            ids.append(send_sms(client, APP_SMS, {"to": number, "content": {"text": "x"}}))
        assert client.post(SEND, json={"content": {"text": ""}}).status_code == 422
        assert client.get("/v1/no-such-route/12345678").status_code == 404
        finals = [wait_for_final(client, message_id)["status"]["groupName"] for message_id in ids]
    assert sorted(finals) == sorted(["DELIVERED"] * 4 + ["UNDELIVERABLE"] * 2 + ["REJECTED"])

    final = "pigeon_messages_final_total"
    samples = eventually(
        own_server.base_url,
        lambda s: sum(v for (n, _), v in s.items() if n == final) >= 7,
    )
    # Accepted: four to the user (the replay is not a new message), three to any destination.
    assert value(samples, "pigeon_messages_accepted_total", channel="sms", recipient="user") == 4
    assert value(samples, "pigeon_messages_accepted_total", channel="sms", recipient="app") == 3
    # Requests, by route template: the fast path's and Litestar's alike.
    requests = "pigeon_http_requests_total"
    assert value(samples, requests, method="POST", route=USER_SMS, status="200") == 5
    assert value(samples, requests, method="POST", route=USER_SMS, status="422") == 1
    assert value(samples, requests, method="POST", route=APP_SMS, status="200") == 3
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert value(samples, requests, method="GET", route="/v1/messages/{message_id}", status="200")
    routes = labels_of(samples, requests, "route")
    assert not any(re.search(r"\d{6}", route) or DEMO_ID in route for route in routes), routes
    assert value(samples, "pigeon_http_request_duration_seconds_count", route=USER_SMS) == 6
    # Final statuses, and the time each took from acceptance.
    assert value(samples, final, channel="sms", group="DELIVERED") == 4
    assert value(samples, final, channel="sms", group="UNDELIVERABLE") == 2
    assert value(samples, final, channel="sms", group="REJECTED") == 1
    assert value(samples, "pigeon_delivery_seconds_count", channel="sms") == 7
    assert value(samples, "pigeon_delivery_seconds_sum", channel="sms") > 0
    # The sandbox reported the six it took; the rejected one never reached a report.
    assert (
        value(samples, "pigeon_reports_received_total", provider="sandbox", outcome="applied") == 6
    )
    assert not value(samples, "pigeon_reports_received_total", provider="sandbox", outcome="stale")
    calls = value(
        samples, "pigeon_provider_requests_total", provider="sandbox", channel="sms", outcome="ok"
    )
    assert 1 <= calls <= 7
    assert value(samples, "pigeon_provider_request_duration_seconds_count", provider="sandbox") == (
        calls
    )
    for channel in ("sms", "whatsapp", "email"):
        assert value(samples, "pigeon_queue_depth", channel=channel) == 0
        assert value(samples, "pigeon_queue_oldest_seconds", channel=channel) == 0


def _platform_reports_url(server: Server) -> str:
    out = server.cli("webhooks")
    return next(
        line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("delivery_reports")
    )


def _report(message_id: str) -> dict[str, Any]:
    status = {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"}
    return {"messageId": message_id, "status": status}


def test_queue_gauges_and_webhook_reports(tmp_path: Path) -> None:
    srv = make_server(tmp_path, "--no-worker")
    srv.start()
    try:
        with srv.client(DEMO_KEY) as client:
            first = send_sms(client, SEND, {"content": {"text": "one"}})
            time.sleep(0.3)
            send_sms(client, SEND, {"content": {"text": "two"}})
            body = {"to": "test@example.com", "content": {"subject": "s", "text": "t"}}
            assert client.post("/v1/apps/message/email", json=body).status_code == 200
        samples = scrape(srv.base_url)
        assert value(samples, "pigeon_queue_depth", channel="sms") == 2
        assert value(samples, "pigeon_queue_depth", channel="email") == 1
        assert value(samples, "pigeon_queue_depth", channel="whatsapp") == 0
        assert 0.3 <= value(samples, "pigeon_queue_oldest_seconds", channel="sms") < 60

        url = _platform_reports_url(srv)
        answer = httpx.post(url, json={"results": [_report(first), _report("999")]}, timeout=10)
        assert answer.json() == {"received": 2, "applied": 1, "unknown": 1}, answer.text
        again = httpx.post(url, json={"results": [_report(first)]}, timeout=10)
        assert again.json()["applied"] == 0
        samples = scrape(srv.base_url)
        reports = "pigeon_reports_received_total"
        assert value(samples, reports, provider="infobip", outcome="applied") == 1
        assert value(samples, reports, provider="infobip", outcome="unknown") == 1
        assert value(samples, reports, provider="infobip", outcome="stale") == 1
        assert value(samples, "pigeon_messages_final_total", channel="sms", group="DELIVERED") == 1
        assert value(samples, "pigeon_queue_depth", channel="sms") == 1
    finally:
        srv.stop()


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="--workers 2 needs PostgreSQL")
def test_workers_2_sum_their_counters_and_the_worker_serves_its_own(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"a previous run's")  # must be cleared
    srv = make_server(
        tmp_path, "--workers", "2", "--no-worker", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    srv.start()
    worker = None
    try:
        deadline = time.monotonic() + 90  # /health answers as soon as the first is up
        while srv.log_path.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, srv.log_path.read_text()[-3000:]
            time.sleep(0.2)
        sent = 24
        for n in range(sent):  # a connection each: the kernel spreads them over both processes
            with srv.client(DEMO_KEY) as client:
                send_sms(client, SEND, {"content": {"text": f"n{n}"}})
        pids = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
        assert "1.db" not in pids, "the stale file was not cleared"
        assert len(pids) == 2, pids
        for _ in range(6):  # whichever process answers, the same sums, the queue counted once
            samples = scrape(srv.base_url)
            accepted = "pigeon_messages_accepted_total"
            assert value(samples, accepted, channel="sms", recipient="user") == sent
            requests = "pigeon_http_requests_total"
            assert value(samples, requests, method="POST", route=USER_SMS, status="200") == sent
            assert value(samples, "pigeon_queue_depth", channel="sms") == sent

        port = free_port()
        env = srv.env  # PROMETHEUS_MULTIPROC_DIR too: the worker counts on its own anyway
        log = (tmp_path / "worker.log").open("ab")
        worker = subprocess.Popen(
            [*PIGEON, "worker", "--metrics-port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        worker_url = f"http://127.0.0.1:{port}"
        final = "pigeon_messages_final_total"
        deadline = time.monotonic() + 30
        while True:
            try:
                samples = scrape(worker_url)
                if value(samples, final, channel="sms", group="DELIVERED") >= sent:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        assert value(samples, final, channel="sms", group="DELIVERED") == sent
        applied = value(
            samples, "pigeon_reports_received_total", provider="sandbox", outcome="applied"
        )
        assert applied == sent
        assert value(samples, "pigeon_delivery_seconds_count", channel="sms") == sent
        assert value(samples, "pigeon_queue_depth", channel="sms") == 0
        assert httpx.get(f"{worker_url}/other", timeout=5).status_code == 404
        # The API processes sent nothing themselves: their counters did not move.
        api = scrape(srv.base_url)
        assert value(api, final, channel="sms", group="DELIVERED") == 0
        assert value(api, "pigeon_queue_depth", channel="sms") == 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        srv.stop()
    assert os.path.isdir(metrics_dir)  # the operator's own directory is kept
