"""/v1/identities: the tenant's CRM Identities (persons, companies)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.params import Body, Parameter
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.api import openapi as doc
from pigeon.api.body import check_data
from pigeon.api.deps import AccountId, guarded_write, require_api_key, services
from pigeon.identities import service
from pigeon.identities.schemas import (
    Identity,
    IdentityCreate,
    IdentityList,
    IdentityUpdate,
    Person,
)
from pigeon.pagination import DEFAULT_LIMIT, MAX_LIMIT

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[str | None, Parameter(description="next_cursor of the previous page")]
IdentityId = Annotated[str, doc.path_id("the Identity's id")]
CONTACT_RULES = (*doc.DATA, doc.INVALID_PHONE, doc.INVALID_EMAIL)
# POST /{id}/person names a contact relative to its body (the person itself).
PERSON_CONTACT_RULES = (
    doc.Documented(
        422,
        "invalid_phone",
        "contactInformation.phone[0].number: '12' is not a phone number",
        field="contactInformation.phone[0].number",
    ),
    doc.Documented(
        422,
        "invalid_email",
        "contactInformation.email[0].address: An email address must have an @-sign.",
        field="contactInformation.email[0].address",
    ),
)


@post(
    "/",
    status_code=201,
    summary="Create an Identity",
    responses={
        201: doc.ok(Identity, doc.IDENTITY, "The Identity, created"),
        **doc.problems(*doc.WRITE, *CONTACT_RULES),
    },
)
async def create_identity(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    data: Annotated[IdentityCreate, Body(examples=doc.example(doc.IDENTITY_CREATE))],
) -> Response[bytes]:
    check_data(request, data.data)

    async def action(conn: AsyncConnection) -> Identity:
        return await service.create_identity(conn=conn, account_id=account_id, body=data)

    return await guarded_write(request, account_id, action, status_code=201)


@get(
    "/",
    summary="List Identities",
    responses={
        200: doc.ok(
            IdentityList, {"items": [doc.IDENTITY], "next_cursor": None}, "A page of Identities"
        ),
        **doc.problems(*doc.LIST),
    },
)
async def list_identities(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> IdentityList:
    svc = services(request)
    async with svc.reader.connect() as conn:
        return await service.list_identities(
            conn=conn, account_id=account_id, limit=limit, cursor=cursor, cursors=svc.cursors
        )


@get(
    "/{identity_id:str}",
    summary="Get an Identity",
    responses={
        200: doc.ok(Identity, doc.IDENTITY, "The Identity"),
        **doc.problems(*doc.READ, doc.IDENTITY_NOT_FOUND),
    },
)
async def get_identity(
    request: Request[Any, Any, Any], account_id: AccountId, identity_id: IdentityId
) -> Identity:
    async with services(request).reader.connect() as conn:
        return await service.get_identity(conn=conn, account_id=account_id, identity_id=identity_id)


@patch(
    "/{identity_id:str}",
    summary="Update an Identity",
    description="`person` is merged field by field, `data` is replaced.",
    responses={
        200: doc.ok(Identity, doc.IDENTITY, "The Identity, updated"),
        **doc.problems(*doc.WRITE, doc.IDENTITY_NOT_FOUND, *CONTACT_RULES),
    },
)
async def update_identity(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    identity_id: IdentityId,
    data: Annotated[IdentityUpdate, Body(examples=doc.example(doc.IDENTITY_UPDATE))],
) -> Response[bytes]:
    check_data(request, data.data)

    async def action(conn: AsyncConnection) -> Identity:
        return await service.update_identity(
            conn=conn, account_id=account_id, identity_id=identity_id, body=data
        )

    return await guarded_write(request, account_id, action)


@post(
    "/{identity_id:str}/person",
    status_code=200,
    summary="Set an Identity's person",
    description="Orangepill's person sub-resource: replaces the identity's person (firstName, "
    "lastName, contactInformation) and makes it an identity of type person; the Infobip CDP "
    "sync follows as for any update. Contacts are validated and normalised like a create's.",
    responses={
        200: doc.ok(Identity, doc.IDENTITY, "The Identity, now of type person"),
        **doc.problems(*doc.WRITE, doc.IDENTITY_NOT_FOUND, *PERSON_CONTACT_RULES),
    },
)
async def set_person(
    request: Request[Any, Any, Any],
    account_id: AccountId,
    identity_id: IdentityId,
    data: Annotated[Person, Body(examples=doc.example(doc.PERSON))],
) -> Response[bytes]:
    async def action(conn: AsyncConnection) -> Identity:
        return await service.set_person(
            conn=conn, account_id=account_id, identity_id=identity_id, body=data
        )

    return await guarded_write(request, account_id, action)


@delete(
    "/{identity_id:str}",
    summary="Delete an Identity",
    responses=doc.problems(*doc.READ, doc.IDENTITY_NOT_FOUND),
)
async def delete_identity(
    request: Request[Any, Any, Any], account_id: AccountId, identity_id: IdentityId
) -> None:
    async with services(request).engine.begin() as conn:
        await service.delete_identity(conn=conn, account_id=account_id, identity_id=identity_id)


router = Router(
    "/v1/identities",
    guards=[require_api_key],
    route_handlers=[
        create_identity,
        list_identities,
        get_identity,
        update_identity,
        set_person,
        delete_identity,
    ],
    tags=["Identities"],
)
