"""Write zoo/migrations/sqlite_head.sql from what the migrations make now (after adding one)."""
from sqlalchemy import create_engine

from zoo.migrations import SQLITE_HEAD, sqlite_head, upgrade

with create_engine("sqlite://").begin() as connection:
    upgrade(connection, "head")
    SQLITE_HEAD.write_text(sqlite_head(connection))
print(f"wrote {SQLITE_HEAD}")
