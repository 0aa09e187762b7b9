"""`make bench`: Pigeon's ingest and dispatch against the HTTP ceiling of this machine.

Everything runs on 127.0.0.1, bounded in time, and stops by itself:
1. limit     a bare ASGI app on the same server stack (uvicorn, uvloop, httptools), no database;
             measured with each ingest, in alternating slices (see `paired`)
2. ingest    Pigeon on SQLite (sandbox, demo tenant), POST /v1/users/{id}/message/sms
3. ingest    Pigeon on PostgreSQL with `pigeon serve --workers 2`
4. dispatch  a backlog of SMS from accepted to acknowledged by a fake Infobip, through the worker
5. e2e       accept and deliver at once (`pigeon serve`, SQLite and PostgreSQL)
6. events    the default `pigeon serve` with and without a webhook endpoint subscribed to every
             event (a receiver on 127.0.0.1): events delivered per second, and what they cost
It prints one table and writes it as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pigeon.db.engine import create_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fake Infobip and the PostgreSQL helper live under tests/

from tests.databases import PostgresCluster, _free_port, scalar  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))  # per ingest, and per limit measured with it
SLICES = int(os.environ.get("BENCH_SLICES", "5"))  # each SECONDS split into this many slices
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "50000"))
DEMO_KEY = "AXVubzpwQDU1dzByYM=="
PYTHON = sys.executable
RUNS = ("sqlite", "postgresql", "dispatch", "e2e", "events")
DRAIN_SECONDS = 2.0  # after an e2e run's last slice, what still ends final counts
# The fake Infobip's delay before it posts a delivery report (the sandbox's default is 0.5 s).
REPORT_DELAY = float(os.environ.get("BENCH_REPORT_DELAY", "0.5"))


@dataclass
class Row:
    name: str
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    share_of_limit: float | None = None
    notes: str = ""
    slices: list[dict[str, Any]] = field(default_factory=list)  # wrk's summary of each
    # e2e rows: messages that reached a final status during Pigeon's slices (and the drain
    # after the last one) per second of load; the backlog left when the load ended.
    final_per_s: float | None = None
    final_share_of_limit: float | None = None
    backlog: int | None = None
    backlog_seconds: float | None = None
    # events rows: webhook deliveries that succeeded during Pigeon's slices (and the drain) per
    # second of load; the deliveries due and not yet made when the load ended.
    events_per_s: float | None = None
    event_backlog: int | None = None


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far.

    On a shared machine a process's CPU per request moves far less than its requests/s."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *(int(p) for p in children.split())]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, run_id: str, seconds: float = SECONDS) -> dict[str, Any]:
    env = {**os.environ, "PIGEON_BENCH_KEY": DEMO_KEY, "PIGEON_BENCH_RUN": run_id}
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "ingest.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=True,
    ).stdout
    summary: dict[str, Any] = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return summary


def row_from(name: str, slices: list[dict[str, Any]], rss: dict[str, float]) -> Row:
    """One row from one or more wrk runs against the same server.

    Requests/s: all requests over all the runs' time. p99: the highest run's, which bounds
    the p99 of all the requests together (at most 1% of each run's are slower). p50: the
    median of the runs' p50 (wrk reports percentiles, not the latencies to merge).
    """
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["duration_us"] for s in slices) / 1e6
    return Row(
        name=name,
        requests_per_s=round(requests / seconds, 1),
        p50_ms=round(statistics.median(s["p50_us"] for s in slices) / 1000, 2),
        p99_ms=round(max(s["p99_us"] for s in slices) / 1000, 2),
        errors=sum(s["non2xx"] + s["socket_errors"] for s in slices),
        peak_rss_mb=rss,
        slices=slices if len(slices) > 1 else [],
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def count(database_url: str, sql: str) -> int:
    return int(scalar(database_url, sql))


@contextmanager
def limit_app() -> Iterator[tuple[str, int]]:
    """The bare ASGI app on uvicorn: its URL and process id."""
    port = _free_port()
    server = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "bench.limit_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        stop(server)


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, int]]:
    """A webhook receiver answering 204 at once (bench/receiver.py): its URL and process id."""
    port = _free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "bench.receiver", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}/hook", server.pid
    finally:
        stop(server)


def subscribe_everything(pigeon_url: str, receiver_url: str) -> None:
    """The demo tenant's endpoint, subscribed to every event."""
    response = httpx.post(
        f"{pigeon_url}/v1/webhook-endpoints",
        headers={"x-api-key": DEMO_KEY},
        json={"url": receiver_url, "description": "bench"},
        timeout=30,
    )
    response.raise_for_status()


def deliveries_due(database_url: str) -> int:
    """How many webhook deliveries are due and not made."""
    from sqlalchemy import func, select

    from pigeon.clock import utcnow
    from pigeon.db.tables import webhook_deliveries as d

    async def run() -> int:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                query = select(func.count()).where(
                    d.c.state == "pending", d.c.next_attempt_at <= utcnow()
                )
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def event_deliveries(database_url: str) -> tuple[list[float], int]:
    """When each successful webhook attempt was made (epoch seconds), and how many deliveries
    are due and not made."""
    from sqlalchemy import select

    from pigeon.clock import utcnow
    from pigeon.db.tables import webhook_attempts, webhook_deliveries

    async def run() -> tuple[list[float], int]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                done = await conn.execute(
                    select(webhook_attempts.c.at).where(
                        webhook_attempts.c.http_status.between(200, 299)
                    )
                )
                due = await conn.execute(
                    select(webhook_deliveries.c.id).where(
                        webhook_deliveries.c.state == "pending",
                        webhook_deliveries.c.next_attempt_at <= utcnow(),
                    )
                )
                return [row.at.timestamp() for row in done], len(due.all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def bench_limit(name: str = "limit: bare ASGI, 1 process") -> Row:
    with limit_app() as (url, pid):
        summary = wrk(url, "limit")
        return row_from(name, [summary], {"server": peak_rss_mb(pid)})


def pigeon_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_")}
    env.update(
        PIGEON_DATABASE_URL=database_url,
        PIGEON_PORT=str(port),
        PIGEON_DEMO="1",
        PIGEON_LOG_LEVEL="WARNING",
        # Demo mode on PostgreSQL needs one secret shared by every process (serversecret).
        PIGEON_SECRET_KEY="bench-secret-0123456789abcdefghijklmnopqrstuv",
    )
    env.update(extra)
    return env


@contextmanager
def pigeon_server(
    database_url: str, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[str, list[int]]]:
    """`pigeon serve` with these arguments: its URL and process ids (uvicorn's workers too)."""
    port = port or _free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "pigeon", "serve", *args],
        env=pigeon_env(database_url, port, **(env or {})),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        time.sleep(1)
        yield f"http://127.0.0.1:{port}", family(server.pid)
    finally:
        stop(server)


def pigeon_api(database_url: str, *args: str) -> Any:
    """`pigeon serve` without its worker: its URL and process ids (uvicorn's workers too)."""
    return pigeon_server(database_url, "--no-worker", *args)


def alternate(
    limit_url: str, url: str, run_id: str, after_slice: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[float, float]]]:
    """SLICES slices on the limit and on Pigeon, alternating, limit first: the wrk summaries
    of each, and the wall-clock window of each of Pigeon's slices (`after_slice` is called
    after each of them)."""
    seconds = SECONDS / SLICES
    limit_slices: list[dict[str, Any]] = []
    pigeon_slices: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []
    for n in range(SLICES):
        # The disk written out before each slice: the kernel's writeback of what the
        # ingest wrote is not done during the limit's slice (nor the next ingest's).
        os.sync()
        limit_slices.append(wrk(limit_url, "limit", seconds))
        os.sync()
        summary = wrk(url, f"{run_id}s{n}", seconds)
        ended = time.time()
        pigeon_slices.append(summary)
        windows.append((ended - summary["duration_us"] / 1e6, ended))
        if after_slice is not None:
            after_slice()
    return limit_slices, pigeon_slices, windows


