"""/v1/webhook-endpoints: where a tenant's events are posted, signed (Standard Webhooks)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.api import openapi as doc
from pigeon.api.deps import (
    AccountId,
    guarded_run,
    guarded_write,
    replay_headers,
    require_api_key,
    services,
)
from pigeon.config import Settings
from pigeon.events import endpoints as service
from pigeon.events.schemas import (
    DeliveryAttemptList,
    Endpoint,
    EndpointCreate,
    EndpointList,
    EndpointUpdate,
    EndpointWithSecret,
    RecoverAnswer,
    RecoverRequest,
)
from pigeon.extensions.crypto import decrypt_secret, encrypt_secret
from pigeon.idempotency.store import StoredResponse
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]


def _sealed(endpoint: EndpointWithSecret, settings: Settings) -> EndpointWithSecret:
    """The answer as an idempotent replay keeps it: its secret encrypted, like the stored one."""
    endpoint.secret = encrypt_secret(endpoint.secret, settings)
    return endpoint


def _secret_answer(result: StoredResponse, settings: Settings) -> Response[bytes]:
    """An answer holding a secret, from its sealed record (a replay's or the first): the
    secret decrypted for this answer only, never cached."""
    endpoint = msgspec.json.decode(result.body, type=EndpointWithSecret)
    endpoint.secret = decrypt_secret(endpoint.secret, settings)
    return Response(
        content=msgspec.json.encode(endpoint),
        status_code=result.status_code,
        media_type="application/json",
        headers={"cache-control": "no-store", **(replay_headers(result) or {})},
    )


@post(
    "/",
    status_code=201,
    responses={201: ResponseSpec(EndpointWithSecret)},
    summary="Create a webhook endpoint (the answer shows its secret, once)",
)
async def create_endpoint(
    request: Request[Any, Any, Any], account_id: AccountId, data: EndpointCreate
) -> Response[bytes]:
    settings = services(request).settings

    async def action(conn: AsyncConnection) -> EndpointWithSecret:
        created = await service.create_endpoint(
            conn=conn, account_id=account_id, body=data, settings=settings
        )
        return _sealed(created, settings)

    result = await guarded_run(request, account_id, action, status_code=201)
    return _secret_answer(result, settings)


@get("/", summary="List webhook endpoints")
async def list_endpoints(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> EndpointList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await service.list_endpoints(
            conn=conn, account_id=account_id, limit=limit, cursor=cursor, cursors=svc.cursors
        )


@get("/{endpoint_id:str}", summary="Get a webhook endpoint")
async def get_endpoint(
    request: Request[Any, Any, Any], account_id: AccountId, endpoint_id: str
) -> Endpoint:
    async with services(request).reader.connect() as conn:
        return await service.get_endpoint(conn=conn, account_id=account_id, endpoint_id=endpoint_id)


@patch(
    "/{endpoint_id:str}",
    responses={200: ResponseSpec(Endpoint)},
    summary="Update a webhook endpoint",
)
async def update_endpoint(
    request: Request[Any, Any, Any], account_id: AccountId, endpoint_id: str, data: EndpointUpdate
) -> Response[bytes]:
    settings = services(request).settings

    async def action(conn: AsyncConnection) -> Endpoint:
        return await service.update_endpoint(
            conn=conn, account_id=account_id, endpoint_id=endpoint_id, body=data, settings=settings
        )

    return await guarded_write(request, account_id, action)


@delete("/{endpoint_id:str}", summary="Delete a webhook endpoint and its deliveries")
async def delete_endpoint(
    request: Request[Any, Any, Any], account_id: AccountId, endpoint_id: str
) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_endpoint(conn=conn, account_id=account_id, endpoint_id=endpoint_id)


@post(
    "/{endpoint_id:str}/secret",
    status_code=200,
    # No body, but the idempotency-key's answers: 422 for a bad one, 409 while in flight.
    responses={200: ResponseSpec(EndpointWithSecret), **doc.problems(*doc.IDEMPOTENCY)},
    summary="Rotate the secret (the previous one signs too for 24 hours)",
)
async def rotate_secret(
    request: Request[Any, Any, Any], account_id: AccountId, endpoint_id: str
) -> Response[bytes]:
    settings = services(request).settings

    async def action(conn: AsyncConnection) -> EndpointWithSecret:
        rotated = await service.rotate_secret(
            conn=conn, account_id=account_id, endpoint_id=endpoint_id, settings=settings
        )
        return _sealed(rotated, settings)

    result = await guarded_run(request, account_id, action)
    return _secret_answer(result, settings)


@get("/{endpoint_id:str}/deliveries", summary="Delivery attempts, newest first")
async def list_deliveries(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    endpoint_id: str,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> DeliveryAttemptList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await service.list_attempts(
            conn=conn,
            account_id=account_id,
            endpoint_id=endpoint_id,
            limit=limit,
            cursor=cursor,
            cursors=svc.cursors,
        )


@post(
    "/{endpoint_id:str}/recover",
    status_code=200,
    responses={200: ResponseSpec(RecoverAnswer)},
    summary="Queue again every failed delivery since a time",
)
async def recover(
    request: Request[Any, Any, Any], account_id: AccountId, endpoint_id: str, data: RecoverRequest
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> RecoverAnswer:
        requeued = await service.recover(
            conn=conn, account_id=account_id, endpoint_id=endpoint_id, since=data.since
        )
        return RecoverAnswer(requeued=requeued)

    return await guarded_write(request, account_id, action)


router = Router(
    "/v1/webhook-endpoints",
    route_handlers=[
        create_endpoint,
        list_endpoints,
        get_endpoint,
        update_endpoint,
        delete_endpoint,
        rotate_secret,
        list_deliveries,
        recover,
    ],
    guards=[require_api_key],
    tags=["Webhook endpoints"],
)
