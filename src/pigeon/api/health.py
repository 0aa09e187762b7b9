"""/health: liveness and database reachability, unauthenticated."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from sqlalchemy import text

from pigeon import __version__
from pigeon.api.deps import services


class Health(msgspec.Struct):
    status: str
    version: str
    database: str
    provider: str


@get("/health", summary="Health check", tags=["Health"])
async def health(request: Request[Any, Any, Any]) -> Health:
    svc = services(request)
    async with svc.reader.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Health("ok", __version__, svc.engine.dialect.name, svc.settings.provider)
