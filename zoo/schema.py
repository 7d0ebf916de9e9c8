"""The catalog's tables as SQLAlchemy Core objects: read paths use these without loading the ORM.

`zoo/_orm.py` maps classes onto the same tables for writes; `zoo/migrations` creates them.
"""
from __future__ import annotations

import time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    column,
    table,
)

metadata = MetaData()


def _empty_list() -> list:
    return []


def _empty_dict() -> dict:
    return {}


models = Table(
    "models", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), unique=True, nullable=False),
    Column("framework", String(32), nullable=False, index=True),
    Column("format", String(64)),
    Column("task", String(128), index=True),
    Column("dataset", String(128), index=True),
    Column("architecture", String(128)),
    Column("description", Text),
    Column("license", String(255)),
    Column("tags", JSON, default=_empty_list),
    Column("source", String(255), index=True),
    Column("homepage", Text),
    Column("paper", Text),
    Column("input_spec", JSON, default=_empty_dict),
    Column("parameters", BigInteger),  # 64-bit on PostgreSQL too (migration 0003)
    Column("metrics", JSON, default=_empty_dict),
    Column("meta", JSON, default=_empty_dict),
    Column("removed_upstream", Boolean, default=False, nullable=False),
    # The last signature checks (zoo.signing.SignatureCheck by "publisher"/"zoo") and their
    # summary, "verified" or "failed" (migration 0004).
    Column("signature_status", String(16), index=True),
    Column("signature", JSON),
    # The current revision's id (migration 0005); the others are rows of `revisions`.
    Column("revision", String(128)),
    # Search helper: the name split at letter/digit boundaries ("resnet 50"), and the tags as words.
    Column("keywords", Text),
    Column("created_at", Float, default=time.time),
    Column("updated_at", Float, default=time.time, onupdate=time.time),
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), index=True),
    Column("role", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("urls", JSON, default=_empty_list),
    Column("size", BigInteger),
    Column("checksum", String(160)),  # the publisher's, "algo:hex"
    Column("extract", String(16)),
    Column("path", Text),
    Column("sha256", String(64), index=True),
    Column("meta", JSON, default=_empty_dict),
    UniqueConstraint("model_id", "role", "filename"),
)

# Every revision a model had (migration 0005): the current one's files are the model's artifacts
# (`files` NULL); an earlier one keeps its files here as Artifact dicts.
revisions = Table(
    "revisions", metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False),
    Column("revision", String(128), nullable=False),
    Column("tag", String(128)),
    Column("digest", String(64), nullable=False, index=True),
    Column("source", String(255)),
    Column("files", JSON),
    Column("meta", JSON, default=_empty_dict),
    Column("created_at", Float, default=time.time),
    UniqueConstraint("model_id", "revision"),
)

sources = Table(
    "sources", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), unique=True, nullable=False),
    Column("url", Text, nullable=False),
    Column("etag", String(255)),
    Column("synced_at", Float),
    Column("created_at", Float, default=time.time),
    # Fetch refuses this source's models unless their signature verifies (migration 0004), and
    # who must have signed them (zoo.signing.Signer.to_dict()), pinned at `zoo source add`.
    Column("require_signature", Boolean, default=False, nullable=False),
    Column("signer", JSON),
)

# The FTS5 index on SQLite (maintained by zoo.catalog, not part of the migrated schema).
FTS_COLUMNS = "name, description, architecture, task, dataset, tags, keywords"
# bm25 weights, in FTS_COLUMNS order.
FTS_WEIGHTS = "10.0, 1.0, 4.0, 2.0, 2.0, 3.0, 6.0"
models_fts = table("models_fts", column("rowid"))
