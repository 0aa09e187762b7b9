"""Apply the Alembic migrations programmatically (`pigeon db upgrade`)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from pigeon.config import Settings
from pigeon.db.revisions import MIGRATIONS


def alembic_config(settings: Settings) -> Config:
    """An Alembic configuration for these settings, without an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = settings.database_url
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database schema up to `revision`."""
    command.upgrade(alembic_config(settings), revision)
