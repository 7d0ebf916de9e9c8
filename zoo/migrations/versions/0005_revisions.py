"""Revisions: every model keeps the revisions it had (`revisions`), and `models.revision` names the current.

Each model of an older catalog gets one revision, its current files, whose id is the first 12 hex
digits of their content digest (the rule of `zoo.revisions.content_digest`, frozen here as this
migration must stay what it was). Plain ADD COLUMN and CREATE TABLE on both backends (see 0002).

Revision ID: 0005
Revises: 0004
"""
import hashlib
import json
import time

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _identity(checksum, sha256, urls, size):
    if checksum:
        return checksum.lower()
    if not urls and sha256:
        return "sha256:" + sha256
    if urls:
        return f"url:{urls[0]}#{size if size is not None else ''}"
    return None


def _json(value):
    return json.loads(value) if isinstance(value, str) else value  # PostgreSQL's driver parses JSON


def upgrade() -> None:
    op.add_column("models", sa.Column("revision", sa.String(128)))
    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("revision", sa.String(128), nullable=False),
        sa.Column("tag", sa.String(128)),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("source", sa.String(255)),
        sa.Column("files", sa.JSON),
        sa.Column("meta", sa.JSON),
        sa.Column("created_at", sa.Float),
        sa.UniqueConstraint("model_id", "revision"),
    )
    op.create_index("ix_revisions_model_id", "revisions", ["model_id"])
    op.create_index("ix_revisions_digest", "revisions", ["digest"])
    bind = op.get_bind()
    files: dict[int, list] = {}
    for model_id, role, filename, checksum, sha256, urls, size in bind.execute(sa.text(
            "SELECT model_id, role, filename, checksum, sha256, urls, size FROM artifacts")).all():
        if role not in ("onnx", "signature"):  # derived files (zoo.records.DERIVED_ROLES)
            files.setdefault(model_id, []).append([role, filename, _identity(checksum, sha256, _json(urls) or [], size)])
    now = time.time()
    for model_id, source in bind.execute(sa.text("SELECT id, source FROM models")).all():
        entries = sorted(files.get(model_id, []))
        digest = hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()
        bind.execute(sa.text("INSERT INTO revisions (model_id, revision, digest, source, created_at) "
                             "VALUES (:m, :r, :d, :s, :t)"),
                     {"m": model_id, "r": digest[:12], "d": digest, "s": source, "t": now})
        bind.execute(sa.text("UPDATE models SET revision = :r WHERE id = :m"), {"r": digest[:12], "m": model_id})
