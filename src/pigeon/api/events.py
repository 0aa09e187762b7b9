"""/v1/events: the tenant's events, to catch up on what deliveries missed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Router, get
from litestar.params import Parameter, QueryParameter

from pigeon.api.deps import AccountId, require_api_key, services
from pigeon.events import query
from pigeon.events.schemas import Event, EventList
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]


@get("/", summary="List events, newest first")
async def list_events(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
    event_type: Annotated[
        str | None, QueryParameter(name="type", description="one event type, e.g. sms.message.sent")
    ] = None,
    after: Annotated[
        datetime | None, Parameter(description="only events created after this")
    ] = None,
) -> EventList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await query.list_events(
            conn=conn,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            cursors=svc.cursors,
            event_type=event_type,
            after=after,
        )


@get("/{event_id:str}", summary="Get an event")
async def get_event(request: Request[Any, Any, Any], account_id: AccountId, event_id: str) -> Event:
    async with services(request).reader.connect() as conn:
        return await query.get_event(conn=conn, account_id=account_id, event_id=event_id)


router = Router(
    "/v1/events",
    route_handlers=[list_events, get_event],
    guards=[require_api_key],
    tags=["Events"],
)
