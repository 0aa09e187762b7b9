"""Sending (/v1/users/{id}/message/*, /v1/identities/{id}/person/message/*, /v1/apps/message/*)
and reading back (/v1/messages)."""

# The send handlers are built by factories; each sets its real body type on `data` so that
# Litestar validates and documents it (no `from __future__ import annotations` here).

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import Example
from litestar.params import Body, Parameter, QueryParameter

from pigeon.api import openapi as doc
from pigeon.api.deps import AccountId, account_of, require_api_key, services
from pigeon.errors import NotFound, field_error
from pigeon.idempotency.store import check_key, fingerprint, scope_id
from pigeon.ids import is_object_id
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
from pigeon.nul import NO_NUL_PATTERN
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT
from pigeon.validation import normalize_email, normalize_phone

TEXT_CHANNELS: tuple[Channel, ...] = ("sms", "whatsapp")


def send_request(
    kind: str, channel: Channel, account_id: str, path_id: str | None, data: Any
) -> SendRequest:
    """A decoded send body as a SendRequest: content checked, an app's `to` normalised."""
    content = checked_content(channel, data.content)
    if kind != "app":
        recipient_id = path_id or ""
        if not is_object_id(recipient_id):
            # Not an id Pigeon makes: no need to read (and no odd text, such as a NUL, in the
            # batch's query, which PostgreSQL would refuse for the whole batch).
            what = "user" if kind == "user" else "identity"
            raise NotFound(f"{what} {recipient_id} not found", code=f"{what}_not_found")
        return SendRequest(account_id, kind, recipient_id, channel, content)
    to = (
        normalize_email(data.to, field="to")
        if channel == "email"
        else normalize_phone(data.to, field="to")
    )
    return SendRequest(account_id, "app", to, channel, content)


def scope_send(item: SendRequest, method: str, path: str, key: str | None, body: bytes) -> None:
    """Scope a send to its `idempotency-key` (if any): the pipeline replays a repeated one."""
    if key is not None:
        item.scope = (item.account_id, method, path, check_key(key))
        item.scope_id = scope_id(item.scope)
        item.fingerprint = fingerprint(body)


async def _submit(request: Request[Any, Any, Any], item: SendRequest) -> Response[bytes]:
    """Hand a validated send to the group-commit pipeline; answer once it is durable."""
    key = request.headers.get("idempotency-key")
    scope_send(item, request.method, request.url.path, key, await request.body())
    result = await services(request).accept.submit(item)
    return Response(
        content=result.body,
        status_code=result.status_code,
        media_type="application/json",
        headers={"idempotent-replayed": "true"} if result.replayed else None,
    )


def _route(
    kind: str, channel: Channel, body: type[Any], path: str, send: Any, **options: Any
) -> HTTPRouteHandler:
    examples = doc.send_examples(kind, channel)
    send.__annotations__["data"] = Annotated[body, Body(examples=examples)]
    return post(
        path,
        status_code=200,
        responses={
            200: doc.ok(SendResponse, doc.SEND_ANSWER, "Message processing status"),
            **doc.problems(*doc.send_problems(kind, channel)),
        },
        tags=["Messaging"],
        guards=[require_api_key],
        **options,
    )(send)


UserId = Annotated[str, doc.path_id("the User's id")]
IdentityId = Annotated[str, doc.path_id("the Identity's id (a person)")]


def user_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/users/{id}/message/{channel}."""

    async def send(request: Request[Any, Any, Any], user_id: UserId, data: Any) -> Response[bytes]:
        return await _submit(
            request, send_request("user", channel, account_of(request), user_id, data)
        )

    return _route(
        "user",
        channel,
        body,
        f"/v1/users/{{user_id:str}}/message/{channel}",
        send,
        operation_id=f"sendUser{channel.title()}",
        summary=f"Send {channel} to a User",
        description=f"Sent to the User's channel.{channel}, from the platform's account.",
    )


def person_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/identities/{id}/person/message/{channel}."""

    async def send(
        request: Request[Any, Any, Any], identity_id: IdentityId, data: Any
    ) -> Response[bytes]:
        item = send_request("person", channel, account_of(request), identity_id, data)
        return await _submit(request, item)

    field = "email[0].address" if channel == "email" else "phone[0].number"
    return _route(
        "person",
        channel,
        body,
        f"/v1/identities/{{identity_id:str}}/person/message/{channel}",
        send,
        operation_id=f"sendPerson{channel.title()}",
        summary=f"Send {channel} to a Person",
        description=f"Sent to person.contactInformation.{field}, from the tenant's Infobip "
        "account (the Infobip extension must be enabled).",
    )


