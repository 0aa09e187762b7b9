"""`pigeon serve` runs its dispatch worker, and its webhook deliveries, as child processes,
kept running and tied to it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import DEMO_ID, DEMO_KEY, Server, make_server, wait_for_final
from tests.fakes.receiver import Received, Receiver

WORKER_MODULE = "pigeon.dispatch.process"


def _children(pid: int) -> list[int]:
    """The process ids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _command(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited, only its parent has not reaped it


def _workers(server_pid: int) -> list[int]:
    """The server's live worker children."""
    return [p for p in _children(server_pid) if WORKER_MODULE in _command(p) and _alive(p)]


def _worker_of(server_pid: int, role: str = "dispatch", timeout: float = 60) -> int:
    """The server's child with this role (`python -m pigeon.dispatch.process FD ROLE`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [p for p in _workers(server_pid) if _command(p).split()[-1] == role]
        if workers:
            return workers[0]
        time.sleep(0.1)
    raise AssertionError(f"pigeon serve has no {role} worker process")


def _send(client: httpx.Client, text: str) -> str:
    response = client.post(f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": text}})
    assert response.status_code == 200, response.text
    message_id: str = response.json()["messages"][0]["messageId"]
    return message_id


def _delivered(client: httpx.Client, message_id: str) -> None:
    body = wait_for_final(client, message_id, timeout=30)
    assert body["status"]["groupName"] == "DELIVERED", (body["status"], body.get("sentAt"))


def test_serve_dispatches_from_a_child_process_that_is_restarted_when_it_dies(
    tmp_path: Path,
) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        assert server.process is not None
        worker = _worker_of(server.process.pid)
        with server.client(DEMO_KEY) as client:
            first = _send(client, "sent by the worker process")
            _delivered(client, first)
            message = client.get(f"/v1/messages/{first}").json()
            assert message["attempts"] == 1
            # The child's counts are the server's: /metrics adds them up.
            scraped = client.get("/metrics").text
            assert 'pigeon_messages_final_total{channel="sms",group="DELIVERED"} 1.0' in scraped

            os.kill(worker, signal.SIGKILL)
            replacement = _worker_of(server.process.pid)
            assert replacement != worker
            _delivered(client, _send(client, "sent by the restarted worker"))
        log = server.log_path.read_text()
        assert "worker process exited: starting it again" in log
        assert f"code=-{int(signal.SIGKILL)}" in log
    finally:
        assert server.stop()
    # A graceful stop ends the worker too.
    assert not _alive(replacement)


def test_the_worker_process_stops_when_serve_is_killed(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    assert server.process is not None
    worker = _worker_of(server.process.pid)
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived the server it worked for"
    assert "worker stopped" in server.log_path.read_text()


def test_pigeon_worker_process_0_dispatches_in_the_api_process(tmp_path: Path) -> None:
    server = make_server(tmp_path, PIGEON_WORKER_PROCESS="0")
    server.start()
    try:
        assert server.process is not None
        with server.client(DEMO_KEY) as client:
            _delivered(client, _send(client, "sent from the API's own process"))
        assert not [p for p in _children(server.process.pid) if WORKER_MODULE in _command(p)]
        started = [
            line for line in server.log_path.read_text().splitlines() if "worker started" in line
        ]
        assert len(started) == 1
        assert f":{server.process.pid}:" in started[0]  # the worker's id names its process
    finally:
        assert server.stop()


def test_an_accepted_send_wakes_the_worker_process_at_once(tmp_path: Path) -> None:
    """The API tells its worker process of each committed send: with a poll interval of a
    minute, a message is still sent within seconds (the worker sleeps until told), and the
    sandbox's report is applied when it is due, not at the next poll."""
    server = make_server(tmp_path, PIGEON_WORKER_POLL_INTERVAL="60")
    server.start()
    try:
        assert server.process is not None
        _worker_of(server.process.pid)
        with server.client(DEMO_KEY) as client:
            time.sleep(1)  # the worker's first rounds are over: it sleeps until woken
            for text in ("woken", "woken again"):
                started = time.monotonic()
                _delivered(client, _send(client, text))
                assert time.monotonic() - started < 20
    finally:
        assert server.stop()


def _subscribe(client: httpx.Client, receiver: Receiver) -> str:
    response = client.post("/v1/webhook-endpoints", json={"url": f"{receiver.url}/hook"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _recorded(client: httpx.Client, endpoint_id: str, count: int) -> None:
    """Wait until `count` deliveries to the endpoint are recorded as succeeded."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries").json()["items"]
        if sum(item["state"] == "succeeded" for item in items) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} deliveries recorded")


def _events_of(receiver: Receiver, message_id: str) -> list[str]:
    """The types of the message's events the receiver got, sorted, once it has sent and
    delivered (concurrent attempts need not post them in order)."""

    def types(requests: list[Received]) -> list[str]:
        return [r.event["type"] for r in requests if r.event["data"].get("messageId") == message_id]

    done = {"sms.message.sent", "sms.message.delivered"}
    return sorted(types(receiver.wait_for(lambda got: done <= set(types(got)), timeout=30)))


def _delivering_pid(server: Server) -> int:
    """The process whose deliveries started last: its id (host:pid:token) names it."""
    started = [
        line for line in server.log_path.read_text().splitlines() if "deliveries started" in line
    ]
    assert started, "no deliveries started"
    return int(started[-1].split("worker=", 1)[1].split(":")[1])


def test_serve_delivers_webhooks_from_a_child_of_their_own_restarted_when_it_dies(
    tmp_path: Path,
) -> None:
    server = make_server(tmp_path)
    server.start()
    receiver = Receiver().start()
    try:
        assert server.process is not None
        dispatch = _worker_of(server.process.pid, "dispatch")
        deliveries = _worker_of(server.process.pid, "deliveries")
        assert len(_workers(server.process.pid)) == 2
        with server.client(DEMO_KEY) as client:
            endpoint_id = _subscribe(client, receiver)
            first = _send(client, "its events are posted by the deliveries process")
            assert _events_of(receiver, first) == ["sms.message.delivered", "sms.message.sent"]
            assert _delivering_pid(server) == deliveries
            _recorded(client, endpoint_id, 2)

            os.kill(deliveries, signal.SIGKILL)
            replacement = _worker_of(server.process.pid, "deliveries")
            assert replacement != deliveries
            assert _worker_of(server.process.pid, "dispatch") == dispatch  # left alone
            second = _send(client, "posted by the restarted one")
            assert _events_of(receiver, second) == ["sms.message.delivered", "sms.message.sent"]
            _recorded(client, endpoint_id, 4)
            # The first message's events, recorded before the kill, were not posted again.
            assert len(receiver.received) == 4
        log = server.log_path.read_text()
        assert "role=deliveries" in log.split("worker process exited: starting it again", 1)[1]
    finally:
        receiver.stop()
        assert server.stop()
    assert not _alive(replacement)
    assert not _alive(dispatch)


def test_pigeon_delivery_process_0_delivers_from_the_dispatch_workers_process(
    tmp_path: Path,
) -> None:
    server = make_server(tmp_path, PIGEON_DELIVERY_PROCESS="0")
    server.start()
    receiver = Receiver().start()
    try:
        assert server.process is not None
        worker = _worker_of(server.process.pid, "all")
        assert _workers(server.process.pid) == [worker]
        with server.client(DEMO_KEY) as client:
            _subscribe(client, receiver)
            message_id = _send(client, "dispatched and posted by one child")
            assert _events_of(receiver, message_id) == [
                "sms.message.delivered",
                "sms.message.sent",
            ]
        assert _delivering_pid(server) == worker
    finally:
        receiver.stop()
        assert server.stop()
