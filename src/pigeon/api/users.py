"""/v1/users: the tenant's platform Users."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.api.deps import AccountId, guarded_write, services
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT
from pigeon.users import service
from pigeon.users.schemas import User, UserCreate, UserList, UserUpdate

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]


@post("/", status_code=201, responses={201: ResponseSpec(User)}, summary="Create a User")
async def create_user(
    request: Request[Any, Any, Any], account_id: AccountId, data: UserCreate
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> User:
        return await service.create_user(conn=conn, account_id=account_id, body=data)

    return await guarded_write(request, account_id, action, status_code=201)


@get("/", summary="List Users")
async def list_users(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> UserList:
    async with services(request).reader.connect() as conn:
        return await service.list_users(
            conn=conn, account_id=account_id, limit=limit, cursor=cursor
        )


@get("/{user_id:str}", summary="Get a User")
async def get_user(request: Request[Any, Any, Any], account_id: AccountId, user_id: str) -> User:
    async with services(request).reader.connect() as conn:
        return await service.get_user(conn=conn, account_id=account_id, user_id=user_id)


@patch("/{user_id:str}", responses={200: ResponseSpec(User)}, summary="Update a User")
async def update_user(
    request: Request[Any, Any, Any], account_id: AccountId, user_id: str, data: UserUpdate
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> User:
        return await service.update_user(
            conn=conn, account_id=account_id, user_id=user_id, body=data
        )

    return await guarded_write(request, account_id, action)


@delete("/{user_id:str}", summary="Delete a User")
async def delete_user(request: Request[Any, Any, Any], account_id: AccountId, user_id: str) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_user(conn=conn, account_id=account_id, user_id=user_id)


router = Router(
    "/v1/users",
    route_handlers=[create_user, list_users, get_user, update_user, delete_user],
    tags=["Users"],
)
