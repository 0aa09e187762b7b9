"""/v1/identities: the tenant's CRM Identities (persons, companies)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.api.deps import AccountId, guarded_write, services
from pigeon.identities import service
from pigeon.identities.schemas import Identity, IdentityCreate, IdentityList, IdentityUpdate
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]


@post("/", status_code=201, responses={201: ResponseSpec(Identity)}, summary="Create an Identity")
async def create_identity(
    request: Request[Any, Any, Any], account_id: AccountId, data: IdentityCreate
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> Identity:
        return await service.create_identity(conn=conn, account_id=account_id, body=data)

    return await guarded_write(request, account_id, action, status_code=201)


@get("/", summary="List Identities")
async def list_identities(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> IdentityList:
    async with services(request).reader.connect() as conn:
        return await service.list_identities(
            conn=conn, account_id=account_id, limit=limit, cursor=cursor
        )


@get("/{identity_id:str}", summary="Get an Identity")
async def get_identity(
    request: Request[Any, Any, Any], account_id: AccountId, identity_id: str
) -> Identity:
    async with services(request).reader.connect() as conn:
        return await service.get_identity(conn=conn, account_id=account_id, identity_id=identity_id)


@patch("/{identity_id:str}", responses={200: ResponseSpec(Identity)}, summary="Update an Identity")
async def update_identity(
    request: Request[Any, Any, Any], account_id: AccountId, identity_id: str, data: IdentityUpdate
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> Identity:
        return await service.update_identity(
            conn=conn, account_id=account_id, identity_id=identity_id, body=data
        )

    return await guarded_write(request, account_id, action)


@delete("/{identity_id:str}", summary="Delete an Identity")
async def delete_identity(
    request: Request[Any, Any, Any], account_id: AccountId, identity_id: str
) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_identity(conn=conn, account_id=account_id, identity_id=identity_id)


router = Router(
    "/v1/identities",
    route_handlers=[
        create_identity,
        list_identities,
        get_identity,
        update_identity,
        delete_identity,
    ],
    tags=["Identities"],
)
