"""Settings: environment variables prefixed PIGEON_, with defaults that run with nothing set."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/pigeon.db"


class Settings(BaseSettings):
    """Everything Pigeon can be told, read once at start-up."""

    model_config = SettingsConfigDict(env_prefix="PIGEON_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = None
    provider: Literal["sandbox", "infobip"] = "sandbox"
    demo: bool = False
    secret_key: SecretStr | None = None
    # Tenants' URLs (an Infobip extension's baseUrl) may be http and name private hosts.
    allow_private_urls: bool = False

    infobip_base_url: str = ""
    infobip_api_key: SecretStr = SecretStr("")

    # The platform's providers per channel, in order (unset: PIGEON_PROVIDER alone).
    sms_providers: str | None = None
    whatsapp_providers: str | None = None
    email_providers: str | None = None
    provider_failure_threshold: int = Field(default=5, ge=1)
    provider_cooldown_seconds: float = Field(default=30.0, gt=0)

    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=4, ge=1, le=100)

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_sms_from: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_whatsapp_from: str = ""

    sms_sender: str = "Pigeon"
    whatsapp_sender: str = "447860088593"
    email_sender: str = "Pigeon <noreply@pigeon.localhost>"

    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    whatsapp_window_seconds: int = Field(default=24 * 3600, ge=1)
    message_validity_seconds: int = Field(default=48 * 3600, ge=60)

    worker_enabled: bool = True
    # `pigeon serve`'s worker in a process of its own (`dispatch.process`), or in the API's.
    worker_process: bool = True
    # With `worker_process`: the tenants' webhook deliveries in a child process of their own,
    # beside the dispatch worker's (or in the same one).
    delivery_process: bool = True
    worker_poll_interval: float = Field(default=0.25, gt=0)
    worker_batch_size: int = Field(default=500, ge=1, le=1000)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    sandbox_report_delay: float = Field(default=0.5, ge=0)

    console_session_seconds: int = Field(default=8 * 3600, ge=60)

    # The largest `data` of a User or Identity, in bytes of JSON (422 data_too_large past it).
    max_data_bytes: int = Field(default=64 * 1024, ge=1024, le=8 * 1024 * 1024)

    # A request must arrive whole (headers and body) within this, and an idle connection is
    # closed after it.
    http_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    # How long a request waits for the database (a lock, a pooled connection, a connection to
    # PostgreSQL) before it is answered 503 database_unavailable.
    database_timeout_seconds: float = Field(default=5.0, gt=0, le=300)

    event_retention_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # Seconds to wait before each attempt (Standard Webhooks' schedule); jitter is added.
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_disable_after_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    webhook_endpoint_concurrency: int = Field(default=8, ge=1, le=256)

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("database_url")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("must be seconds separated by commas, like 0,5,300") from None
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("must list at least one delay, none negative")
        return value

    @cached_property
    def retry_schedule(self) -> tuple[float, ...]:
        """PIGEON_WEBHOOK_RETRY_SCHEDULE as numbers: the delay before each attempt."""
        return tuple(float(part) for part in self.webhook_retry_schedule.split(","))

    @model_validator(mode="after")
    def _infobip_needs_an_account(self) -> Settings:
        if self.provider == "infobip" and not (
            self.infobip_base_url and self.infobip_api_key.get_secret_value()
        ):
            raise ValueError(
                "PIGEON_PROVIDER=infobip needs PIGEON_INFOBIP_BASE_URL and PIGEON_INFOBIP_API_KEY"
            )
        return self

    @model_validator(mode="after")
    def _routes_are_complete(self) -> Settings:
        from pigeon.providers.routes import check_routes

        check_routes(self)
        return self

    def providers_for(self, channel: str) -> tuple[str, ...]:
        """The platform's providers for a channel, in the order they are tried."""
        listed: str | None = getattr(self, f"{channel}_providers")
        if listed is None or not listed.strip():
            return (self.provider,)
        return tuple(name.strip().lower() for name in listed.split(",") if name.strip())

    @cached_property
    def base_url(self) -> str:
        """The externally reachable base URL, used to build webhook URLs."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def sqlite_path(self) -> Path | None:
        """The SQLite file this configuration points at, or None for other engines."""
        for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
            if self.database_url.startswith(prefix):
                return Path(self.database_url.removeprefix(prefix))
        return None


def settings_problem(exc: ValidationError) -> str:
    """What is wrong with the environment, naming the variables (for start-up's message)."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        fields = [str(part) for part in error["loc"]]
        where = f"PIGEON_{fields[0].upper()}: " if fields else ""
        lines.append(f"{where}{message}")
    return "; ".join(lines)
