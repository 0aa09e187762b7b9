"""Sending (/v1/users/{id}/message/*, /v1/identities/{id}/person/message/*, /v1/apps/message/*)
and reading back (/v1/messages)."""

# The send handlers are built by factories; each sets its real body type on `data` so that
# Litestar validates and documents it (no `from __future__ import annotations` here).

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from pigeon.api.deps import account_of, require_api_key, services
from pigeon.idempotency.store import check_key, fingerprint, scope_id
from pigeon.messages import query
from pigeon.messages.accept import SendRequest
from pigeon.messages.rules import checked_content
from pigeon.messages.schemas import (
    AppEmailMessageIn,
    AppTextMessageIn,
    AppWhatsAppMessageIn,
    Channel,
    EmailMessageIn,
    Message,
    MessageList,
    SendResponse,
    TextMessageIn,
    WhatsAppMessageIn,
)
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT
from pigeon.validation import normalize_email, normalize_phone

SEND_RESPONSES = {200: ResponseSpec(SendResponse, description="Message processing status")}
TEXT_CHANNELS: tuple[Channel, ...] = ("sms", "whatsapp")


async def _submit(request: Request[Any, Any, Any], item: SendRequest) -> Response[bytes]:
    """Hand a validated send to the group-commit pipeline; answer once it is durable."""
    key = request.headers.get("idempotency-key")
    if key is not None:
        item.scope = (item.account_id, request.method, request.url.path, check_key(key))
        item.scope_id = scope_id(item.scope)
        item.fingerprint = fingerprint(await request.body())
    result = await services(request).accept.submit(item)
    return Response(
        content=result.body,
        status_code=result.status_code,
        media_type="application/json",
        headers={"idempotent-replayed": "true"} if result.replayed else None,
    )


def user_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/users/{id}/message/{channel}."""

    async def send(request: Request[Any, Any, Any], user_id: str, data: Any) -> Response[bytes]:
        content = checked_content(channel, data.content)
        item = SendRequest(account_of(request), "user", user_id, channel, content)
        return await _submit(request, item)

    send.__annotations__["data"] = body
    return post(
        f"/v1/users/{{user_id:str}}/message/{channel}",
        status_code=200,
        responses=SEND_RESPONSES,
        operation_id=f"sendUser{channel.title()}",
        summary=f"Send {channel} to a User",
        description=f"Sent to the User's channel.{channel}, from the platform's account.",
        tags=["Messaging"],
        guards=[require_api_key],
    )(send)


def person_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/identities/{id}/person/message/{channel}."""

    async def send(request: Request[Any, Any, Any], identity_id: str, data: Any) -> Response[bytes]:
        content = checked_content(channel, data.content)
        item = SendRequest(account_of(request), "person", identity_id, channel, content)
        return await _submit(request, item)

    send.__annotations__["data"] = body
    field = "email[0].address" if channel == "email" else "phone[0].number"
    return post(
        f"/v1/identities/{{identity_id:str}}/person/message/{channel}",
        status_code=200,
        responses=SEND_RESPONSES,
        operation_id=f"sendPerson{channel.title()}",
        summary=f"Send {channel} to a Person",
        description=f"Sent to person.contactInformation.{field}, from the tenant's Infobip "
        "account (the Infobip extension must be enabled).",
        tags=["Messaging"],
        guards=[require_api_key],
    )(send)


def app_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/apps/message/{channel}: a recipient who is not on-boarded."""

    async def send(request: Request[Any, Any, Any], data: Any) -> Response[bytes]:
        content = checked_content(channel, data.content)
        to = (
            normalize_email(data.to, field="to")
            if channel == "email"
            else normalize_phone(data.to, field="to")
        )
        item = SendRequest(account_of(request), "app", to, channel, content)
        return await _submit(request, item)

    send.__annotations__["data"] = body
    return post(
        f"/v1/apps/message/{channel}",
        status_code=200,
        responses=SEND_RESPONSES,
        operation_id=f"sendApp{channel.title()}",
        summary=f"Send {channel} to any destination",
        description="Sent from the platform's account to `to`.",
        tags=["Messaging"],
        guards=[require_api_key],
    )(send)


Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]


@get(
    "/v1/messages/{message_id:str}",
    summary="Get a message with its status history",
    tags=["Messages"],
)
async def get_message(request: Request[Any, Any, Any], account_id: str, message_id: str) -> Message:
    async with services(request).reader.connect() as conn:
        return await query.get_message(conn=conn, account_id=account_id, message_id=message_id)


@get("/v1/messages", summary="List messages, newest first", tags=["Messages"])
async def list_messages(
    request: Request[Any, Any, Any],
    account_id: str,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
    channel: str | None = None,
    status: Annotated[
        str | None, Parameter(description="a group (DELIVERED) or status name (PENDING_ENROUTE)")
    ] = None,
    recipient: Annotated[
        str | None, Parameter(description="a user or identity id, or a destination")
    ] = None,
    since: Annotated[datetime | None, Parameter(query="from")] = None,
    until: Annotated[datetime | None, Parameter(query="to")] = None,
) -> MessageList:
    async with services(request).reader.connect() as conn:
        return await query.list_messages(
            conn=conn,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            channel=channel,
            status=status,
            recipient=recipient,
            since=since,
            until=until,
        )


def _bodies(channel: Channel) -> tuple[type[Any], type[Any]]:
    if channel == "email":
        return EmailMessageIn, AppEmailMessageIn
    if channel == "whatsapp":
        return WhatsAppMessageIn, AppWhatsAppMessageIn
    return TextMessageIn, AppTextMessageIn


send_handlers = [
    factory(channel, _bodies(channel)[1 if factory is app_send_handler else 0])
    for channel in ("sms", "whatsapp", "email")
    for factory in (user_send_handler, person_send_handler, app_send_handler)
]

router = Router("/", route_handlers=[*send_handlers, get_message, list_messages])