def paired(name: str, limit_name: str, database_url: str, *args: str) -> list[Row]:
    """An ingest and the limit it is a share of, measured in alternating slices.

    This machine's speed drifts by 10-20% within tens of seconds. Measured one after the
    other, a limit and an ingest of 15 s each saw different machines, and their ratio moved
    by as much. So both servers are up at once, each idle while the other is measured, and
    wrk alternates between them: SLICES slices of SECONDS / SLICES seconds each, limit
    first. Each figure is over all its slices.
    """
    run_id = f"bench{int(time.time())}"
    with pigeon_api(database_url, *args) as (url, pids), limit_app() as (limit_url, limit_pid):
        cpu = cpu_seconds(pids)
        limit_slices, ingest_slices, _ = alternate(limit_url, url, run_id)
        cpu = cpu_seconds(pids) - cpu
        rss = {f"api{i}" if i else "api": peak_rss_mb(p) for i, p in enumerate(pids)}
        limit = row_from(limit_name, limit_slices, {"server": peak_rss_mb(limit_pid)})
    row = row_from(name, ingest_slices, rss)
    stored = count(
        database_url, f"SELECT count(*) FROM idempotency_keys WHERE key LIKE '{run_id}s%'"
    )
    accepted = sum(s["requests"] - s["non2xx"] for s in ingest_slices)
    # wrk counts answers it read; a request in flight when it stopped may be stored unanswered.
    lost = max(accepted - stored, 0)
    row.notes = f"accepted {accepted}, stored {stored}, lost {lost}"
    if accepted:
        row.notes += f"; Pigeon's CPU {cpu / accepted * 1e6:.0f} us per request"
    if lost:
        row.errors += lost
    return [limit, row]


