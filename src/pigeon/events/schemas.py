"""Wire shapes of events, webhook endpoints and their delivery attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

Url = Annotated[str, Meta(min_length=1, max_length=2000)]
Description = Annotated[str, Meta(max_length=500)]
EventTypes = Annotated[list[str], Meta(min_length=1, max_length=50)]


class Event(msgspec.Struct):
    """One event, exactly as webhook deliveries post it."""

    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]


class EventList(msgspec.Struct):
    items: list[Event]
    next_cursor: str | None


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    events: EventTypes | None = None  # None: every event type
    description: Description = ""


class EndpointUpdate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    events: EventTypes | UnsetType | None = UNSET
    description: Description | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class Endpoint(msgspec.Struct):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    # Why Pigeon disabled it (410 Gone, or failing for too long); None when enabled.
    disabled_reason: str | None = None


class EndpointWithSecret(Endpoint, kw_only=True):
    """The answer to creating an endpoint or rotating its secret: the only time it is shown."""

    secret: str


class EndpointList(msgspec.Struct):
    items: list[Endpoint]
    next_cursor: str | None


class DeliveryAttempt(msgspec.Struct):
    """One attempt to post one event to the endpoint."""

    id: str
    delivery_id: str
    event_id: str
    event_type: str
    attempt: int
    attempted_at: datetime
    http_status: int | None
    error: str | None  # the network error or timeout, when there was no HTTP answer
    duration_ms: float | None
    response: str | None  # the first 2,000 characters of the answer's body
    state: Literal["pending", "succeeded", "failed"]  # the delivery's, after this attempt
    next_attempt_at: datetime | None


class DeliveryAttemptList(msgspec.Struct):
    items: list[DeliveryAttempt]
    next_cursor: str | None


class RecoverRequest(msgspec.Struct, forbid_unknown_fields=True):
    since: datetime


class RecoverAnswer(msgspec.Struct):
    requeued: int
