"""/v1/users: the tenant's platform Users."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.params import Body, Parameter
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.api import openapi as doc
from pigeon.api.body import check_data
from pigeon.api.deps import AccountId, guarded_write, require_api_key, services
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT
from pigeon.users import service
from pigeon.users.schemas import User, UserCreate, UserList, UserUpdate

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]
UserId = Annotated[str, doc.path_id("the User's id")]
USER_RULES = (
    *doc.DATA,
    doc.USERNAME_TAKEN,
    doc.INVALID_PHONE,
    doc.INVALID_EMAIL,
    doc.IDENTITY_FIELD_NOT_FOUND,
)


@post(
    "/",
    status_code=201,
    summary="Create a User",
    responses={
        201: doc.ok(User, doc.USER, "The User, created"),
        **doc.problems(*doc.WRITE, *USER_RULES),
    },
)
async def create_user(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    data: Annotated[UserCreate, Body(examples=doc.example(doc.USER_CREATE))],
) -> Response[bytes]:
    check_data(request, data.data)

    async def action(conn: AsyncConnection) -> User:
        return await service.create_user(conn=conn, account_id=account_id, body=data)

    return await guarded_write(request, account_id, action, status_code=201)


@get(
    "/",
    summary="List Users",
    responses={
        200: doc.ok(UserList, {"items": [doc.USER], "next_cursor": None}, "A page of Users"),
        **doc.problems(*doc.LIST),
    },
)
async def list_users(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> UserList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await service.list_users(
            conn=conn, account_id=account_id, limit=limit, cursor=cursor, cursors=svc.cursors
        )


@get(
    "/{user_id:str}",
    summary="Get a User",
    responses={
        200: doc.ok(User, doc.USER, "The User"),
        **doc.problems(*doc.READ, doc.USER_NOT_FOUND),
    },
)
async def get_user(request: Request[Any, Any, Any], account_id: AccountId, user_id: UserId) -> User:
    async with services(request).reader.connect() as conn:
        return await service.get_user(conn=conn, account_id=account_id, user_id=user_id)


@patch(
    "/{user_id:str}",
    summary="Update a User",
    description="`channel` is merged field by field (a null clears one), `data` is replaced.",
    responses={
        200: doc.ok(User, doc.USER, "The User, updated"),
        **doc.problems(*doc.WRITE, doc.USER_NOT_FOUND, *USER_RULES),
    },
)
async def update_user(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    user_id: UserId,
    data: Annotated[UserUpdate, Body(examples=doc.example(doc.USER_UPDATE))],
) -> Response[bytes]:
    check_data(request, data.data)

    async def action(conn: AsyncConnection) -> User:
        return await service.update_user(
            conn=conn, account_id=account_id, user_id=user_id, body=data
        )

    return await guarded_write(request, account_id, action)


@delete(
    "/{user_id:str}",
    summary="Delete a User",
    responses=doc.problems(*doc.READ, doc.USER_NOT_FOUND),
)
async def delete_user(
    request: Request[Any, Any, Any], account_id: AccountId, user_id: UserId
) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_user(conn=conn, account_id=account_id, user_id=user_id)


router = Router(
    "/v1/users",
    guards=[require_api_key],
    route_handlers=[create_user, list_users, get_user, update_user, delete_user],
    tags=["Users"],
)
