"""Alembic migrations of the catalog schema; `upgrade` runs them on an open connection."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def alembic_config(connection=None):
    """An Alembic Config for zoo's migrations (usable with `alembic.command`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection, revision: str = "head") -> None:
    """Upgrade the catalog behind `connection` to `revision`, inside its transaction."""
    from alembic import command

    command.upgrade(alembic_config(connection), revision)
