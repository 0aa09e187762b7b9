"""/v1/extensions/infobip: the tenant's own Infobip account (the Infobip CDP extension)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Router, delete, get, put
from litestar.params import Body

from pigeon.api import openapi as doc
from pigeon.api.deps import AccountId, require_api_key, services
from pigeon.extensions import service
from pigeon.extensions.schemas import InfobipExtension, InfobipExtensionIn


@put(
    "/",
    summary="Enable or reconfigure the Infobip extension",
    responses={
        200: doc.ok(InfobipExtension, doc.EXTENSION, "The extension (API key masked)"),
        **doc.problems(*doc.AUTH, *doc.BODY, doc.DATABASE_UNAVAILABLE),
    },
)
async def put_extension(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    data: Annotated[InfobipExtensionIn, Body(examples=doc.example(doc.EXTENSION_PUT))],
) -> InfobipExtension:
    svc = services(request)
    async with svc.engine.begin() as conn:
        return await service.put_extension(
            conn=conn, account_id=account_id, body=data, settings=svc.settings
        )


@get(
    "/",
    summary="Show the Infobip extension (API key masked) and its webhook URLs",
    responses={
        200: doc.ok(InfobipExtension, doc.EXTENSION, "The extension (API key masked)"),
        **doc.problems(*doc.READ, doc.EXTENSION_NOT_FOUND),
    },
)
async def get_extension(request: Request[Any, Any, Any], account_id: AccountId) -> InfobipExtension:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await service.get_extension(conn=conn, account_id=account_id, settings=svc.settings)


@delete(
    "/",
    summary="Disable the Infobip extension",
    responses=doc.problems(*doc.READ, doc.EXTENSION_NOT_FOUND),
)
async def delete_extension(request: Request[Any, Any, Any], account_id: AccountId) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_extension(conn=conn, account_id=account_id)


router = Router(
    "/v1/extensions/infobip",
    guards=[require_api_key],
    route_handlers=[put_extension, get_extension, delete_extension],
    tags=["Infobip extension"],
)
