"""The Infobip CDP extension: a tenant's own Infobip account for messaging its Persons."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.accounts.service import get_account, key_hint
from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import infobip_extensions
from pigeon.errors import NotFound
from pigeon.extensions.crypto import encrypt_secret
from pigeon.extensions.schemas import InfobipExtension, InfobipExtensionIn, Webhooks
from pigeon.identities.sync import request_sync_all
from pigeon.netguard import check_url_shape, check_url_target
from pigeon.validation import normalize_email, normalize_phone
from pigeon.webhooks.tokens import webhook_token


def webhook_urls(base_url: str, owner: str, token: str) -> Webhooks:
    """The delivery-report and inbound URLs for one provider account (secret token inside)."""
    prefix = f"{base_url}/v1/webhooks/infobip/{owner}/{token}"
    return Webhooks(deliveryReports=f"{prefix}/reports", inbound=f"{prefix}/inbound")


def _validated(body: InfobipExtensionIn, settings: Settings) -> dict[str, Any]:
    base_url = check_url_shape(body.baseUrl, allow_private=settings.allow_private_urls)
    email_sender = None
    if body.emailSender:
        name, address = parseaddr(body.emailSender)
        normalized = normalize_email(address or body.emailSender, field="emailSender")
        email_sender = f"{name} <{normalized}>" if name else normalized
    return {
        "base_url": base_url,
        "api_key": encrypt_secret(body.apiKey, settings),
        "api_key_hint": key_hint(body.apiKey),
        "sms_sender": body.smsSender or None,
        "whatsapp_sender": (
            normalize_phone(body.whatsappSender, field="whatsappSender")
            if body.whatsappSender
            else None
        ),
        "email_sender": email_sender,
    }


async def put_extension(
    *, conn: AsyncConnection, account_id: str, body: InfobipExtensionIn, settings: Settings
) -> InfobipExtension:
    """Enable the extension, or replace its configuration (the API key stored encrypted)."""
    values = _validated(body, settings)
    await check_url_target(values["base_url"], allow_private=settings.allow_private_urls)
    now = utcnow()
    existing = await _row(conn, account_id)
    if existing is None:
        await conn.execute(
            infobip_extensions.insert().values(
                account_id=account_id, created_at=now, updated_at=now, **values
            )
        )
    else:
        await conn.execute(
            infobip_extensions.update()
            .where(infobip_extensions.c.account_id == account_id)
            .values(updated_at=now, **values)
        )
    await request_sync_all(conn=conn, account_id=account_id)
    return await get_extension(conn=conn, account_id=account_id, settings=settings)


async def _row(conn: AsyncConnection, account_id: str) -> Row[Any] | None:
    query = select(infobip_extensions).where(infobip_extensions.c.account_id == account_id)
    return (await conn.execute(query)).first()


def _not_enabled() -> NotFound:
    return NotFound(
        "the Infobip extension is not enabled for this account: PUT /v1/extensions/infobip",
        code="infobip_extension_not_enabled",
    )


async def get_extension(
    *, conn: AsyncConnection, account_id: str, settings: Settings
) -> InfobipExtension:
    """The extension as the tenant may see it: key masked, webhook URLs included."""
    row = await _row(conn, account_id)
    if row is None:
        raise _not_enabled()
    account = await get_account(conn=conn, account_id=account_id)
    return InfobipExtension(
        enabled=True,
        baseUrl=row.base_url,
        apiKey=f"****{row.api_key_hint}",
        smsSender=row.sms_sender,
        whatsappSender=row.whatsapp_sender,
        emailSender=row.email_sender,
        webhooks=webhook_urls(
            settings.base_url,
            account.id,
            await webhook_token(conn=conn, settings=settings, owner=account.id),
        ),
        createdAt=row.created_at,
        updatedAt=row.updated_at,
    )


async def delete_extension(*, conn: AsyncConnection, account_id: str) -> None:
    """Disable the extension; Persons can no longer be messaged."""
    result = await conn.execute(
        delete(infobip_extensions).where(infobip_extensions.c.account_id == account_id)
    )
    if result.rowcount == 0:
        raise _not_enabled()
