"""PostgreSQL: a ranked full-text search column (tsvector + GIN index) and 64-bit counts.

The tsvector is a generated column, so every writer keeps it current (zoo, bulk loads, psql).
Words are runs of letters and digits, as SQLite's unicode61 tokenizer cuts them, so both
backends find the same models; weights A-D carry the FTS5 column weights (zoo._postgres). Sizes
and parameter counts become BIGINT: INTEGER is 32-bit on PostgreSQL, and files over 2 GiB and
models over 2**31 parameters are published. Nothing changes on SQLite (its INTEGER is 64-bit and
zoo.catalog keeps its FTS5 index).

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _words(expression: str, weight: str) -> str:
    return (f"setweight(to_tsvector('simple'::regconfig, regexp_replace(coalesce({expression}, ''), "
            f"'[^[:alnum:]]+', ' ', 'g')), '{weight}')")


SEARCH = " || ".join([
    _words("name", "A"),
    _words("keywords", "B"), _words("architecture", "B"),
    _words("tags::text", "C"), _words("task", "C"), _words("dataset", "C"),
    _words("description", "D"),
])


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("models", "parameters", type_=sa.BigInteger)
    op.alter_column("artifacts", "size", type_=sa.BigInteger)
    op.execute(f"ALTER TABLE models ADD COLUMN search tsvector GENERATED ALWAYS AS ({SEARCH}) STORED")
    op.create_index("ix_models_search", "models", ["search"], postgresql_using="gin")
