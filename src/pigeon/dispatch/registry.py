"""Which provider sends a batch: the sandbox, or the platform's or a tenant's Infobip account."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.config import Settings
from pigeon.db.tables import accounts, infobip_extensions
from pigeon.extensions.crypto import decrypt_secret
from pigeon.extensions.service import webhook_urls
from pigeon.messages.whatsapp import PLATFORM
from pigeon.netguard import guarded_transport
from pigeon.providers.base import Provider
from pigeon.providers.sandbox import SandboxProvider
from pigeon.webhooks.service import platform_webhook_token

# Infobip answers in well under a second; a slow answer must still end well inside a lease.
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
HTTP_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


class ProviderRegistry:
    """Builds and caches one provider per sending account."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sandbox = SandboxProvider(report_delay=settings.sandbox_report_delay)
        self._client: httpx.AsyncClient | None = None
        self._tenant_client: httpx.AsyncClient | None = None
        self._platform: Provider | None = None
        self._tenants: dict[str, tuple[Any, Provider]] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client for the operator's own account (its settings are trusted)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS)
        return self._client

    @property
    def tenant_client(self) -> httpx.AsyncClient:
        """The HTTP client for tenants' accounts, shared by all of them: every URL and
        connection goes through the tenant-URL guard (pigeon.netguard)."""
        if self._tenant_client is None:
            transport = guarded_transport(
                allow_private=self.settings.allow_private_urls, limits=HTTP_LIMITS
            )
            self._tenant_client = httpx.AsyncClient(timeout=HTTP_TIMEOUT, transport=transport)
        return self._tenant_client

    def polling(self) -> list[Provider]:
        """Providers that report without webhooks."""
        return [self.sandbox] if self.settings.provider == "sandbox" else []

    async def for_owner(self, *, conn: AsyncConnection, owner: str) -> Provider | None:
        """The provider for "platform" or a tenant's account id; None if it has none now."""
        if self.settings.provider == "sandbox":
            return self.sandbox
        if owner == PLATFORM:
            if self._platform is None:
                self._platform = await self._platform_provider(conn)
            return self._platform
        return await self._tenant_provider(conn, owner)

    async def _platform_provider(self, conn: AsyncConnection) -> Provider:
        from pigeon.providers.infobip import InfobipAccount, InfobipProvider

        token = await platform_webhook_token(conn=conn)
        settings = self.settings
        account = InfobipAccount(
            base_url=settings.infobip_base_url.rstrip("/"),
            api_key=settings.infobip_api_key.get_secret_value(),
            sms_sender=settings.sms_sender,
            whatsapp_sender=settings.whatsapp_sender,
            email_sender=settings.email_sender,
            notify_url=webhook_urls(settings.base_url, PLATFORM, token).deliveryReports,
        )
        return InfobipProvider(account, self.client)

    async def _tenant_provider(self, conn: AsyncConnection, account_id: str) -> Provider | None:
        from pigeon.providers.infobip import InfobipAccount, InfobipProvider

        row = (
            await conn.execute(
                select(infobip_extensions, accounts.c.webhook_token)
                .join(accounts, accounts.c.id == infobip_extensions.c.account_id)
                .where(infobip_extensions.c.account_id == account_id)
            )
        ).first()
        if row is None:
            return None
        cached = self._tenants.get(account_id)
        if cached is not None and cached[0] == row.updated_at:
            return cached[1]
        account = InfobipAccount(
            base_url=row.base_url,
            api_key=decrypt_secret(row.api_key, self.settings),
            sms_sender=row.sms_sender,
            whatsapp_sender=row.whatsapp_sender,
            email_sender=row.email_sender,
            notify_url=webhook_urls(
                self.settings.base_url, account_id, row.webhook_token
            ).deliveryReports,
        )
        provider = InfobipProvider(account, self.tenant_client)
        self._tenants[account_id] = (row.updated_at, provider)
        return provider

    async def aclose(self) -> None:
        """Close the shared HTTP clients."""
        for client in (self._client, self._tenant_client):
            if client is not None:
                await client.aclose()
