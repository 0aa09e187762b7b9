"""Identities: the tenant's CRM records; persons are messaged through the tenant's Infobip."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET
from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.db.tables import cdp_sync_jobs, identities
from pigeon.errors import NotFound, field_error
from pigeon.identities.schemas import (
    ContactInformation,
    Email,
    Identity,
    IdentityCreate,
    IdentityList,
    IdentityUpdate,
    Person,
    Phone,
    SyncState,
)
from pigeon.identities.sync import request_sync, sync_view
from pigeon.ids import is_object_id, new_object_id
from pigeon.pagination import Cursors
from pigeon.validation import normalize_email, normalize_phone


def _identity(row: Row[Any]) -> Identity:
    person = msgspec.convert(row.person, Person) if row.person is not None else None
    return Identity(
        id=row.id,
        type=row.type,
        country=row.country,
        currency=row.currency,
        data=row.data,
        person=person,
        created_at=row.created_at,
        updated_at=row.updated_at,
        sync=msgspec.convert(view, SyncState) if (view := sync_view(row)) else None,
    )


def _normalized_person(person: Person, *, prefix: str = "person.") -> dict[str, Any]:
    """Validate every contact, normalise it, and return the stored (JSON) form."""
    contact = person.contactInformation
    where = f"{prefix}contactInformation"
    phones = [
        Phone(number=normalize_phone(p.number, field=f"{where}.phone[{i}].number"))
        for i, p in enumerate(contact.phone)
    ]
    emails = [
        Email(address=normalize_email(e.address, field=f"{where}.email[{i}].address"))
        for i, e in enumerate(contact.email)
    ]
    normalized = Person(
        firstName=person.firstName,
        lastName=person.lastName,
        contactInformation=ContactInformation(phone=phones, email=emails),
    )
    return msgspec.to_builtins(normalized)  # type: ignore[no-any-return]


def _check_person_type(identity_type: str, person: Any) -> None:
    if person is not None and identity_type != "person":
        raise field_error(
            "person", f"only identities of type 'person' have a person, not {identity_type!r}"
        )


async def get_identity_row(*, conn: AsyncConnection, account_id: str, identity_id: str) -> Row[Any]:
    """The tenant's identity row; another tenant's identity answers like a missing one."""
    row = None
    if is_object_id(identity_id):
        query = select(identities).where(
            identities.c.account_id == account_id, identities.c.id == identity_id
        )
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"identity {identity_id} not found", code="identity_not_found")
    return row


async def create_identity(
    *, conn: AsyncConnection, account_id: str, body: IdentityCreate, identity_id: str | None = None
) -> Identity:
    """Create an Identity; a person gets validated, normalised contact information."""
    _check_person_type(body.type, body.person)
    person = body.person if body.person is not None or body.type != "person" else Person()
    now = utcnow()
    new_id = identity_id or new_object_id()
    await conn.execute(
        identities.insert().values(
            id=new_id,
            account_id=account_id,
            type=body.type,
            country=body.country.upper() if body.country else None,
            currency=body.currency.upper() if body.currency else None,
            data=body.data,
            person=_normalized_person(person) if person is not None else None,
            created_at=now,
            updated_at=now,
        )
    )
    await request_sync(conn=conn, account_id=account_id, identity_id=new_id)
    return await get_identity(conn=conn, account_id=account_id, identity_id=new_id)


async def get_identity(*, conn: AsyncConnection, account_id: str, identity_id: str) -> Identity:
    """One Identity of the tenant."""
    return _identity(
        await get_identity_row(conn=conn, account_id=account_id, identity_id=identity_id)
    )


async def list_identities(
    *,
    conn: AsyncConnection,
    account_id: str,
    limit: int,
    cursor: str | None,
    cursors: Cursors,
) -> IdentityList:
    """A page of the tenant's Identities, oldest first."""
    query = select(identities).where(identities.c.account_id == account_id)
    scope = f"identities:{account_id}"
    after = cursors.decode(cursor, scope=scope)
    if after is not None:
        query = query.where(identities.c.id > after)
    rows = (await conn.execute(query.order_by(identities.c.id).limit(limit + 1))).all()
    page, cursor = cursors.page(rows, limit, lambda row: str(row.id), scope=scope)
    return IdentityList(items=[_identity(r) for r in page], next_cursor=cursor)


def _merged_person(current: dict[str, Any] | None, patch: Any) -> dict[str, Any] | None:
    if patch is None:
        return None
    merged = msgspec.convert(current, Person) if current is not None else Person()
    for name in ("firstName", "lastName", "contactInformation"):
        value = getattr(patch, name)
        if value is not UNSET:
            merged = msgspec.structs.replace(merged, **{name: value})
    return _normalized_person(merged)


async def update_identity(
    *, conn: AsyncConnection, account_id: str, identity_id: str, body: IdentityUpdate
) -> Identity:
    """Apply a partial update; `person` merges field by field."""
    row = await get_identity_row(conn=conn, account_id=account_id, identity_id=identity_id)
    values: dict[str, Any] = {}
    new_type = row.type if body.type is UNSET else body.type
    if body.type is not UNSET:
        values["type"] = body.type
    if body.country is not UNSET:
        values["country"] = body.country.upper() if body.country else None
    if body.currency is not UNSET:
        values["currency"] = body.currency.upper() if body.currency else None
    if body.data is not UNSET:
        values["data"] = body.data
    person = row.person
    if body.person is not UNSET:
        _check_person_type(new_type, body.person)
        person = _merged_person(row.person, body.person)
    if new_type != "person":
        person = None
    elif person is None:
        person = _normalized_person(Person())  # a person always has a (possibly empty) person
    if person != row.person:
        values["person"] = person
    if values:
        values["updated_at"] = utcnow()
        await conn.execute(
            update(identities)
            .where(identities.c.account_id == account_id, identities.c.id == identity_id)
            .values(**values)
        )
        await request_sync(conn=conn, account_id=account_id, identity_id=identity_id)
    return await get_identity(conn=conn, account_id=account_id, identity_id=identity_id)


async def set_person(
    *, conn: AsyncConnection, account_id: str, identity_id: str, body: Person
) -> Identity:
    """POST /v1/identities/{id}/person: the identity's person is `body`, and its type person."""
    row = await get_identity_row(conn=conn, account_id=account_id, identity_id=identity_id)
    person = _normalized_person(body, prefix="")
    if row.type != "person" or row.person != person:
        await conn.execute(
            update(identities)
            .where(identities.c.account_id == account_id, identities.c.id == identity_id)
            .values(type="person", person=person, updated_at=utcnow())
        )
        await request_sync(conn=conn, account_id=account_id, identity_id=identity_id)
    return await get_identity(conn=conn, account_id=account_id, identity_id=identity_id)


async def delete_identity(*, conn: AsyncConnection, account_id: str, identity_id: str) -> None:
    """Delete an Identity; Users linked to it lose the link."""
    await get_identity_row(conn=conn, account_id=account_id, identity_id=identity_id)
    await conn.execute(delete(cdp_sync_jobs).where(cdp_sync_jobs.c.identity_id == identity_id))
    await conn.execute(
        delete(identities).where(
            identities.c.account_id == account_id, identities.c.id == identity_id
        )
    )
