"""Settings: environment variables prefixed PIGEON_, with defaults that run with nothing set."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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

    sms_sender: str = "Pigeon"
    whatsapp_sender: str = "447860088593"
    email_sender: str = "Pigeon <noreply@pigeon.localhost>"

    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    whatsapp_window_seconds: int = Field(default=24 * 3600, ge=1)
    message_validity_seconds: int = Field(default=48 * 3600, ge=60)

    worker_enabled: bool = True
    worker_poll_interval: float = Field(default=0.25, gt=0)
    worker_batch_size: int = Field(default=100, ge=1, le=1000)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    sandbox_report_delay: float = Field(default=0.5, ge=0)

    console_session_seconds: int = Field(default=8 * 3600, ge=60)

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("database_url")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _infobip_needs_an_account(self) -> Settings:
        if self.provider == "infobip" and not (
            self.infobip_base_url and self.infobip_api_key.get_secret_value()
        ):
            raise ValueError(
                "PIGEON_PROVIDER=infobip needs PIGEON_INFOBIP_BASE_URL and PIGEON_INFOBIP_API_KEY"
            )
        return self

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
