"""Prometheus metrics: what Pigeon counts, where, and the text /metrics answers.

Counters and histograms are prometheus_client's, counted at the point that knows the fact:
HTTP requests by route template (this module's `HttpMetrics` around Litestar, and the send fast
path itself), accepted sends when their batch is durable, provider requests in the worker,
final statuses and reports when the transaction that applied them commits (`on_commit`: a
rolled-back transaction counts nothing).

Under `pigeon serve --workers N` each process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set up by `pigeon.multiproc`
before this module is imported) and a scrape of any process adds every process's files up. The
queue gauges are kept by no process: the process answering the scrape reads them from the
database then, once, so they are never summed over processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.db.tables import messages
from pigeon.db.writer import AFTER_TURN
from pigeon.multiproc import ENV

log = structlog.get_logger("pigeon.metrics")
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series

CONTENT_TYPE = CONTENT_TYPE_LATEST
CHANNELS = ("sms", "whatsapp", "email")
QUEUED_STATUS = 26  # PENDING_ACCEPTED: stored, not yet taken by a provider
UNMATCHED = "unmatched"  # the route of a request no route answered (never its raw path)

HTTP_REQUESTS = Counter(
    "pigeon_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "pigeon_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MESSAGES_ACCEPTED = Counter(
    "pigeon_messages_accepted_total",
    "Messages accepted and stored, by channel and recipient type (user, person, app).",
    ["channel", "recipient"],
)
MESSAGES_FINAL = Counter(
    "pigeon_messages_final_total",
    "Messages that reached a final status, by channel and status group.",
    ["channel", "group"],
)
PROVIDER_REQUESTS = Counter(
    "pigeon_provider_requests_total",
    "Send requests to providers, by provider, channel and outcome (ok, transient, permanent).",
    ["provider", "channel", "outcome"],
)
PROVIDER_DURATION = Histogram(
    "pigeon_provider_request_duration_seconds",
    "Time a provider took to answer a send request.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REPORTS_RECEIVED = Counter(
    "pigeon_reports_received_total",
    "Delivery reports received, by provider and outcome (applied, unknown, stale).",
    ["provider", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "pigeon_delivery_seconds",
    "Time from a message's acceptance to its final status, by channel.",
    ["channel"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800, 21600, 86400, 172800),
)

_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def count_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered HTTP request (its label children are looked up once per combination)."""
    children = _http_children.get((method, route, status))
    if children is None:
        children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(route))
        _http_children[method, route, status] = children
    children[0].inc()
    children[1].observe(seconds)


def count_accepted(items: Iterable[Any], outcomes: Iterable[Any]) -> None:
    """A committed accept batch: its new messages (not replays, not refusals) by channel and
    recipient type."""
    tally = Tally(
        (item.channel, item.recipient_type)
        for item, outcome in zip(items, outcomes, strict=True)
        if getattr(outcome, "replayed", True) is False
    )
    for (channel, recipient), count in tally.items():
        MESSAGES_ACCEPTED.labels(channel, recipient).inc(count)


@contextlib.contextmanager
def provider_request(provider: str, channel: str) -> Iterator[None]:
    """Time and count one send request to a provider; its outcome from how it ended."""
    from pigeon.providers.base import PermanentError, ProviderError

    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except PermanentError:
        outcome = "permanent"
        raise
    except ProviderError:
        outcome = "transient"
        raise
    except Exception:
        outcome = "transient"  # a bug or a broken connection: the message is tried again
        raise
    finally:
        PROVIDER_DURATION.labels(provider).observe(time.perf_counter() - started)
        PROVIDER_REQUESTS.labels(provider, channel, outcome).inc()


@dataclass(frozen=True, slots=True)
class Final:
    """A message that reached a final status in a transaction."""

    channel: str
    group: str
    created_at: datetime
    done_at: datetime


def count_finals(finals: Iterable[Final]) -> None:
    """Count a transaction's final statuses: each (channel, group) once, however many.

    In multiprocess mode every `inc` and `observe` is a locked write to a file's mapping, and
    each `labels` a locked lookup: 13.5 us per message, counted one by one; 7 so.
    """
    finals = list(finals)
    for (channel, group), count in Tally((f.channel, f.group) for f in finals).items():
        MESSAGES_FINAL.labels(channel, group).inc(count)
    durations: dict[str, Any] = {}
    for final in finals:
        histogram = durations.get(final.channel)
        if histogram is None:
            histogram = durations[final.channel] = DELIVERY_SECONDS.labels(final.channel)
        histogram.observe(max((final.done_at - final.created_at).total_seconds(), 0.0))


