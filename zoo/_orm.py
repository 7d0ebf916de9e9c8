"""ORM classes over the catalog's tables, for writes (imported only when the catalog changes).

Reads go through SQLAlchemy Core on `zoo.schema`'s tables: importing the ORM costs ~80 ms, more
than `zoo search` can afford.
"""
from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Session, relationship

from zoo import schema
from zoo.records import Artifact, Model

_MODEL_FIELDS = ("framework", "format", "task", "dataset", "architecture", "description",
                 "license", "tags", "source", "homepage", "paper", "parameters", "metrics",
                 "meta", "removed_upstream")
_ARTIFACT_FIELDS = ("urls", "size", "checksum", "extract", "path", "sha256", "meta")


class _Base(DeclarativeBase):
    metadata = schema.metadata


class ModelRow(_Base):
    __table__ = schema.models

    artifacts = relationship("ArtifactRow", back_populates="model", cascade="all, delete-orphan",
                             order_by=schema.artifacts.c.id)
    revisions = relationship("RevisionRow", back_populates="model", cascade="all, delete-orphan",
                             order_by=schema.revisions.c.id)


class ArtifactRow(_Base):
    __table__ = schema.artifacts

    model = relationship(ModelRow, back_populates="artifacts")


class RevisionRow(_Base):
    __table__ = schema.revisions

    model = relationship(ModelRow, back_populates="revisions")


class SourceRow(_Base):
    __table__ = schema.sources


def fill_model_row(row: ModelRow, model: Model, keywords: str) -> None:
    for name in _MODEL_FIELDS:
        value = getattr(model, name)
        setattr(row, name, value.copy() if isinstance(value, (list, dict)) else value)
    row.input_spec = model.input.to_dict()
    row.keywords = keywords


def fill_artifact_row(row: ArtifactRow, artifact: Artifact) -> None:
    for name in _ARTIFACT_FIELDS:
        value = getattr(artifact, name)
        setattr(row, name, value.copy() if isinstance(value, (list, dict)) else value)


def note_touched_models(session: Session, _context) -> None:
    """Remember which models a flush wrote, so the search index can follow them."""
    touched = session.info.setdefault("touched_models", set())
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, ModelRow) and obj.id is not None:
            touched.add(obj.id)
