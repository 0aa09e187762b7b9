"""Which providers send a batch: the platform's route for its channel, or a tenant's Infobip.

The platform's providers (`sandbox`, `infobip`, `twilio`, `smtp`) are built once, on first
use, and shared by every channel that lists them; each channel's `Route` tries them in the
order its `PIGEON_<CHANNEL>_PROVIDERS` gives, behind the process's circuits. A tenant's
messages (Persons) always go through the tenant's own Infobip account (the sandbox when
`PIGEON_PROVIDER=sandbox`), as does the CDP People sync.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.config import Settings
from pigeon.db.tables import infobip_extensions
from pigeon.dispatch.circuit import Circuits
from pigeon.dispatch.routing import Route
from pigeon.extensions.crypto import decrypt_secret
from pigeon.extensions.service import webhook_urls
from pigeon.messages.whatsapp import PLATFORM
from pigeon.netguard import guarded_transport
from pigeon.providers.base import PeopleSync, Provider
from pigeon.providers.sandbox import SandboxPeople, SandboxProvider
from pigeon.webhooks.tokens import webhook_token

if TYPE_CHECKING:
    from pigeon.providers.infobip import InfobipProvider

# Infobip answers in well under a second; a slow answer must still end well inside a lease.
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
HTTP_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


class ProviderRegistry:
    """Builds and caches the platform's providers and routes, and one provider per tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sandbox = SandboxProvider(report_delay=settings.sandbox_report_delay)
        self.sandbox_people = SandboxPeople()
        self.circuits = Circuits(
            threshold=settings.provider_failure_threshold,
            cooldown=settings.provider_cooldown_seconds,
        )
        self._client: httpx.AsyncClient | None = None
        self._tenant_client: httpx.AsyncClient | None = None
        self._platform: dict[str, Provider] = {}
        self._routes: dict[str, Route] = {}
        self._tenants: dict[str, tuple[Any, InfobipProvider]] = {}
        self._building = asyncio.Lock()

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client for the operator's own accounts (their settings are trusted)."""
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
        """Providers that report without webhooks (the sandbox, wherever it is routed)."""
        routed = {
            name
            for channel in ("sms", "whatsapp", "email")
            for name in self.settings.providers_for(channel)
        }
        if self.settings.provider == "sandbox" or "sandbox" in routed:
            return [self.sandbox]
        return []

    async def route_for(self, *, conn: AsyncConnection, owner: str, channel: str) -> Route | None:
        """The route for "platform" or a tenant's account id on a channel; None if it has none."""
        if owner != PLATFORM:
            tenant = (
                self.sandbox
                if self.settings.provider == "sandbox"
                else (await self._tenant_provider(conn, owner))
            )
            return Route(channel, [tenant], None) if tenant is not None else None
        route = self._routes.get(channel)
        if route is None:
            async with self._building:  # the worker loops of a process share the providers
                names = self.settings.providers_for(channel)
                providers = [await self._platform_provider(conn, name) for name in names]
                route = self._routes[channel] = Route(channel, providers, self.circuits)
        return route

    async def people_for(self, *, conn: AsyncConnection, owner: str) -> PeopleSync | None:
        """The People sync for a tenant's account id; None when its extension is gone."""
        if self.settings.provider == "sandbox":
            return self.sandbox_people
        provider: PeopleSync | None = await self._tenant_provider(conn, owner)
        return provider

    async def _platform_provider(self, conn: AsyncConnection, name: str) -> Provider:
        """One of the platform's providers, built on first use."""
        provider = self._platform.get(name)
        if provider is None:
            provider = self._platform[name] = await self._build(conn, name)
        return provider

    async def _build(self, conn: AsyncConnection, name: str) -> Provider:
        settings = self.settings
        if name == "sandbox":
            return self.sandbox
        if name == "smtp":
            from pigeon.providers.smtp import SmtpProvider, SmtpRelay

            relay = SmtpRelay(
                host=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username or None,
                password=settings.smtp_password.get_secret_value() or None,
                tls=settings.smtp_tls,
                timeout=settings.smtp_timeout_seconds,
                pool_size=settings.smtp_pool_size,
                sender=settings.email_sender,
            )
            return SmtpProvider(relay)
        token = await webhook_token(conn=conn, settings=settings, owner=PLATFORM)
        if name == "twilio":
            from pigeon.providers.twilio import TwilioAccount, TwilioProvider, status_callback_url

            account = TwilioAccount(
                base_url=settings.twilio_base_url,
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token.get_secret_value(),
                sms_from=settings.twilio_sms_from or None,
                messaging_service_sid=settings.twilio_messaging_service_sid or None,
                whatsapp_from=settings.twilio_whatsapp_from or None,
                status_callback=status_callback_url(settings.base_url, PLATFORM, token),
            )
            return TwilioProvider(account, self.client)
        from pigeon.providers.infobip import InfobipAccount, InfobipProvider

        infobip = InfobipAccount(
            base_url=settings.infobip_base_url.rstrip("/"),
            api_key=settings.infobip_api_key.get_secret_value(),
            sms_sender=settings.sms_sender,
            whatsapp_sender=settings.whatsapp_sender,
            email_sender=settings.email_sender,
            notify_url=webhook_urls(settings.base_url, PLATFORM, token).deliveryReports,
        )
        return InfobipProvider(infobip, self.client)

    async def _tenant_provider(
        self, conn: AsyncConnection, account_id: str
    ) -> InfobipProvider | None:
        """The tenant's Infobip provider (sends and People sync), or None without one."""
        from pigeon.providers.infobip import InfobipAccount, InfobipProvider

        row = (
            await conn.execute(
                select(infobip_extensions).where(infobip_extensions.c.account_id == account_id)
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
                self.settings.base_url,
                account_id,
                await webhook_token(conn=conn, settings=self.settings, owner=account_id),
            ).deliveryReports,
        )
        provider = InfobipProvider(account, self.tenant_client)
        self._tenants[account_id] = (row.updated_at, provider)
        return provider

    async def aclose(self) -> None:
        """Close the platform's providers (SMTP connections) and the shared HTTP client."""
        for provider in self._platform.values():
            await provider.aclose()
        for client in (self._client, self._tenant_client):
            if client is not None:
                await client.aclose()