def count_reports(provider: str, applied: int, unknown: int, stale: int) -> None:
    for outcome, count in (("applied", applied), ("unknown", unknown), ("stale", stale)):
        if count:
            REPORTS_RECEIVED.labels(provider, outcome).inc(count)


_PENDING = "pigeon.metrics.pending"


def on_commit(conn: AsyncConnection | Connection, count: Callable[[], None]) -> None:
    """Run `count` when the connection's transaction commits; drop it if it rolls back."""
    conn.info.setdefault(_PENDING, []).append(count)


@event.listens_for(Engine, "commit")
def _committed(connection: Connection) -> None:
    counts = connection.info.pop(_PENDING, ())
    if not counts:
        return
    later = connection.info.get(AFTER_TURN)
    if later is not None:  # SQLite's writer: once it has committed and ended its turn
        later.append(lambda: _count(counts))
    else:
        _count(counts)


def _count(counts: Iterable[Callable[[], None]]) -> None:
    for count in counts:
        try:
            count()
        except Exception:  # a metric must never fail a commit
            log.exception("counting a committed change failed")


@event.listens_for(Engine, "rollback")
def _rolled_back(connection: Connection) -> None:
    if connection.invalidated:
        return  # the connection is gone, and its info with it (reading it would raise)
    connection.info.pop(_PENDING, None)


@dataclass(frozen=True, slots=True)
class QueueState:
    depth: int
    oldest_seconds: float


async def read_queue(engine: AsyncEngine) -> dict[str, QueueState]:
    """Messages waiting for a provider, by channel: one query on the (status_id, ...) index."""
    query = (
        select(messages.c.channel, func.count(), func.min(messages.c.created_at))
        .where(messages.c.status_id == QUEUED_STATUS)
        .group_by(messages.c.channel)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    now = utcnow()
    state = {channel: QueueState(0, 0.0) for channel in CHANNELS}
    for channel, depth, oldest_at in rows:  # min() keeps the column's UTC type
        age = (now - oldest_at).total_seconds() if oldest_at is not None else 0.0
        state[channel] = QueueState(int(depth), max(age, 0.0))
    return state


class _QueueCollector(Collector):
    def __init__(self, queue: Mapping[str, QueueState]) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "pigeon_queue_depth",
            "Messages accepted and not yet taken by a provider, by channel (read at scrape).",
            labels=["channel"],
        )
        oldest = GaugeMetricFamily(
            "pigeon_queue_oldest_seconds",
            "Age of the oldest message waiting for a provider, by channel (0 when none).",
            labels=["channel"],
        )
        for channel, state in sorted(self.queue.items()):
            depth.add_metric([channel], state.depth)
            oldest.add_metric([channel], state.oldest_seconds)
        yield depth
        yield oldest


def multiprocess_mode() -> bool:
    return bool(os.environ.get(ENV))


def exposition(queue: Mapping[str, QueueState] | None) -> bytes:
    """The Prometheus text: every process's counters (in multiprocess mode) and the queue."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if queue is not None:
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(_QueueCollector(queue))
        text += generate_latest(gauges)
    return text


async def scrape(engine: AsyncEngine) -> bytes:
    """What /metrics answers; without the queue gauges if the database does not answer."""
    try:
        queue: dict[str, QueueState] | None = await asyncio.wait_for(read_queue(engine), 5)
    except Exception as exc:
        log.warning("queue gauges unavailable", error=str(exc) or type(exc).__name__)
        queue = None
    return exposition(queue)


def process_exiting() -> None:
    """A process of a multiprocess group is stopping: drop its live gauges' files."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]


class HttpMetrics:
    """ASGI middleware around Litestar: each HTTP request counted by the route template that
    answered it (Litestar puts it in the scope while routing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("path_template") or UNMATCHED
            count_request(scope["method"], route, status, time.perf_counter() - started)


async def serve(engine: AsyncEngine, *, host: str, port: int) -> asyncio.Server:
    """A small HTTP server answering GET /metrics (for `pigeon worker --metrics-port`)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD") or path != b"/metrics":
                status, body, kind = b"404 Not Found", b"only GET /metrics here\n", b"text/plain"
            else:
                status, body, kind = b"200 OK", await scrape(engine), CONTENT_TYPE.encode()
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body)
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
