"""Search: removed-upstream marks, search keywords, and a small key/value table for catalog state.

The FTS5 index itself is not part of the schema: zoo.catalog builds and maintains it when the
process's SQLite has FTS5 (a process where tensorflow loaded its own SQLite first may not), and
marks it stale otherwise.

Revision ID: 0002
Revises: 0001
"""
import json
import re

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch table rebuild: on SQLite a rebuild drops `models`, and with
    # foreign keys on, ON DELETE CASCADE would take every artifact row with it.
    op.add_column("models", sa.Column("removed_upstream", sa.Boolean, nullable=False,
                                      server_default=sa.false()))
    op.add_column("models", sa.Column("keywords", sa.Text))
    op.create_table(
        "zoo_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text),
    )
    bind = op.get_bind()
    # Fill keywords for rows written by revision 0001 (same rule as zoo.catalog.search_keywords).
    for row_id, name, tags in bind.execute(sa.text("SELECT id, name, tags FROM models")).all():
        words = re.findall(r"[A-Za-z]+|\d+", name or "")
        if tags is not None and not isinstance(tags, str):  # PostgreSQL's driver parses JSON
            tags = json.dumps(tags)
        tag_words = re.findall(r"[^\s\",\[\]]+", tags or "")
        bind.execute(sa.text("UPDATE models SET keywords = :k WHERE id = :i"),
                     {"k": " ".join(words + tag_words), "i": row_id})
