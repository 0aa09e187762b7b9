"""The docs' example tenant, so their curl commands work as written against a local Pigeon.

The demo API key is public: never enable demo mode on a reachable server.
"""

from __future__ import annotations

from sqlalchemy import Column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.accounts.service import create_account, create_key
from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import accounts, api_keys, identities, infobip_extensions, users
from pigeon.extensions.schemas import InfobipExtensionIn
from pigeon.extensions.service import put_extension
from pigeon.identities.schemas import (
    ContactInformation,
    Email,
    IdentityCreate,
    Person,
    Phone,
)
from pigeon.identities.service import create_identity
from pigeon.messages import whatsapp

DEMO_ACCOUNT_ID = "634b56217f6a7b0be52d0000"
DEMO_API_KEY = "AXVubzpwQDU1dzByYM=="
DEMO_KEY_ID = "key_demo"
DEMO_OBJECT_ID = "634b56217f6a7b0be52dffbd"
DEMO_PHONE = "38598123456"
DEMO_TENANT_WHATSAPP = "447860088594"


async def _exists(conn: AsyncConnection, column: Column[str], value: str) -> bool:
    return (await conn.execute(select(column).where(column == value))).first() is not None


async def seed_demo(engine: AsyncEngine, settings: Settings) -> str:
    """Create whatever part of the demo tenant is missing; seeding twice changes nothing."""
    try:
        return await _seed(engine, settings)
    except IntegrityError:
        # Another process (serve --workers N) seeded at the same moment: what is left is ours.
        return await _seed(engine, settings)


async def _seed(engine: AsyncEngine, settings: Settings) -> str:
    async with engine.begin() as conn:
        if not await _exists(conn, accounts.c.id, DEMO_ACCOUNT_ID):
            await create_account(conn=conn, name="Orangepill demo", account_id=DEMO_ACCOUNT_ID)
        if not await _exists(conn, api_keys.c.id, DEMO_KEY_ID):
            created = await create_key(conn=conn, account_id=DEMO_ACCOUNT_ID, key=DEMO_API_KEY)
            await conn.execute(
                api_keys.update().where(api_keys.c.id == created.id).values(id=DEMO_KEY_ID)
            )
        if not await _exists(conn, identities.c.id, DEMO_OBJECT_ID):
            await create_identity(
                conn=conn,
                account_id=DEMO_ACCOUNT_ID,
                identity_id=DEMO_OBJECT_ID,
                body=IdentityCreate(
                    type="person",
                    country="HR",
                    currency="EUR",
                    person=Person(
                        firstName="Ana",
                        lastName="Horvat",
                        contactInformation=ContactInformation(
                            phone=[Phone(number=DEMO_PHONE)],
                            email=[Email(address="ana.horvat@example.com")],
                        ),
                    ),
                ),
            )
        if not await _exists(conn, users.c.id, DEMO_OBJECT_ID):
            now = utcnow()
            await conn.execute(
                users.insert().values(
                    id=DEMO_OBJECT_ID,
                    account_id=DEMO_ACCOUNT_ID,
                    username="ana.horvat",
                    data={"demo": True},
                    channel_sms=DEMO_PHONE,
                    channel_whatsapp=DEMO_PHONE,
                    channel_email="ana.horvat@example.com",
                    identity_id=DEMO_OBJECT_ID,
                    active=True,
                    created_at=now,
                    updated_at=now,
                )
            )
        if not await _exists(conn, infobip_extensions.c.account_id, DEMO_ACCOUNT_ID):
            await put_extension(
                conn=conn,
                account_id=DEMO_ACCOUNT_ID,
                settings=settings,
                body=InfobipExtensionIn(
                    baseUrl="https://demo.api.infobip.com",
                    apiKey="demo-infobip-api-key",
                    smsSender="Orangepill",
                    whatsappSender=DEMO_TENANT_WHATSAPP,
                    emailSender="Orangepill <noreply@orangepill.example>",
                ),
            )
        # The demo customer "wrote" to both WhatsApp numbers; kept fresh so the 24-hour window
        # of the docs' WhatsApp examples stays open whenever the demo starts.
        for owner, number in (
            (whatsapp.PLATFORM, settings.whatsapp_sender),
            (DEMO_ACCOUNT_ID, DEMO_TENANT_WHATSAPP),
        ):
            await whatsapp.record_inbound(
                conn=conn,
                owner=owner,
                business_number=number,
                customer_number=DEMO_PHONE,
                received_at=utcnow(),
                message={"type": "TEXT", "text": "Hi (demo interaction)"},
            )
    return DEMO_ACCOUNT_ID
