"""The Litestar application: routers, error handlers, and a lifespan owning engine and worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon import __version__, metrics
from pigeon.accounts.service import KeyAuthenticator
from pigeon.api import (
    events,
    extensions,
    health,
    identities,
    messages,
    stream,
    users,
    webhook_endpoints,
    webhooks,
)
from pigeon.api.body import MAX_BODY_BYTES
from pigeon.api.deps import PigeonRequest, Services, provide_account_id
from pigeon.api.docs import swagger_ui, swagger_ui_asset
from pigeon.api.openapi import document_routes
from pigeon.api.problems import EXCEPTION_HANDLERS
from pigeon.api.sendpath import SendFastPath
from pigeon.config import Settings
from pigeon.console import routes as console
from pigeon.db.engine import create_engine, is_sqlite, reader_for
from pigeon.db.writer import SqliteWriter, Writer, writer_for
from pigeon.dispatch.deliveries import DeliveryWorker
from pigeon.dispatch.process import WorkerProcess
from pigeon.dispatch.worker import Worker
from pigeon.events.stream import StreamHub
from pigeon.idempotency.store import IdempotencyStore
from pigeon.messages.accept import AcceptPipeline, AcceptWriter
from pigeon.messages.pg_accept import PostgresAcceptWriter
from pigeon.messages.sqlite_accept import SqliteAcceptWriter
from pigeon.pagination import load_cursors
from pigeon.serversecret import prepare_secrets, with_server_secret

log = structlog.get_logger("pigeon.app")


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    schema = request.app.openapi_schema.to_schema()
    return Response(schema, media_type="application/vnd.oai.openapi+json")


def accept_writer(engine: AsyncEngine, settings: Settings, writer: Writer) -> AcceptWriter:
    """The accept path's writer for the engine (on SQLite, through the process's writer)."""
    if isinstance(writer, SqliteWriter):
        return SqliteAcceptWriter(settings, writer)
    return PostgresAcceptWriter(engine, settings)


def create_app(settings: Settings | None = None, *, run_worker: bool | None = None) -> SendFastPath:
    """Build the app, behind the send routes' fast path; the worker runs in-process unless
    disabled."""
    settings = with_server_secret(settings or Settings())
    with_worker = settings.worker_enabled if run_worker is None else run_worker

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        timeout = settings.database_timeout_seconds
        engine = create_engine(settings.database_url, timeout=timeout)
        # The process's writes: on SQLite one thread and connection, shared by the accept path
        # and the worker (`db.writer`); it waits for another process's lock as long as a
        # request may wait for the database.
        writer = writer_for(engine, settings.database_url, busy_timeout_ms=int(timeout * 1000))
        reader = reader_for(engine, settings.database_url, timeout=timeout)
        svc = Services(
            settings=settings,
            engine=engine,
            reader=reader,
            auth=KeyAuthenticator(reader),
            idempotency=IdempotencyStore(
                engine, reader=reader, ttl_seconds=settings.idempotency_ttl_seconds
            ),
            accept=AcceptPipeline(
                accept_writer(engine, settings, writer), on_commit=lambda: svc.wake_worker()
            ),
            stream=StreamHub(reader),
            writer=writer,
            cursors=await load_cursors(engine),
            report_turn=asyncio.Lock() if is_sqlite(engine) else None,
        )
        await prepare_secrets(engine, settings)
        svc.accept.start()
        app.state.services = svc
        if settings.demo:
            from pigeon.demo import seed_demo

            await seed_demo(engine, settings)
        stop = asyncio.Event()
        worker_task = None
        # The worker (dispatch and webhook deliveries) in child processes by default, where it
        # does not take turns with the accepts for this process's one thread.
        in_process = with_worker and not settings.worker_process
        deliveries = (
            DeliveryWorker(engine, settings, reader=reader, writer=writer) if in_process else None
        )
        if with_worker and not in_process:
            # The webhook deliveries in a child of their own unless PIGEON_DELIVERY_PROCESS=0.
            apart = settings.delivery_process
            svc.worker_process = WorkerProcess(settings, "dispatch" if apart else "all")
            await svc.worker_process.start()
            if apart:
                svc.delivery_process = WorkerProcess(settings, "deliveries")
                await svc.delivery_process.start()
        elif in_process:
            svc.worker = Worker(engine, settings, writer=writer, reader=reader)
            worker_task = asyncio.create_task(svc.worker.run(stop))
        deliveries_task = asyncio.create_task(deliveries.run(stop)) if deliveries else None
        stream_task = asyncio.create_task(svc.stream.run(stop))
        # What startup built (routes, schemas, table metadata) lives as long as the process:
        # out of the collector's sight, a full collection under load takes far less time.
        gc.collect()
        gc.freeze()
        log.info(
            "pigeon started",
            database=engine.dialect.name,
            provider=settings.provider,
            worker=with_worker,
            demo=settings.demo,
        )
        try:
            yield
        finally:
            await svc.accept.stop()
            await svc.auth.aclose()
            stop.set()
            if worker_task is not None and svc.worker is not None:
                await worker_task
                await svc.worker.aclose()
            # Together: each finishes what it holds (a round, attempts under way) meanwhile.
            children = (svc.worker_process, svc.delivery_process)
            await asyncio.gather(*(child.stop() for child in children if child is not None))
            await stream_task
            if deliveries_task is not None and deliveries is not None:
                await deliveries_task
                await deliveries.aclose()
            await writer.close()
            await engine.dispose()
            if reader is not engine:
                await reader.dispose()
            metrics.process_exiting()

    app = Litestar(
        route_handlers=[
            users.router,
            identities.router,
            messages.router,
            extensions.router,
            webhooks.router,
            webhooks.twilio_router,
            events.router,
            webhook_endpoints.router,
            stream.stream,
            health.health,
            health.health_head,
            health.ready,
            health.prometheus,
            console.router,
            console.static,
            openapi_json,
            swagger_ui_asset,
        ],
        template_config=console.TEMPLATES,
        dependencies={"account_id": Provide(provide_account_id)},
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=PigeonRequest,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Pigeon",
            version=__version__,
            description="Orangepill-compatible messaging channels: SMS, WhatsApp and Email to "
            "Users and Persons.",
            path="/docs",
            render_plugins=[swagger_ui],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="apiKey", name="x-api-key", security_scheme_in="header"
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
        request_max_body_size=MAX_BODY_BYTES,
        debug=False,
        logging_config=None,
    )
    document_routes(app)
    return SendFastPath(metrics.HttpMetrics(app), lambda: app.state.services)


def app_from_environment() -> SendFastPath:
    """The app as each `pigeon serve --workers N` process builds it: settings from PIGEON_*."""
    from pigeon.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings)
