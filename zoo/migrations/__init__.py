"""Alembic migrations of the catalog schema; `upgrade` runs them on an open connection.

A new SQLite catalog (a file, or the in-memory one read-only commands use before any catalog
exists) is made from `SQLITE_HEAD` instead: the statements that re-create what the migrations
make, without loading Alembic (a fifth of a second per process). A test checks that the file is
what the migrations make now; after adding a migration, write it again with
``python -m zoo.migrations``.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SQLITE_HEAD = HERE / "sqlite_head.sql"


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


def sqlite_head(connection) -> str:
    """The statements that re-create the SQLite database behind `connection`: its tables, its indexes and
    the schema revision (what `SQLITE_HEAD` holds)."""
    ddl = [sql for (sql,) in connection.exec_driver_sql(  # tables as made, then indexes by name (any order works)
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type <> 'table', "
        "CASE type WHEN 'table' THEN rowid END, name")]
    revisions = [f"INSERT INTO alembic_version (version_num) VALUES ('{version}')"
                 for (version,) in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
    tidy = ["\n".join(line.rstrip() for line in statement.splitlines()) for statement in [*ddl, *revisions]]
    return "".join(f"{statement};\n" for statement in tidy)


def create_sqlite_head(connection) -> None:
    """Make a new SQLite catalog's schema from `SQLITE_HEAD`, inside the connection's transaction."""
    for statement in SQLITE_HEAD.read_text().split(";\n"):
        if statement.strip():
            connection.exec_driver_sql(statement)
