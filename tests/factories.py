"""Plain factory functions: make a tenant, a user, a person, with keyword defaults."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from pigeon.accounts import service as accounts
from pigeon.db.engine import create_engine

if TYPE_CHECKING:
    from tests.conftest import Server

_phones = itertools.count(random.randrange(100_000, 800_000))


@dataclass(frozen=True)
class Tenant:
    account_id: str
    api_key: str
    key_id: str


def create_tenant(server: Server, name: str | None = None) -> Tenant:
    """An account and its first API key, written straight to the server's database."""

    async def create() -> Tenant:
        engine = create_engine(server.env["PIGEON_DATABASE_URL"])
        try:
            async with engine.begin() as conn:
                account = await accounts.create_account(
                    conn=conn, name=name or f"tenant-{uuid.uuid4().hex[:8]}"
                )
                key = await accounts.create_key(conn=conn, account_id=account.id)
        finally:
            await engine.dispose()
        return Tenant(account_id=account.id, api_key=key.key, key_id=key.id)

    return asyncio.run(create())


def create_tenant_with_cli(server: Server, name: str) -> Tenant:
    """An account and its first API key, created with the CLI as an operator would."""
    out = json.loads(server.cli("accounts", "create", name, "--json"))
    return Tenant(account_id=out["account_id"], api_key=out["api_key"], key_id=out["key_id"])


def unique_phone() -> str:
    """A valid Croatian mobile number, different on each call (never a sandbox magic suffix)."""
    return f"38598{next(_phones):06d}1"


def make_user(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """Create a User with every channel set; returns its JSON."""
    phone = overrides.pop("phone", None) or unique_phone()
    body: dict[str, Any] = {
        "username": f"user-{uuid.uuid4().hex[:10]}",
        "data": {"plan": "gold"},
        "channel": {
            "sms": phone,
            "whatsapp": phone,
            "email": f"{uuid.uuid4().hex[:8]}@example.com",
        },
    }
    body.update(overrides)
    response = client.post("/v1/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def make_person(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """Create a person Identity with a phone and an email; returns its JSON."""
    body: dict[str, Any] = {
        "type": "person",
        "country": "HR",
        "currency": "EUR",
        "person": {
            "firstName": "Ivo",
            "lastName": "Ivić",
            "contactInformation": {
                "phone": [{"number": overrides.pop("phone", None) or unique_phone()}],
                "email": [{"address": f"{uuid.uuid4().hex[:8]}@example.com"}],
            },
        },
    }
    body.update(overrides)
    response = client.post("/v1/identities", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def enable_extension(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """Enable the tenant's Infobip extension (the sandbox delivers for it)."""
    body = {
        "baseUrl": "https://tenant.api.infobip.com",
        "apiKey": "tenant-secret-key-123456",
        "smsSender": "Tenant",
        "whatsappSender": "447860088594",
        "emailSender": "Tenant <noreply@tenant.example>",
    }
    body.update(overrides)
    response = client.put("/v1/extensions/infobip", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def open_whatsapp_window(
    client: httpx.Client,
    inbound_url: str,
    customer: str,
    business: str,
    received_at: str | None = None,
) -> None:
    """Post an inbound WhatsApp message in Infobip's format to an inbound webhook URL."""
    result: dict[str, Any] = {
        "from": customer,
        "to": business,
        "integrationType": "WHATSAPP",
        "messageId": uuid.uuid4().hex,
        "message": {"type": "TEXT", "text": "hello"},
        "contact": {"name": "Customer"},
    }
    if received_at is not None:
        result["receivedAt"] = received_at
    response = client.post(
        inbound_url, json={"results": [result], "messageCount": 1, "pendingMessageCount": 0}
    )
    assert response.status_code == 200, response.text