def app_send_handler(channel: Channel, body: type[Any]) -> HTTPRouteHandler:
    """POST /v1/apps/message/{channel}: a recipient who is not on-boarded."""

    async def send(request: Request[Any, Any, Any], data: Any) -> Response[bytes]:
        return await _submit(request, send_request("app", channel, account_of(request), None, data))

    return _route(
        "app",
        channel,
        body,
        f"/v1/apps/message/{channel}",
        send,
        operation_id=f"sendApp{channel.title()}",
        summary=f"Send {channel} to any destination",
        description="Sent from the platform's account to `to`.",
    )


Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
# Taken as text and parsed here, so that a bad value is reported under its own name (`from`),
# not the handler's argument's.
DATE_TIME = {"format": "date-time"}
From = Annotated[
    str | None,
    QueryParameter(
        name="from", description="created at or after (RFC 3339)", schema_extra=DATE_TIME
    ),
]
To = Annotated[
    str | None,
    QueryParameter(name="to", description="created before (RFC 3339)", schema_extra=DATE_TIME),
]


FILTER_PROBLEMS = (
    doc.Documented(
        422, "invalid_phone", "recipient: '12' is not a phone number", field="recipient"
    ),
    doc.Documented(
        422,
        "validation_error",
        "from: must be an RFC 3339 date-time such as 2026-12-01T08:00:00Z",
        field="from",
    ),
)


def _moment(value: str | None, field: str) -> datetime | None:
    """A query's RFC 3339 time, or a 422 naming `field`."""
    if value is None:
        return None
    # A `+` offset arrives as a space when the client did not encode it (form encoding).
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", value.strip())
    try:
        return msgspec.json.decode(msgspec.json.encode(text), type=datetime)
    except msgspec.ValidationError:
        raise field_error(
            field, "must be an RFC 3339 date-time such as 2026-12-01T08:00:00Z"
        ) from None


@get(
    "/v1/messages/{message_id:str}",
    summary="Get a message with its status history",
    tags=["Messages"],
    responses={
        200: doc.ok(Message, doc.MESSAGE, "The message, its status and its history"),
        **doc.problems(*doc.READ, doc.MESSAGE_NOT_FOUND),
    },
    guards=[require_api_key],
)
async def get_message(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    message_id: Annotated[str, Parameter(description="the messageId a send answered with")],
) -> Message:
    async with services(request).reader.connect() as conn:
        return await query.get_message(conn=conn, account_id=account_id, message_id=message_id)


@get(
    "/v1/messages",
    summary="List messages, newest first",
    tags=["Messages"],
    responses={
        200: doc.ok(MessageList, doc.MESSAGE_LIST, "A page of messages"),
        **doc.problems(*doc.LIST, *FILTER_PROBLEMS),
    },
    guards=[require_api_key],
)
async def list_messages(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
    channel: Annotated[Channel | None, Parameter(description="sms, whatsapp or email")] = None,
    status: Annotated[
        str | None, Parameter(description="a group (DELIVERED) or status name (PENDING_ENROUTE)")
    ] = None,
    recipient: Annotated[
        str | None,
        Parameter(
            description="a user or identity id, or a destination: an email or a phone number "
            "with or without `+` (`%2B`, or a literal `+`, which arrives as a space: both work)",
            pattern=NO_NUL_PATTERN,
            examples=[Example(value="+38598123456")],
        ),
    ] = None,
    since: From = None,
    until: To = None,
) -> MessageList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await query.list_messages(
            conn=conn,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            cursors=svc.cursors,
            channel=channel,
            status=status,
            recipient=recipient,
            since=_moment(since, "from"),
            until=_moment(until, "to"),
        )


SEND_BODIES: dict[tuple[str, Channel], type[Any]] = {
    ("user", "sms"): TextMessageIn,
    ("person", "sms"): TextMessageIn,
    ("app", "sms"): AppTextMessageIn,
    ("user", "whatsapp"): WhatsAppMessageIn,
    ("person", "whatsapp"): WhatsAppMessageIn,
    ("app", "whatsapp"): AppWhatsAppMessageIn,
    ("user", "email"): EmailMessageIn,
    ("person", "email"): EmailMessageIn,
    ("app", "email"): AppEmailMessageIn,
}
SEND_FACTORIES = {"user": user_send_handler, "person": person_send_handler, "app": app_send_handler}
send_handlers = [
    SEND_FACTORIES[kind](channel, body) for (kind, channel), body in SEND_BODIES.items()
]

router = Router("/", route_handlers=[*send_handlers, get_message, list_messages])
