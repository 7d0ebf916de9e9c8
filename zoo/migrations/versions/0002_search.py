"""Search: removed-upstream marks, search keywords, and an FTS5 index on SQLite.

Revision ID: 0002
Revises: 0001
"""
import re

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_FTS_COLUMNS = "name, description, architecture, task, dataset, tags, keywords"


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch table rebuild: on SQLite a rebuild drops `models`, and with
    # foreign keys on, ON DELETE CASCADE would take every artifact row with it.
    op.add_column("models", sa.Column("removed_upstream", sa.Boolean, nullable=False,
                                      server_default=sa.false()))
    op.add_column("models", sa.Column("keywords", sa.Text))
    bind = op.get_bind()
    # Fill keywords for rows written by revision 0001 (same rule as zoo.catalog._keywords).
    for row_id, name, tags in bind.execute(sa.text("SELECT id, name, tags FROM models")).all():
        words = re.findall(r"[A-Za-z]+|\d+", name or "")
        tag_words = re.findall(r"[^\s\",\[\]]+", tags or "")
        bind.execute(sa.text("UPDATE models SET keywords = :k WHERE id = :i"),
                     {"k": " ".join(words + tag_words), "i": row_id})
    # The prefix indexes make "resne"* one doclist lookup instead of a merge of every term
    # that starts with it (measured: 'vgg 16' on 100,000 entries 8.9 ms -> 1.6 ms).
    if bind.dialect.name != "sqlite":
        return  # other databases search with LIKE
    op.execute(
        f"CREATE VIRTUAL TABLE models_fts USING fts5({_FTS_COLUMNS}, "
        "content='models', content_rowid='id', tokenize='unicode61', prefix='2 3 4 5 6 7 8')"
    )
    new = ", ".join(f"new.{c.strip()}" for c in _FTS_COLUMNS.split(","))
    old = ", ".join(f"old.{c.strip()}" for c in _FTS_COLUMNS.split(","))
    op.execute(f"CREATE TRIGGER models_fts_insert AFTER INSERT ON models BEGIN "
               f"INSERT INTO models_fts(rowid, {_FTS_COLUMNS}) VALUES (new.id, {new}); END")
    op.execute(f"CREATE TRIGGER models_fts_delete AFTER DELETE ON models BEGIN "
               f"INSERT INTO models_fts(models_fts, rowid, {_FTS_COLUMNS}) "
               f"VALUES ('delete', old.id, {old}); END")
    op.execute(f"CREATE TRIGGER models_fts_update AFTER UPDATE ON models BEGIN "
               f"INSERT INTO models_fts(models_fts, rowid, {_FTS_COLUMNS}) "
               f"VALUES ('delete', old.id, {old}); "
               f"INSERT INTO models_fts(rowid, {_FTS_COLUMNS}) VALUES (new.id, {new}); END")
    op.execute("INSERT INTO models_fts(models_fts) VALUES ('rebuild')")