def make_backlog(database_url: str, total: int) -> None:
    """Queue `total` accepted SMS straight into the database (the accept path is not measured)."""
    from pigeon.clock import utcnow
    from pigeon.db.tables import message_events, messages
    from pigeon.ids import new_message_id

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            now = utcnow()
            for start in range(0, total, 5000):
                rows, events = [], []
                for i in range(start, min(start + 5000, total)):
                    message_id = new_message_id()
                    rows.append(
                        {
                            "id": message_id,
                            "account_id": "634b56217f6a7b0be52d0000",
                            "channel": "sms",
                            "recipient_type": "app",
                            "recipient_id": None,
                            "destination": f"38598{i:06d}1",
                            "route": "platform",
                            "sender": "Pigeon",
                            "content": {"text": f"backlog {i}"},
                            "status_id": 26,
                            "group_id": 1,
                            "attempts": 0,
                            "next_attempt_at": now,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    events.append(
                        {"message_id": message_id, "status_id": 26, "source": "api", "at": now}
                    )
                async with engine.begin() as conn:
                    await conn.execute(messages.insert(), rows)
                    await conn.execute(message_events.insert(), events)
        finally:
            await engine.dispose()

    asyncio.run(run())


def wait_until_dispatched(database_url: str, deadline: float) -> None:
    """Return once no message is PENDING_ACCEPTED (or at the deadline), checking every 0.1 s.

    One connection, an EXISTS per check, each in its own short transaction: the poll must
    neither load the database it measures nor hold back the cleanup of the rows it updates.
    """
    from sqlalchemy import text

    query = text("SELECT EXISTS (SELECT 1 FROM messages WHERE status_id = 26)")

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    pending = (await conn.execute(query)).scalar_one()
                    await conn.rollback()
                    if not pending:
                        return
        finally:
            await engine.dispose()

    asyncio.run(run())


def bench_dispatch(database_url: str) -> Row:
    fake_port, api_port = _free_port(), _free_port()
    fake = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.fakes.infobip",
            "--port",
            str(fake_port),
            "--api-key",
            "bench-key",
            "--report-delay",
            "3600",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = pigeon_env(
        database_url,
        api_port,
        PIGEON_PROVIDER="infobip",
        PIGEON_INFOBIP_BASE_URL=f"http://127.0.0.1:{fake_port}",
        PIGEON_INFOBIP_API_KEY="bench-key",
        PIGEON_SECRET_KEY="bench-secret",
        PIGEON_WORKER_BATCH_SIZE="1000",
    )
    subprocess.run(
        [PYTHON, "-m", "pigeon", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [PYTHON, "-m", "pigeon", "demo"], env=env, cwd=ROOT, check=True, capture_output=True
    )
    make_backlog(database_url, BACKLOG)
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{fake_port}/__fake/summary")
        started = time.monotonic()
        worker = subprocess.Popen(
            [PYTHON, "-m", "pigeon", "worker", "--concurrency", "4"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_dispatched(database_url, deadline=started + max(120, SECONDS * 20))
        elapsed = time.monotonic() - started
        pending = count(database_url, "SELECT count(*) FROM messages WHERE status_id = 26")
        rss = {"worker": peak_rss_mb(worker.pid), "fake": peak_rss_mb(fake.pid)}
        summary = httpx.get(f"http://127.0.0.1:{fake_port}/__fake/summary", timeout=60).json()
    finally:
        if worker is not None:
            stop(worker)
        stop(fake)
    sent = BACKLOG - pending
    row = Row(
        name=f"dispatch: {BACKLOG} SMS to fake Infobip",
        peak_rss_mb=rss,
        requests_per_s=round(sent / elapsed, 1),
        errors=pending,
    )
    row.notes = (
        f"messages/s from accepted to acknowledged; {summary['requests']} Infobip "
        f"requests, {sum(n - 1 for n in summary['duplicates'].values())} duplicates"
    )
    return row


@contextmanager
def fake_infobip(report_delay: float = REPORT_DELAY) -> Iterator[tuple[str, int]]:
    """The fake Infobip as its own process (it posts delivery reports back): URL and pid."""
    port = _free_port()
    fake = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.fakes.infobip",
            "--port",
            str(port),
            "--api-key",
            "bench-key",
            "--report-delay",
            str(report_delay),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/__fake/summary")
        yield f"http://127.0.0.1:{port}", fake.pid
    finally:
        stop(fake)


def infobip_env(fake_url: str) -> dict[str, str]:
    return {
        "PIGEON_PROVIDER": "infobip",
        "PIGEON_INFOBIP_BASE_URL": fake_url,
        "PIGEON_INFOBIP_API_KEY": "bench-key",
    }


@contextmanager
def pigeon_worker(database_url: str, port: int, env: dict[str, str]) -> Iterator[int]:
    """`pigeon worker` for the API on `port` (its notify URLs name that port): its pid."""
    # BENCH_WORKER_CONCURRENCY: its dispatch loops (the default: `pigeon worker`'s own).
    loops = os.environ.get("BENCH_WORKER_CONCURRENCY")
    worker = subprocess.Popen(
        [PYTHON, "-m", "pigeon", "worker", *(["--concurrency", loops] if loops else [])],
        env=pigeon_env(database_url, port, **env),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield worker.pid
    finally:
        stop(worker)


@dataclass
class Delivery:
    """What became of an e2e run's messages, read from the database afterwards."""

    stored: int  # messages
    done_at: list[float]  # when each final one became final (epoch seconds)
    sent_twice: int  # messages the provider accepted more than once
    incomplete: int  # final messages whose history misses a step or repeats one
    overtaken: int  # final messages without en route (the report came before the answer)


def delivery(database_url: str) -> Delivery:
    from sqlalchemy import func, select, text

    from pigeon.db.tables import messages

    twice = text(
        "SELECT count(*) FROM (SELECT message_id FROM delivery_attempts"
        " WHERE outcome = 'accepted' GROUP BY message_id HAVING count(*) > 1) AS t"
    )
    from pigeon.messages.status import CATALOGUE

    pending = ", ".join(str(s.id) for s in CATALOGUE.values() if not s.is_final)

    def events(where: str) -> str:
        return f"(SELECT count(*) FROM message_events AS e WHERE e.message_id = m.id AND {where})"

    # Its accepted event and one final event, each once; en route at most once (it is missing
    # when the provider's report overtook its answer to the send).
    incomplete = text(
        "SELECT count(*) FROM messages AS m WHERE m.done_at IS NOT NULL AND ("
        f"{events('e.status_id = 26')} <> 1 OR {events(f'e.status_id NOT IN ({pending})')} <> 1"
        f" OR {events('e.status_id = 7')} > 1)"
    )
    no_enroute = events("e.status_id = 7")
    overtaken = text(
        f"SELECT count(*) FROM messages AS m WHERE m.done_at IS NOT NULL AND {no_enroute} = 0"
    )

    async def run() -> Delivery:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                stored = (await conn.execute(select(func.count()).select_from(messages))).scalar()
                done = await conn.execute(
                    select(messages.c.done_at).where(messages.c.done_at.is_not(None))
                )
                return Delivery(
                    stored=int(stored or 0),
                    done_at=[row.done_at.timestamp() for row in done],
                    sent_twice=int((await conn.execute(twice)).scalar_one()),
                    incomplete=int((await conn.execute(incomplete)).scalar_one()),
                    overtaken=int((await conn.execute(overtaken)).scalar_one()),
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def not_final(database_url: str) -> int:
    return count(database_url, "SELECT count(*) FROM messages WHERE done_at IS NULL")


def end_to_end(
    name: str,
    limit_name: str,
    database_url: str,
    *,
    serve: tuple[str, ...] = (),
    infobip: bool = False,
    worker: bool = False,
    endpoint: bool = False,
) -> list[Row]:
    """Accept and deliver at once, against the limit in alternating slices (see `paired`).

    final/s counts the messages whose final status was recorded during Pigeon's slices or in
    the DRAIN_SECONDS after the last one (what the worker finishes while the limit is measured
    does not count), per second of Pigeon's load.
    """
    run_id = f"e2e{int(time.time())}"
    port = _free_port()
    rss: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        fake_pid = None
        if infobip:
            fake_url, fake_pid = stack.enter_context(fake_infobip())
            env = infobip_env(fake_url)
        receiver_pid = None
        if endpoint:
            receiver_url, receiver_pid = stack.enter_context(webhook_receiver())
            env = {**env, "PIGEON_ALLOW_PRIVATE_URLS": "1"}  # the receiver is on 127.0.0.1
        url, pids = stack.enter_context(pigeon_server(database_url, *serve, env=env, port=port))
        if endpoint:
            subscribe_everything(url, receiver_url)
        worker_pid = stack.enter_context(pigeon_worker(database_url, port, env)) if worker else None
        limit_url, limit_pid = stack.enter_context(limit_app())
        roles = {"api": pids, "worker": [worker_pid] if worker_pid else [], "fake": []}
        if fake_pid is not None:
            roles["fake"] = [fake_pid]
        if receiver_pid is not None:
            roles["receiver"] = [receiver_pid]
        before = {role: cpu_seconds(p) for role, p in roles.items()}
        # The deliveries due after each of Pigeon's slices: a backlog that grows from one to
        # the next is delivery not keeping pace.
        due: list[int] = []
        limit_slices, slices, windows = alternate(
            limit_url,
            url,
            run_id,
            (lambda: due.append(deliveries_due(database_url))) if endpoint else None,
        )
        backlog = not_final(database_url)
        event_backlog = due[-1] if due else 0
        time.sleep(max(0.0, windows[-1][1] + DRAIN_SECONDS - time.time()))
        drained = not_final(database_url)
        used = {role: cpu_seconds(p) - before[role] for role, p in roles.items() if p}
        rss = {f"api{i}" if i else "api": peak_rss_mb(p) for i, p in enumerate(pids)}
        if worker_pid is not None:
            rss["worker"] = peak_rss_mb(worker_pid)
        if receiver_pid is not None:
            rss["receiver"] = peak_rss_mb(receiver_pid)
        if fake_pid is not None:
            rss["fake"] = peak_rss_mb(fake_pid)
            summary = httpx.get(f"{fake_url}/__fake/summary", timeout=60).json()
        limit = row_from(limit_name, limit_slices, {"server": peak_rss_mb(limit_pid)})
    row = row_from(name, slices, rss)
    found = delivery(database_url)
    counted = [*windows[:-1], (windows[-1][0], windows[-1][1] + DRAIN_SECONDS)]
    final = sum(any(a <= t <= b for a, b in counted) for t in found.done_at)
    seconds = sum(s["duration_us"] for s in slices) / 1e6
    accepted = sum(s["requests"] - s["non2xx"] for s in slices)
    stored = count(
        database_url, f"SELECT count(*) FROM idempotency_keys WHERE key LIKE '{run_id}s%'"
    )
    lost = max(accepted - stored, 0)
    twice = found.sent_twice
    if infobip:
        twice = max(twice, sum(n - 1 for n in summary["duplicates"].values()))
    row.requests_per_s = round(accepted / seconds, 1)
    row.final_per_s = round(final / seconds, 1)
    row.backlog = backlog
    row.backlog_seconds = round(backlog / (accepted / seconds), 2) if accepted else None
    row.errors += lost + twice + found.incomplete
    row.notes = (
        f"final/s {row.final_per_s}; backlog at the end {backlog} ({row.backlog_seconds} s of"
        f" input), {drained} after {DRAIN_SECONDS:g} s; accepted {accepted}, stored {stored},"
        f" lost {lost}, sent twice {twice}, history incomplete {found.incomplete}"
        f" (without en route: {found.overtaken})"
    )
    if found.done_at:
        per = ", ".join(f"{r} {c / len(found.done_at) * 1e6:.0f}" for r, c in used.items())
        row.notes += f"; CPU us per final message: {per}"
    if endpoint:
        posted, left = event_deliveries(database_url)
        row.events_per_s = round(
            sum(any(a <= t <= b for a, b in counted) for t in posted) / seconds, 1
        )
        row.event_backlog = event_backlog
        row.notes += (
            f"; events/s {row.events_per_s}, deliveries due after each slice"
            f" {', '.join(map(str, due))}, {left} after {DRAIN_SECONDS:g} s"
        )
    return [limit, row]


def bench_e2e(cluster: PostgresCluster | None, work: Path) -> list[Row]:
    rows: list[Row] = []
    # BENCH_E2E=serve,infobip,postgresql (the default: all three) runs some of them.
    chosen = set(os.environ.get("BENCH_E2E", "serve,infobip,postgresql").split(","))
    for name, infobip in (("e2e: SQLite, pigeon serve", False), ("e2e: SQLite, Infobip", True)):
        if ("infobip" if infobip else "serve") not in chosen:
            continue
        settle_disk()
        url = f"sqlite:///{work / 'e2e.db'}"
        rows += end_to_end(name, f"limit: again, for {name}", url, infobip=infobip)
        for path in work.glob("e2e.db*"):
            path.unlink()
    if cluster is not None and "postgresql" in chosen:
        settle_disk()
        name = "e2e: PostgreSQL"
        rows += end_to_end(
            name,
            f"limit: again, for {name}",
            cluster.new_database(),
            serve=("--workers", "2", "--no-worker"),
            infobip=True,
            worker=True,
        )
    return rows


def bench_events(work: Path) -> list[Row]:
    """The default `pigeon serve`, without and then with an endpoint taking every event.

    Each row is a share of the limit measured with it, so their ratio is the cost of the
    events: the drop of ingest and of final/s with an endpoint (target: at most 20%).
    """
    rows: list[Row] = []
    for name, endpoint in (
        ("e2e: SQLite, pigeon serve, no endpoint", False),
        ("events: SQLite, pigeon serve, 1 endpoint", True),
    ):
        settle_disk()
        url = f"sqlite:///{work / 'events.db'}"
        rows += end_to_end(name, f"limit: again, for {name}", url, endpoint=endpoint)
        for path in work.glob("events.db*"):
            path.unlink()
    (limit0, without), (limit1, with_) = rows[0:2], rows[2:4]
    ingest = (with_.requests_per_s / limit1.requests_per_s) / (
        without.requests_per_s / limit0.requests_per_s
    )
    final = (
        (with_.final_per_s or 0)
        / limit1.requests_per_s
        / ((without.final_per_s or 1) / limit0.requests_per_s)
    )
    with_.notes += (
        f"; against no endpoint (as shares of their limits): ingest {ingest - 1:+.1%},"
        f" final/s {final - 1:+.1%}"
    )
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'run':44} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'of limit':>8}"
        "  peak RSS MB"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        share = f"{r.share_of_limit:.1%}" if r.share_of_limit is not None else ""
        rss = ", ".join(f"{k} {v}" for k, v in r.peak_rss_mb.items())
        latency = (
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}" if r.p50_ms or r.p99_ms else f"{'-':>8} {'-':>8}"
        )
        print(f"{r.name:44} {r.requests_per_s:>9.1f} {latency} {r.errors:>6} {share:>8}  {rss}")
        if r.final_per_s is not None:
            final = f"{r.final_share_of_limit:.1%}" if r.final_share_of_limit is not None else ""
            print(f"{'final (accept to final status)':44} {r.final_per_s:>9.1f} {'':24} {final:>8}")
        if r.events_per_s is not None:
            print(f"{'events delivered to the endpoint':44} {r.events_per_s:>9.1f}")
        if r.notes:
            print(f"{'':44} {r.notes}")
    ingest = next((r for r in rows if r.name.startswith("ingest: SQLite")), None)
    for r in rows:
        if ingest is not None and r.name.startswith("e2e: SQLite") and ingest.p99_ms:
            print(f"{r.name}: p99 {r.p99_ms / ingest.p99_ms:.2f}x the --no-worker ingest's")


def settle_disk() -> None:
    """Write out what earlier rows left in the page cache (SQLite ingest leaves 100 MB or
    more), so that its writeback does not land in the next row's fsyncs."""
    os.sync()
    time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=RUNS,
        help="run only these rows (repeatable); the limit always runs, for the ratios",
    )
    only = set(parser.parse_args().only or RUNS)
    if shutil.which("wrk") is None:
        print("wrk is not installed: make bench installs it (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pigeon-bench-"))
    # Each ingest row is a share of the limit row above it, measured with it (`paired`).
    rows: list[Row] = []
    if "sqlite" in only:
        sqlite_url = f"sqlite:///{work / 'ingest.db'}"
        settle_disk()
        rows += paired("ingest: SQLite, 1 process", "limit: bare ASGI, 1 process", sqlite_url)
        for path in work.glob("ingest.db*"):
            path.unlink()
    if not only & {"sqlite", "postgresql", "e2e", "events"}:
        rows.append(bench_limit())
    cluster = PostgresCluster(durable=True) if only & {"postgresql", "dispatch", "e2e"} else None
    if cluster is not None:
        cluster.start()
    try:
        if cluster is not None and "postgresql" in only:
            settle_disk()
            rows += paired(
                "ingest: PostgreSQL, --workers 2",
                "limit: again, with PostgreSQL"
                if "sqlite" in only
                else "limit: bare ASGI, 1 process",
                cluster.new_database(),
                "--workers",
                "2",
            )
        if cluster is not None and "dispatch" in only:
            settle_disk()
            rows.append(bench_dispatch(cluster.new_database()))
        if "e2e" in only:
            rows += bench_e2e(cluster, work)
        if "events" in only:
            rows += bench_events(work)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    limit = 0.0
    for r in rows:
        if r.name.startswith("limit"):
            limit = r.requests_per_s
        elif r.name.startswith(("ingest", "e2e", "events")) and limit:
            r.share_of_limit = round(r.requests_per_s / limit, 4)
            if r.final_per_s is not None:
                r.final_share_of_limit = round(r.final_per_s / limit, 4)
    print()
    print_table(rows)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = results / f"{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "seconds": SECONDS,
                "slices": SLICES,
                "connections": CONNECTIONS,
                "only": sorted(only),
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0 if all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
