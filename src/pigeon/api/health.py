"""/health (liveness), /ready (the database answers, at the code's migration head) and
/metrics (Prometheus text): unauthenticated, for supervisors and scrapers."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get, head
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from pigeon import __version__, metrics
from pigeon.api import openapi as doc
from pigeon.api.deps import services
from pigeon.api.problems import problem
from pigeon.db.revisions import code_heads, database_heads

READY_TIMEOUT = 5.0  # a database that takes longer than this to answer is not ready


class Health(msgspec.Struct):
    status: str
    version: str
    database: str
    provider: str


class Ready(msgspec.Struct):
    status: str
    database: str
    revision: str


@get(
    "/health",
    summary="Health check",
    tags=["Health"],
    security=doc.NO_AUTH,
    responses={
        200: doc.ok(
            Health,
            {"status": "ok", "version": __version__, "database": "sqlite", "provider": "sandbox"},
            "Alive: the database answers",
        )
    },
)
async def health(request: Request[Any, Any, Any]) -> Health:
    svc = services(request)
    async with svc.reader.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Health("ok", __version__, svc.engine.dialect.name, svc.settings.provider)


@head(
    "/health",
    summary="Health check, status only",
    description="What GET /health answers, without the body: 200 when the database answers.",
    tags=["Health"],
    security=doc.NO_AUTH,
    responses={200: ResponseSpec(None, description="Alive (no body)")},
)
async def health_head(request: Request[Any, Any, Any]) -> None:
    """What GET answers, without the body (supervisors that probe with HEAD)."""
    await health.fn(request)


def _reason(exc: BaseException) -> str:
    """A database error in one line, without SQLAlchemy's statement and help link."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {READY_TIMEOUT:g} s"
    original = getattr(exc, "orig", None) or exc
    first = str(original).strip().splitlines()
    return f"{type(original).__name__}: {first[0]}" if first else type(original).__name__


@get(
    "/ready",
    summary="Readiness: the database answers and its schema is at the code's migration head",
    tags=["Health"],
    security=doc.NO_AUTH,
    responses={
        200: doc.ok(Ready, {"status": "ready", "database": "sqlite", "revision": "0004"}, "Ready"),
        **doc.problems(doc.DATABASE_UNAVAILABLE, doc.MIGRATIONS_NOT_AT_HEAD),
    },
)
async def ready(request: Request[Any, Any, Any]) -> Response[Any]:
    svc = services(request)
    try:
        async with asyncio.timeout(READY_TIMEOUT), svc.reader.connect() as conn:
            current = await conn.run_sync(database_heads)
    except Exception as exc:
        return problem(
            503,
            "database_unavailable",
            f"the database does not answer: {_reason(exc)}",
            instance="/ready",
            headers={"Retry-After": "5"},
        )
    heads = code_heads()
    if current != heads:
        at = ", ".join(current) or "no revision (empty database)"
        return problem(
            503,
            "migrations_not_at_head",
            f"the database schema is at {at}, this code needs {', '.join(heads)}: "
            "run `pigeon db upgrade`",
            instance="/ready",
            headers={"Retry-After": "5"},
        )
    return Response(Ready("ready", svc.engine.dialect.name, ", ".join(heads)))


@get("/metrics", summary="Prometheus metrics", tags=["Health"], include_in_schema=False)
async def prometheus(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await metrics.scrape(services(request).reader)
    return Response(body, media_type=metrics.CONTENT_TYPE)
