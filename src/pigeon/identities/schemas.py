"""Wire shapes of Identities (CRM persons and companies)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

IdentityType = Literal["neutral", "person", "company"]
Name = Annotated[str, Meta(max_length=200)]
Country = Annotated[str, Meta(pattern="^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2")]
Currency = Annotated[str, Meta(pattern="^[A-Za-z]{3}$", description="ISO 4217 code")]


class Phone(msgspec.Struct, forbid_unknown_fields=True):
    number: str


class Email(msgspec.Struct, forbid_unknown_fields=True):
    address: str


class ContactInformation(msgspec.Struct, forbid_unknown_fields=True):
    phone: list[Phone] = msgspec.field(default_factory=list)
    email: list[Email] = msgspec.field(default_factory=list)


class Person(msgspec.Struct, forbid_unknown_fields=True):
    firstName: Name | None = None
    lastName: Name | None = None
    contactInformation: ContactInformation = msgspec.field(default_factory=ContactInformation)


class PersonPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Person fields to change: a field left out is kept."""

    firstName: Name | UnsetType | None = UNSET
    lastName: Name | UnsetType | None = UNSET
    contactInformation: ContactInformation | UnsetType = UNSET


class IdentityCreate(msgspec.Struct, forbid_unknown_fields=True):
    type: IdentityType = "neutral"
    country: Country | None = None
    currency: Currency | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    person: Person | None = None


class IdentityUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: `person` merges field by field, `data` is replaced."""

    type: IdentityType | UnsetType = UNSET
    country: Country | UnsetType | None = UNSET
    currency: Currency | UnsetType | None = UNSET
    data: dict[str, Any] | UnsetType = UNSET
    person: PersonPatch | UnsetType | None = UNSET


class SyncState(msgspec.Struct):
    """The Infobip CDP sync of a person: pending, synced or failed (with the last error)."""

    state: Literal["pending", "synced", "failed"]
    error: dict[str, Any] | None
    syncedAt: datetime | None


class Identity(msgspec.Struct):
    id: str
    type: IdentityType
    country: str | None
    currency: str | None
    data: dict[str, Any]
    person: Person | None
    created_at: datetime
    updated_at: datetime
    sync: SyncState | None = None


class IdentityList(msgspec.Struct):
    items: list[Identity]
    next_cursor: str | None
