"""Wire shapes of Users."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

Username = Annotated[str, Meta(min_length=1, max_length=200)]


class Channel(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Where a User can be reached: each channel is optional."""

    sms: str | None = None
    whatsapp: str | None = None
    email: str | None = None


class ChannelPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Channels to change: a field left out is kept, a null clears it."""

    sms: str | UnsetType | None = UNSET
    whatsapp: str | UnsetType | None = UNSET
    email: str | UnsetType | None = UNSET


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    channel: Channel = msgspec.field(default_factory=Channel)
    identity: str | None = None
    active: bool = True


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: `channel` is merged field by field, `data` is replaced."""

    username: Username | UnsetType = UNSET
    data: dict[str, Any] | UnsetType = UNSET
    channel: ChannelPatch | UnsetType = UNSET
    identity: str | UnsetType | None = UNSET
    active: bool | UnsetType = UNSET


class User(msgspec.Struct):
    id: str
    username: str
    data: dict[str, Any]
    channel: Channel
    identity: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


class UserList(msgspec.Struct):
    items: list[User]
    next_cursor: str | None
