"""The catalog database: models, their artifacts and the rows of remote sources (SQLAlchemy 2).

What differs between databases is a back-end's (`zoo._backend`): SQLite by default
(`zoo._sqlite`: WAL mode, read-only media, FTS5 search), PostgreSQL for a team (`zoo._postgres`:
pooled, writes serialized, tsvector search), LIKE search on any other SQLAlchemy URL. What they
share is here: the schema, versioned with Alembic (`zoo/migrations`; an older catalog is upgraded
in place, a newer one refused), transactions, models and artifacts, and the registry of open
catalogs (`open_catalog`, `close_all`). Syncing remote sources is `zoo.sources`'s. Reads run
SQLAlchemy Core on `zoo.schema`'s tables; writes use the ORM classes of `zoo._orm`, imported only
when something is written (the ORM import alone would cost `zoo search` ~80 ms).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from sqlalchemy import Text, and_, event, exc, func, or_, select, text

from zoo import config
from zoo._backend import Backend, Damaged, SearchPlan
from zoo._redact import mask_url
from zoo._sqlite import BUSY_TIMEOUT_MS
from zoo.errors import (
    CatalogError,
    CatalogVersionError,
    DuplicateModelError,
    UnknownModelError,
    UnknownRevisionError,
    UnknownSourceError,
)
from zoo.records import FRAMEWORKS, Artifact, InputSpec, Model
from zoo.revisions import DERIVED_ROLES, Revision, content_digest, resolve, split_ref
from zoo.schema import artifacts as _artifacts
from zoo.schema import models as _models
from zoo.schema import revisions as _revisions
from zoo.schema import sources as _sources

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zoo._orm import ModelRow, RevisionRow, SourceRow

# Alembic revisions this zoo knows, oldest first; the last is the schema this code writes.
SCHEMA_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]
# The URL of the in-memory catalog read-only commands use before any catalog file exists.
IN_MEMORY = "sqlite://"
# zoo_state key saying whether the built-in zoos were loaded: "pending" from the transaction that
# creates the schema until the one that loads them, so a creation cut short (kill -9) is finished
# by the next open; "loaded" after; "skipped" for catalogs created with builtins=False.
BUILTINS_STATE = "builtins"
# What opening a catalog reads: its schema revision and built-ins state, in one round trip.
_CURRENT = text("SELECT (SELECT version_num FROM alembic_version), "
                "(SELECT value FROM zoo_state WHERE key = :key)")


@dataclass
class SourceInfo:
    """A remote zoo index the catalog follows."""

    name: str
    url: str
    etag: str | None = None
    synced_at: float | None = None
    models: int = 0
    require_signature: bool = False  # fetch refuses a model of this source unless its signature verifies
    signer: dict[str, Any] | None = None  # who must have signed (zoo.signing.Signer.to_dict())

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "url": mask_url(self.url), "etag": self.etag,
                "synced_at": self.synced_at, "models": self.models,
                "require_signature": self.require_signature}
        if self.signer:
            data["signer"] = self.signer
        return data


def search_keywords(name: str, tags: Iterable[str]) -> str:
    """Extra words for search: 'resnet50.caffe' -> 'resnet 50 caffe', so 'resnet 50' finds it."""
    parts = re.findall(r"[A-Za-z]+|\d+", name)
    return " ".join(parts + [str(t) for t in tags])


def _intact(value: Any, kind: type, column: str, damaged: list[str]) -> Any:
    """`value` when it is a `kind`, else the empty one, noting `column` as damaged (see `Damaged`)."""
    if value is None:
        return kind()
    if isinstance(value, Damaged) or not isinstance(value, kind):
        damaged.append(column)
        return kind()
    return kind(value)


def _to_record(row: Any, artifact_rows: Iterable[Any] = ()) -> Model:
    """A Model from a models row (Core Row or ORM object) and its artifact rows."""
    damaged: list[str] = []
    artifacts = [_artifact_record(a, damaged) for a in artifact_rows]
    spec = _intact(row.input_spec, dict, "input_spec", damaged)
    try:
        spec_record = InputSpec.from_dict(spec)
    except (TypeError, ValueError):
        damaged.append("input_spec")
        spec_record = InputSpec()
    model = Model(
        name=row.name,
        framework=row.framework,
        format=row.format,
        task=row.task,
        dataset=row.dataset,
        architecture=row.architecture,
        description=row.description,
        license=row.license,
        tags=_intact(row.tags, list, "tags", damaged),
        source=row.source,
        homepage=row.homepage,
        paper=row.paper,
        input=spec_record,
        parameters=row.parameters,
        metrics=_intact(row.metrics, dict, "metrics", damaged),
        meta=_intact(row.meta, dict, "meta", damaged),
        removed_upstream=bool(row.removed_upstream),
        signature=_intact(row.signature, dict, "signature", damaged),
        artifacts=artifacts,
        revision=row.revision,
    )
    if damaged:
        model.meta["damaged"] = (f"unreadable catalog data ({', '.join(damaged)}: not valid JSON), shown empty; "
                                 f"`zoo rm {row.name}` and add it again, or sync its source")
    return model


def _revision_record(row: Any, current: str | None) -> Revision:
    return Revision(revision=row.revision, digest=row.digest, tag=row.tag, created_at=row.created_at,
                    current=row.revision == current, source=row.source,
                    files=[Artifact.from_dict(a) for a in (row.files or [])], meta=dict(row.meta or {}))


def _superseded(model: Model) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a revision keeps when it stops being current: its files (not where they were on disk:
    the model's folder now holds the new revision's, and `fetch NAME@REV` places the old ones
    apart) and the model's facts then (input spec, format...)."""
    files = [dataclasses.replace(a, path=None).to_dict() for a in model.artifacts if a.role not in DERIVED_ROLES]
    facts = {k: v for k, v in model.to_dict().items() if k not in ("artifacts", "local", "name")}
    return files, {"model": facts}


def _artifact_record(row: Any, damaged: list[str] | None = None) -> Artifact:
    damaged = [] if damaged is None else damaged
    return Artifact(
        role=row.role, filename=row.filename, urls=_intact(row.urls, list, f"{row.role} urls", damaged),
        size=row.size, checksum=row.checksum, extract=row.extract, path=row.path, sha256=row.sha256,
        meta=_intact(row.meta, dict, f"{row.role} meta", damaged),
    )


def _past(base: str, chosen: Revision, current: Model) -> Model:
    """An earlier revision as a model: its facts then, its files, named ``NAME@<id>``."""
    facts = chosen.meta.get("model")
    model = Model.from_dict({**facts, "name": base}) if isinstance(facts, dict) else current
    return dataclasses.replace(model, name=f"{base}@{chosen.revision}", revision=chosen.revision,
                               artifacts=list(chosen.files), removed_upstream=False)


def _check_model(model: Model) -> None:
    if not model.name or not model.name.strip():
        raise CatalogError("a model needs a non-empty name; pass one with --name")
    if model.framework not in FRAMEWORKS:
        raise CatalogError(
            f"model {model.name!r}: framework {model.framework!r} is not one of "
            f"{', '.join(FRAMEWORKS)}"
        )


def closest_names(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Names that look like `name`: close spellings first, then names that contain it."""
    names = list(names)
    found = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    lowered = name.lower()
    for other in names:
        if len(found) >= n:
            break
        if other not in found and (lowered in other.lower() or other.lower() in lowered):
            found.append(other)
    return found


def _text(value: str | None) -> str | None:
    """A name or query as the database can take it: bytes that were not UTF-8 (lone surrogates from
    a file name or an argument) become U+FFFD, which no stored name contains."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8")



def _backend(url: str) -> Backend:
    """The back-end a catalog URL needs: PostgreSQL's, SQLite's, or LIKE search on anything else."""
    from zoo import _postgres

    if _postgres.is_postgresql(url):
        return _postgres.PostgreSQL(url)
    if str(url).split(":", 1)[0].split("+", 1)[0] == "sqlite":
        from zoo._sqlite import SQLite

        return SQLite(url)
    return Backend(url)


class Catalog:
    """A catalog of models, opened with `open_catalog`. Each method is one transaction."""

    def __init__(self, url: str, *, builtins: bool = True):
        self.url = url
        self._builtins = builtins
        self._active: Session | None = None
        self._backend = _backend(url)
        self._engine = self._backend.engine
        self._write_engine = self._engine.execution_options(zoo_write=True)
        self._prepare()

    def __repr__(self) -> str:
        return f"Catalog({mask_url(self.url)!r})"

    # ---- connection set-up -------------------------------------------------------------
    @property
    def is_sqlite(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    @property
    def read_only(self) -> bool:
        """True when the file or its folder cannot be written: reads work, writes raise CatalogError."""
        return self._backend.read_only

    @property
    def search_mode(self) -> str:
        """How `search` ranks in this process: "fts5" (SQLite), "tsvector" (PostgreSQL) or "like"."""
        return self._backend.search_mode

    def _prepare(self) -> None:
        """Create, upgrade or accept the schema; refuse a catalog newer than this zoo.

        A catalog whose schema is current costs one query on one connection (its revision and
        built-ins state together): no reflection, no Alembic, no second round trip.
        """
        try:
            with self._engine.connect() as connection:
                revision, builtins_state = self._current(connection)
        except exc.DatabaseError as error:
            raise self._database_error(error) from None
        if revision is not None and revision not in SCHEMA_REVISIONS:
            raise CatalogVersionError(
                f"catalog {self.where} has schema revision {revision}, newer than this zoo "
                f"understands (up to {SCHEMA_HEAD}); upgrade zoo (pip install -U zoo) or use "
                "another catalog with --catalog", revision=revision, supported=SCHEMA_HEAD,
            )
        created = revision is None
        if revision != SCHEMA_HEAD:
            if self.read_only:
                raise self._read_only_error(
                    f"has schema revision {revision}, older than this zoo's {SCHEMA_HEAD}, and "
                    "cannot be upgraded in place")
            self._migrate(created)
            builtins_state = None  # read again below, after the migration wrote it
        try:
            self._backend.prepare_search(self._write_engine)
        except exc.DatabaseError as error:
            raise self._database_error(error) from None
        if self._builtins and not self.read_only and self._builtins_pending(builtins_state):
            self._load_builtins()

    def rebuild_search_index(self) -> None:
        """Re-index every model for full-text search (after bulk writes outside the ORM)."""
        if self.read_only:
            raise self._read_only_error("cannot have its search index rebuilt")
        try:
            self._backend.rebuild_search_index(self._write_engine)
        except exc.DatabaseError as error:
            raise self._database_error(error) from None

    @property
    def where(self) -> str:
        """How messages name this catalog: its file, or its URL without the password."""
        return self._backend.where

    def _current(self, connection) -> tuple[str | None, str | None]:
        """(schema revision, built-ins state) in one query when the catalog has both tables, as
        every catalog but a new or very old one does; else the revision as `_revision` finds it."""
        try:
            row = connection.execute(_CURRENT, {"key": BUILTINS_STATE}).first()
        except exc.DatabaseError:  # no such table (or not a database: `_revision` says which)
            connection.rollback()
        else:
            if row is not None and row[0] is not None:
                return row[0], row[1]
        return self._revision(connection), None

    def _revision(self, connection) -> str | None:
        if self.is_sqlite:
            # Reading sqlite_master also proves the file is a SQLite database.
            tables = {r[0] for r in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        else:
            from sqlalchemy import inspect

            tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables:
            if tables & {"models", "artifacts"}:
                raise CatalogError(
                    f"{self.where} has zoo-like tables but no schema version; it was not written "
                    "by zoo. Use another catalog with --catalog"
                )
            if tables and self.is_sqlite:
                raise CatalogError(
                    f"{self.where} is a SQLite database but not a zoo catalog (tables: "
                    f"{', '.join(sorted(tables)[:5])}); point --catalog at a zoo catalog or a new file"
                )
            return None
        row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None

    def _migrate(self, created: bool) -> None:
        from zoo.migrations import create_sqlite_head, upgrade

        try:
            with self._write_engine.begin() as connection:
                # Another process may have made it while this one waited for the write lock.
                if created and self.is_sqlite and self._revision(connection) is None:
                    create_sqlite_head(connection)  # what the migrations make, without loading Alembic
                else:
                    upgrade(connection, SCHEMA_HEAD)
                if created:
                    # Same transaction as the schema: no catalog exists without this state.
                    connection.execute(
                        text("INSERT INTO zoo_state(key, value) VALUES (:key, :value) "
                             "ON CONFLICT(key) DO NOTHING"),
                        {"key": BUILTINS_STATE, "value": "pending" if self._builtins else "skipped"})
        except exc.DatabaseError as error:
            raise self._database_error(error) from None

    def _database_error(self, error: Exception) -> CatalogError:
        message = str(getattr(error, "orig", error))
        explained = self._backend.explain(message)
        if explained is not None:
            return explained
        if self.is_postgresql:
            message = " ".join(message.split())
        if "not a database" in message or "file is encrypted" in message:
            return CatalogError(
                f"{self.where} is not a SQLite catalog ({message}); point --catalog or "
                "ZOO_CATALOG at a zoo catalog file or at a new path"
            )
        if "readonly" in message or "read-only" in message or "unable to open" in message:
            return CatalogError(
                f"catalog {self.where} cannot be written ({message}); choose a writable "
                "location with --catalog or ZOO_CATALOG"
            )
        if "locked" in message:
            return CatalogError(
                f"catalog {self.where} stayed locked by another process for "
                f"{BUSY_TIMEOUT_MS // 1000} s; try again when it finishes"
            )
        return CatalogError(f"catalog {self.where}: {message}")

    def _read_only_error(self, what: str) -> CatalogError:
        return CatalogError(
            f"catalog {self.where} is read-only (the file or its folder cannot be written) and "
            f"{what}; reads work, but to change it copy it somewhere writable and point "
            "--catalog or ZOO_CATALOG at the copy"
        )

    @staticmethod
    def _builtins_state(reader: Any) -> str | None:
        return reader.execute(text("SELECT value FROM zoo_state WHERE key = :key"),
                              {"key": BUILTINS_STATE}).scalar()

    def _builtins_pending(self, state: str | None = None) -> bool:
        """Whether the built-in zoos still have to be loaded (a creation was cut short); `state`
        is the one read as the catalog opened, None to read it."""
        if state is not None:
            return state == "pending"
        with self._reader() as reader:
            state = self._builtins_state(reader)
            if state is not None:
                return state == "pending"
            # A catalog from before the state was recorded: empty means its creation was cut short.
            return (reader.execute(select(_models.c.id).limit(1)).first() is None
                    and reader.execute(select(_sources.c.id).limit(1)).first() is None)

    def _load_builtins(self) -> None:
        try:
            from zoo.index import builtin_models
        except ImportError:  # the built-in indexes are optional data
            return
        models = builtin_models()
        by_source: dict[str, list[Model]] = {}
        for model in models:
            by_source.setdefault(model.source or "builtin", []).append(model)
        with self.batch():
            session = self._active
            if self._builtins_state(session) == "loaded":
                return  # another process finished it while this one waited for the lock
            # A pending state means no load ever committed, so nothing is there to sync against:
            # the entries go in as they are (`zoo source sync` later syncs them like any source).
            for source, entries in by_source.items():
                self.add_source(source, f"builtin:{source}")
                for model in entries:
                    model.source = source
                self.add_models(entries)
            # Recorded in the loading transaction: the zoos and the state commit together.
            session.execute(text("INSERT INTO zoo_state(key, value) VALUES (:key, 'loaded') "
                                 "ON CONFLICT(key) DO UPDATE SET value = 'loaded'"),
                            {"key": BUILTINS_STATE})

    # ---- sessions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[Any]:
        """Something to run Core selects on: the open batch's session, or a fresh connection."""
        if self._active is not None:
            yield self._active
            return
        try:
            with self._engine.connect() as connection:
                yield connection
        except exc.DatabaseError as error:
            raise self._database_error(error) from None

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """An ORM session for a write, committed at the end (inside a batch: the batch's)."""
        if self._active is not None:
            yield self._active
            return
        if self.read_only:
            raise self._read_only_error("cannot be changed")
        from sqlalchemy.orm import Session

        from zoo._orm import note_touched_models

        session = Session(self._write_engine, expire_on_commit=False)
        event.listen(session, "after_flush", note_touched_models)
        try:
            yield session
            session.flush()
            self._backend.sync_search(session)
            session.commit()
        except exc.IntegrityError as error:
            session.rollback()
            raise CatalogError(f"catalog {self.where}: {' '.join(str(error.orig).split())}") from None
        except exc.DatabaseError as error:
            session.rollback()
            raise self._database_error(error) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[Catalog]:
        """Group several calls into one transaction: all of them happen, or none.

        >>> with cat.batch():                       # doctest: +SKIP
        ...     cat.add_model(a); cat.add_model(b)
        """
        if self._active is not None:
            yield self
            return
        with self._session() as session:
            self._active = session
            try:
                yield self
            finally:
                self._active = None

    def close(self) -> None:
        self._engine.dispose()

    # ---- models ------------------------------------------------------------------------
    def _row(self, session: Session, name: str) -> ModelRow:
        from zoo._orm import ModelRow

        return _named_row(session, ModelRow, split_ref(name)[0], self._unknown)

    def _unknown(self, reader: Any, name: str) -> UnknownModelError:
        from zoo.records import missing_path

        if "://" in name:  # a hub reference where a catalog name goes: it is no file, and not yet a model
            return UnknownModelError(f"{name} is not in the catalog: a Hub model is registered first with "
                                     f"`zoo add {name}`; then use the name that prints (OWNER--REPO)", name=name)
        gone = missing_path(name)
        if gone is not None:  # a mistyped file, most likely: say so first
            return _unknown_name(reader, _models.c.name, name, UnknownModelError,
                                 gone + ", and no model of that name is in the catalog{hint}; check the path, "
                                 "or find models with `zoo search`")
        return _unknown_name(reader, _models.c.name, name, UnknownModelError,
                             "model {name!r} is not in the catalog{hint}. Find models with `zoo search`")

    def get(self, name: str) -> Model:
        """The model called `name` (``NAME@REV``: that revision of it); UnknownModelError names the closest ones.

        An earlier revision comes back named ``NAME@<revision id>`` with its own files and facts;
        the current one is the model itself, whatever `REV` called it.
        """
        base, wanted = split_ref(name)
        with self._reader() as reader:
            row = reader.execute(select(_models).where(_models.c.name == _text(base))).first()
            if row is None:
                raise self._unknown(reader, base)
            if wanted is not None:
                chosen = resolve(base, wanted, self._revision_rows(reader, row.id, row.revision))
                if not chosen.current:
                    return _past(base, chosen, _to_record(row))
            files = reader.execute(select(_artifacts).where(_artifacts.c.model_id == row.id)
                                   .order_by(_artifacts.c.id)).all()
            return _to_record(row, files)

    def exists(self, name: str) -> bool:
        base, wanted = split_ref(name)
        with self._reader() as reader:
            row = reader.execute(select(_models.c.id, _models.c.revision).where(_models.c.name == _text(base))).first()
            if row is None or wanted is None:
                return row is not None
            try:
                resolve(base, wanted, self._revision_rows(reader, row.id, row.revision))
            except UnknownRevisionError:
                return False
            return True

    def names(self) -> list[str]:
        with self._reader() as reader:
            return list(reader.scalars(select(_models.c.name).order_by(_models.c.name)))

    # ---- revisions ---------------------------------------------------------------------
    def revisions(self, name: str) -> list[Revision]:
        """Every revision the model had, oldest first; the current one has ``current`` set.

        Raises:
            UnknownModelError: no such model.
        """
        base, _ = split_ref(name)
        with self._reader() as reader:
            row = reader.execute(select(_models.c.id, _models.c.revision).where(_models.c.name == base)).first()
            if row is None:
                raise self._unknown(reader, base)
            return self._revision_rows(reader, row.id, row.revision)

    @staticmethod
    def _revision_rows(reader: Any, model_id: int, current: str | None) -> list[Revision]:
        rows = reader.execute(select(_revisions).where(_revisions.c.model_id == model_id)
                              .order_by(_revisions.c.created_at, _revisions.c.id)).all()
        return [_revision_record(r, current) for r in rows]

    def add_revision(self, name: str, revision: Revision) -> Revision:
        """Record an earlier revision of a model (one a lock file pins and this catalog never saw).

        A revision of that id already recorded is kept as it is and returned.
        """
        from zoo._orm import RevisionRow

        with self._session() as session:
            row = self._row(session, name)
            for known in row.revisions:
                if known.revision == revision.revision:
                    return _revision_record(known, row.revision)
            added = RevisionRow(revision=revision.revision, digest=revision.digest, tag=revision.tag,
                                source=revision.source, created_at=revision.created_at or time.time(),
                                files=[a.to_dict() for a in revision.files], meta=dict(revision.meta))
            row.revisions.append(added)
            session.flush()
            return _revision_record(added, row.revision)

    def _past_revision_row(self, session: Session, name: str) -> RevisionRow | None:
        """The revisions row `name` (``NAME@REV``) stands for when it is not the current one, else None."""
        base, wanted = split_ref(name)
        if wanted is None:
            return None
        row = self._row(session, base)
        chosen = resolve(base, wanted, [_revision_record(r, row.revision) for r in row.revisions])
        if chosen.current:
            return None
        return next(r for r in row.revisions if r.revision == chosen.revision)

    def _note_revision(self, session: Session, row: ModelRow, before: Model | None, model: Model) -> None:
        """Record the revision the model's files now are: the same one, or a new one (the old one kept)."""
        from zoo._orm import RevisionRow

        digest = content_digest(model.artifacts)
        known = {r.revision: r for r in row.revisions}
        current = known.get(row.revision) if row.revision else None
        tag = model.meta.get("version") if isinstance(model.meta.get("version"), str) else None
        if current is not None and current.digest == digest:
            if tag and not current.tag:
                current.tag = tag
            return
        wanted = model.revision or digest[:12]
        if current is not None and before is not None and not before.artifacts:
            # No files (a hub search result, a file scan is re-pointing): nothing to keep or fetch later.
            row.revisions.remove(current)
            del known[current.revision]
            wanted = digest[:12] if wanted == current.revision else wanted
        elif current is not None and before is not None:  # it stops being current: it keeps its files
            current.files, facts = _superseded(before)
            current.meta = {**(current.meta or {}), **facts}
        if wanted in known and known[wanted].digest != digest:
            wanted = digest[:12]  # an id the publisher reused for other files: the digest tells them apart
        chosen = known.get(wanted)
        if chosen is None:
            chosen = RevisionRow(revision=wanted, digest=digest, tag=tag, source=model.source,
                                 created_at=time.time(), meta={})
            row.revisions.append(chosen)
        chosen.files = None  # the current revision's files are the model's artifacts
        row.revision = chosen.revision

    def add_model(self, model: Model, *, replace: bool = False) -> Model:
        """Add a model with its artifacts; with `replace`, overwrite one of the same name.

        Replacing files with other ones (a sync of a changed index) adds a revision and keeps the
        old one (`revisions`, ``NAME@REV``); the same files keep their revision.
        """
        from zoo._orm import ArtifactRow, ModelRow, fill_artifact_row, fill_model_row

        _check_model(model)
        if "@" in model.name:
            raise CatalogError(f"model name {model.name!r} has an '@', which names a revision (NAME@REV); "
                               "choose a name without it")
        with self._session() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == model.name)).first()
            if row is not None and not replace:
                raise DuplicateModelError(
                    f"a model named {model.name!r} is already in the catalog; choose another name "
                    f"with --name, or remove it first with `zoo rm {model.name}`"
                )
            before = None
            if row is None:
                row = ModelRow(name=model.name)
                session.add(row)
            else:
                before = _to_record(row, row.artifacts)
            fill_model_row(row, model, search_keywords(model.name, model.tags))
            row.artifacts = []
            session.flush()  # delete the old artifact rows before inserting ones with the same keys
            for artifact in model.artifacts:
                artifact_row = ArtifactRow(role=artifact.role, filename=artifact.filename)
                fill_artifact_row(artifact_row, artifact)
                row.artifacts.append(artifact_row)
            self._note_revision(session, row, before, model)
            session.flush()
            return _to_record(row, row.artifacts)

    def add_models(self, models: Iterable[Model], *, replace: bool = False) -> int:
        """Add many models in one transaction (bulk loads, index syncs)."""
        count = 0
        with self.batch():
            for model in models:
                self.add_model(model, replace=replace)
                count += 1
        return count

    def update_model(self, name: str, **fields: Any) -> Model:
        """Change some fields of a model, e.g. `update_model("m", meta={...}, parameters=10)`."""
        from zoo._orm import fill_model_row

        name = split_ref(name)[0]  # a model's facts are the model's, whichever revision named it
        with self._session() as session:
            row = self._row(session, name)
            model = _to_record(row, row.artifacts)
            for key, value in fields.items():
                if key in ("name", "artifacts"):
                    raise CatalogError(f"update_model cannot change {key!r}; use add_model(replace=True)")
                if not hasattr(model, key):
                    raise CatalogError(f"models have no field {key!r}")
                setattr(model, key, InputSpec.from_dict(value) if key == "input" and isinstance(value, dict) else value)
            _check_model(model)
            fill_model_row(row, model, search_keywords(model.name, model.tags))
            session.flush()
            return _to_record(row, row.artifacts)

    def rename_model(self, name: str, new_name: str) -> Model:
        if "@" in new_name:
            raise CatalogError(f"model name {new_name!r} has an '@', which names a revision; choose another")
        with self._session() as session:
            if session.scalar(select(_models.c.id).where(_models.c.name == new_name)) is not None:
                raise DuplicateModelError(f"a model named {new_name!r} is already in the catalog")
            row = self._row(session, name)
            row.name = new_name
            row.keywords = search_keywords(new_name, row.tags or [])
            session.flush()
            return _to_record(row, row.artifacts)

    def remove_model(self, name: str) -> None:
        """Remove a model with its artifact and revision records (files on disk are left alone)."""
        with self._session() as session:
            session.delete(self._row(session, split_ref(name)[0]))

    # ---- artifacts ---------------------------------------------------------------------
    def put_artifact(self, name: str, artifact: Artifact) -> Artifact:
        """Insert or update one artifact of a model, keyed by (role, filename); all fields replaced."""
        from zoo._orm import ArtifactRow, fill_artifact_row

        with self._session() as session:
            past = self._past_revision_row(session, name)
            if past is not None:  # an earlier revision's file (`fetch NAME@REV`): kept with that revision
                kept = [a for a in (past.files or []) if (a.get("role"), a.get("filename")) != (artifact.role, artifact.filename)]
                past.files = kept + [artifact.to_dict()]
                return Artifact.from_dict(artifact.to_dict())
            row = self._row(session, name)
            before = _to_record(row, row.artifacts)
            match = next((a for a in row.artifacts
                          if a.role == artifact.role and a.filename == artifact.filename), None)
            if match is None:
                match = ArtifactRow(role=artifact.role, filename=artifact.filename)
                row.artifacts.append(match)
            fill_artifact_row(match, artifact)
            row.updated_at = time.time()
            session.flush()
            self._note_revision(session, row, before, _to_record(row, row.artifacts))
            return _artifact_record(match)

    def record_signature(self, name: str, by: str, check: dict[str, Any] | None) -> Model:
        """Record the outcome of checking `by`'s signature of a model ("publisher" or "zoo").

        `check` is a `zoo.signing.SignatureCheck.to_dict()`; None forgets it. The model's
        `signature_status` column follows in the same transaction.
        """
        with self._session() as session:
            past = self._past_revision_row(session, name)
            if past is not None:  # an earlier revision's files were checked: its verdict stays with it
                meta = dict(past.meta or {})
                checks = {k: v for k, v in (meta.get("signature") or {}).items() if k != by}
                meta["signature"] = {**checks, **({by: dict(check)} if check is not None else {})}
                past.meta = meta
                session.flush()
                return self.get(name)
            row = self._row(session, name)
            checks = dict(row.signature or {})
            if check is None:
                checks.pop(by, None)
            else:
                checks[by] = dict(check)
            row.signature = checks or None
            row.signature_status = _to_record(row).signature_status
            session.flush()
            return _to_record(row, row.artifacts)

    def remove_artifact(self, name: str, role: str, filename: str) -> None:
        with self._session() as session:
            past = self._past_revision_row(session, name)
            if past is not None:
                past.files = [a for a in (past.files or []) if (a.get("role"), a.get("filename")) != (role, filename)]
                return
            row = self._row(session, name)
            row.artifacts = [a for a in row.artifacts
                             if not (a.role == role and a.filename == filename)]

    def find_by_sha256(self, sha256: str) -> list[tuple[str, Artifact]]:
        """(model name, artifact) pairs whose file has this sha256: finds moved files."""
        return self._find_artifacts(_artifacts.c.sha256 == sha256)

    def find_published(self, sha256: str, size: int) -> list[tuple[str, Artifact]]:
        """(model name, artifact) pairs that may hold the same bytes as a file of this sha256 and size:
        a published sha256 or a fetched copy of it, or any other published checksum of a file of
        that size (or of unknown size), for the caller to check. Local models are left out."""
        same = or_(_artifacts.c.sha256 == sha256, _artifacts.c.checksum == f"sha256:{sha256}",
                   and_(_artifacts.c.checksum.is_not(None),
                        or_(_artifacts.c.size == size, _artifacts.c.size.is_(None))))
        return self._find_artifacts(and_(same, or_(_models.c.source.is_(None), _models.c.source != "local")))

    def find_by_path(self, path: str | os.PathLike) -> list[tuple[str, Artifact]]:
        """(model name, artifact) pairs registered at this path."""
        return self._find_artifacts(_artifacts.c.path == os.fspath(path))

    def _find_artifacts(self, condition) -> list[tuple[str, Artifact]]:
        stmt = (select(_models.c.name.label("model_name"), _artifacts)
                .join(_models, _models.c.id == _artifacts.c.model_id).where(condition))
        with self._reader() as reader:
            return [(row.model_name, _artifact_record(row)) for row in reader.execute(stmt)]

    # ---- search ------------------------------------------------------------------------
    def search(
        self,
        query: str | None = None,
        *,
        framework: str | None = None,
        task: str | None = None,
        dataset: str | None = None,
        tag: str | None = None,
        source: str | None = None,
        local: bool | None = None,
        limit: int | None = 20,
    ) -> list[Model]:
        """Models matching `query` (ranked full-text) and every filter given.

        >>> cat.search("resnet", framework="caffe", limit=5)   # doctest: +SKIP
        """
        query, task, dataset, tag, source = (_text(v) for v in (query, task, dataset, tag, source))
        plan = self._plan(query, self._filters(framework, task, dataset, tag, source, local))
        if plan is None:  # no word in the query that any back-end would index
            return []
        stmt, params, exact = plan.ids, plan.params, plan.exact
        if limit:
            stmt = stmt.limit(limit)
        with self._reader() as reader:
            ids = list(reader.scalars(stmt, params))
            if exact is not None:
                first = reader.scalar(exact)
                if first is not None:
                    ids = [first] + [i for i in ids if i != first]
                    ids = ids[:limit] if limit else ids
            if not ids:
                return []
            rows = reader.execute(select(_models).where(_models.c.id.in_(ids))).all()
            files: dict[int, list[Any]] = {}
            for artifact in reader.execute(select(_artifacts).where(_artifacts.c.model_id.in_(ids))
                                           .order_by(_artifacts.c.id)):
                files.setdefault(artifact.model_id, []).append(artifact)
            by_id = {row.id: _to_record(row, files.get(row.id, [])) for row in rows}
            return [by_id[i] for i in ids]

    def count(
        self,
        query: str | None = None,
        *,
        framework: str | None = None,
        task: str | None = None,
        dataset: str | None = None,
        tag: str | None = None,
        source: str | None = None,
        local: bool | None = None,
    ) -> int:
        """How many models `search` finds with no limit (every model, with no query nor filter):
        what a limited listing leaves out is the rest.

        >>> cat.count("resnet")   # doctest: +SKIP
        """
        plan = self._plan(query, self._filters(framework, task, dataset, tag, source, local))
        if plan is None:
            return 0
        with self._reader() as reader:
            counted = select(func.count()).select_from(plan.ids.order_by(None).subquery())
            return int(reader.scalar(counted, plan.params) or 0)

    def _plan(self, query: str | None, conditions: list) -> SearchPlan | None:
        """The ranked id select `search` and `count` share: the back-end's for a query, by name without one."""
        if query:
            return self._backend.search_plan(query, conditions)
        return SearchPlan(select(_models.c.id).where(*conditions).order_by(_models.c.name))

    @staticmethod
    def _filters(framework, task, dataset, tag, source, local) -> list:
        conditions = []
        if framework:
            conditions.append(_models.c.framework == framework.lower())
        if task:
            conditions.append(func.lower(_models.c.task) == task.lower())
        if dataset:
            conditions.append(func.lower(_models.c.dataset) == dataset.lower())
        if source:
            conditions.append(_models.c.source == source)
        if tag:
            # Tags are a JSON list; its text form holds each tag quoted.
            conditions.append(func.lower(_models.c.tags.cast(Text)).like(f'%"{tag.lower()}"%'))
        if local is not None:  # migration 0006's partial index answers the NOT EXISTS per candidate
            needed = _artifacts.c.model_id == _models.c.id, _artifacts.c.role != "onnx"
            anything = select(_artifacts.c.id).where(*needed).exists()
            missing = select(_artifacts.c.id).where(*needed, _artifacts.c.path.is_(None)).exists()
            is_local = anything & ~missing
            conditions.append(is_local if local else ~is_local)
        return conditions

    # ---- sources -----------------------------------------------------------------------
    def add_source(self, name: str, url: str, *, require_signature: bool | None = None,
                   signer: dict[str, Any] | None = None) -> SourceInfo:
        """Register a remote zoo index; re-adding a name updates its URL.

        `require_signature` and `signer` set the source's signature policy when given; left
        None, a re-added source keeps the policy it had (it is never dropped by accident).
        """
        from zoo._orm import SourceRow

        with self._session() as session:
            row = session.scalars(select(SourceRow).where(SourceRow.name == name)).first()
            if row is None:
                row = SourceRow(name=name, url=url, require_signature=False)
                session.add(row)
            elif row.url != url:
                row.url, row.etag = url, None
            if require_signature is not None:
                row.require_signature = require_signature
            if signer is not None:
                row.signer = signer or None  # {} clears it
            session.flush()
            return self._source_info(session, row)

    def _source_row(self, session: Session, name: str) -> SourceRow:
        from zoo._orm import SourceRow

        return _named_row(session, SourceRow, name, self._unknown_source)

    def _unknown_source(self, reader: Any, name: str) -> UnknownSourceError:
        return _unknown_name(reader, _sources.c.name, name, UnknownSourceError,
                             "source {name!r} is not registered{hint}. List them with `zoo source list`")

    def _source_info(self, reader: Any, row: Any) -> SourceInfo:
        models = reader.scalar(select(func.count(_models.c.id)).where(_models.c.source == row.name))
        return SourceInfo(row.name, row.url, row.etag, row.synced_at, models or 0,
                          bool(row.require_signature), dict(row.signer) if row.signer else None)

    def sources(self) -> list[SourceInfo]:
        with self._reader() as reader:
            rows = reader.execute(select(_sources).order_by(_sources.c.name)).all()
            return [self._source_info(reader, row) for row in rows]

    def get_source(self, name: str) -> SourceInfo:
        with self._reader() as reader:
            row = reader.execute(select(_sources).where(_sources.c.name == name)).first()
            if row is None:
                raise self._unknown_source(reader, name)
            return self._source_info(reader, row)

    def update_source(self, name: str, **fields: Any) -> SourceInfo:
        """Change a source's `url`, `etag` or `synced_at`."""
        with self._session() as session:
            row = self._source_row(session, name)
            for key, value in fields.items():
                if key not in ("url", "etag", "synced_at", "require_signature", "signer"):
                    raise CatalogError(f"sources have no field {key!r}")
                setattr(row, key, value)
            session.flush()
            return self._source_info(session, row)

    def delete_source(self, name: str) -> None:
        """Forget a source's row; its models stay (`zoo.sources.remove_source` removes or marks them first)."""
        with self._session() as session:
            session.delete(self._source_row(session, name))


def _named_row(session: Session, kind: type, name: str, unknown: Any) -> Any:
    """The ORM row of `kind` called `name`, or the error `unknown(session, name)` makes."""
    row = session.scalars(select(kind).where(kind.name == name)).first()
    if row is None:
        raise unknown(session, name)
    return row


def _unknown_name(reader: Any, column: Any, name: str, error: type, message: str) -> Any:
    """`error` for a name not in `column`, naming the closest names there (a field too)."""
    close = closest_names(name, reader.scalars(select(column)).all())
    hint = f"; closest: {', '.join(close)}" if close else ""
    return error(message.format(name=name, hint=hint), name=name, closest=close)


class CatalogRegistry:
    """The catalogs this process has open, one per (URL, builtins), so every call shares one engine.

    A catalog opened with ``builtins=False`` and one opened with the default are different catalogs
    here even at one URL: the first creates no built-in zoos, the second would.

    >>> REGISTRY.close_all()      # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, bool], Catalog] = {}

    def open(self, location: str | os.PathLike | Catalog | None = None, *, builtins: bool = True,
             create: bool = True) -> Catalog:
        """The open catalog at `location`, opened (created, upgraded) now if it is not yet.

        With ``create=False`` (what read-only commands use) a catalog file that does not exist yet is
        not made: the built-in zoos are served from memory instead, and nothing is written to disk.
        """
        if isinstance(location, Catalog):
            return location
        where = config.catalog_location(location)
        url = where.url
        if where.path is not None and not where.path.exists():
            if not create and (where.kind == "home" or where.path.parent.is_dir()):
                return self._in_memory(builtins)
            if where.kind == "home":  # zoo's own folder: made on first write, like ~/.cache/huggingface
                where.path.parent.mkdir(parents=True, exist_ok=True)
        catalog = self._open.get((url, builtins))
        if catalog is not None and catalog.is_sqlite:
            database = catalog._engine.url.database
            if database and database != ":memory:" and not os.path.exists(database):
                catalog.close()  # the file was deleted under us: start again
                catalog = None
        if catalog is None:
            catalog = Catalog(url, builtins=builtins)
            self._open[(url, builtins)] = catalog
        return catalog

    def _in_memory(self, builtins: bool) -> Catalog:
        """A catalog in memory holding only the built-in zoos: what a read shows before any catalog exists."""
        key = (IN_MEMORY, builtins)
        if key not in self._open:
            self._open[key] = Catalog(IN_MEMORY, builtins=builtins)
        return self._open[key]

    def close(self, location: str | os.PathLike | None = None) -> None:
        """Close and forget the catalogs open at `location` (its connections return to the server)."""
        url = config.catalog_url(location)
        for key in [k for k in self._open if k[0] == url]:
            self._open.pop(key).close()

    def close_all(self) -> None:
        """Close and forget every open catalog: the next `open` starts afresh, as a new process would."""
        while self._open:
            self._open.popitem()[1].close()


# The process's registry; `open_catalog` and `close_all` are its short forms.
REGISTRY = CatalogRegistry()


def open_catalog(location: str | os.PathLike | Catalog | None = None, *, builtins: bool = True,
                 create: bool = True) -> Catalog:
    """Open (creating or upgrading if needed) the catalog at a path or SQLAlchemy URL.

    Args:
        location: a file path, a SQLAlchemy URL, an open `Catalog` (returned as it is), or None for
            ``$ZOO_CATALOG``, else the project's ``catalog.db`` (the working folder's or a parent's),
            else the user's catalog in zoo's home (`zoo.config.catalog_location`).
        builtins: fill a new catalog with the built-in Caffe and TensorFlow zoo indexes.
        create: make the catalog file when it does not exist; False (reads) serves the built-in
            zoos from memory instead and writes nothing.

    Returns:
        The catalog, shared by every call with the same location in this process (`REGISTRY`).

    Raises:
        CatalogError: the location cannot be opened, is not a zoo catalog, cannot be written
            when it must be created or upgraded, or names a file in a folder that does not exist.
        CatalogVersionError: the catalog was written by a newer zoo.

    >>> cat = open_catalog("my-models.db")      # doctest: +SKIP
    """
    return REGISTRY.open(location, builtins=builtins, create=create)


def close_all() -> None:
    """Close every catalog this process opened (`REGISTRY.close_all`).

    Args:
        (none)

    Returns:
        None: every catalog is closed; the next `open_catalog` opens (and checks) it again.

    Raises:
        Nothing: closing a catalog whose server is gone only drops its pool.
    """
    REGISTRY.close_all()


def search(query: str | None = None, *, catalog: str | os.PathLike | Catalog | None = None,
           **filters: Any) -> list[Model]:
    """Search the catalog; see `Catalog.search` for the filters.

    Args:
        query: words to find (ranked full-text); None lists by name.
        catalog: a path, a SQLAlchemy URL or a `Catalog` (default ``$ZOO_CATALOG``).
        **filters: framework, task, dataset, tag, source, local, limit (see `Catalog.search`).

    Returns:
        The matching models, best first.

    Raises:
        CatalogError: the catalog cannot be opened or read.

    >>> [m.name for m in search("alexnet")]      # doctest: +SKIP
    ['bvlc_alexnet']
    """
    return open_catalog(catalog, create=False).search(query, **filters)


def info(name: str, *, catalog: str | os.PathLike | Catalog | None = None) -> Model:
    """Everything the catalog knows about one model.

    Args:
        name: the model's name.
        catalog: a path, a SQLAlchemy URL or a `Catalog` (default ``$ZOO_CATALOG``).

    Returns:
        The model with its artifacts, input spec and metadata.

    Raises:
        UnknownModelError: no such model (``closest`` holds names that look like it).
    """
    return open_catalog(catalog, create=False).get(name)


def list_models(*, catalog: str | os.PathLike | Catalog | None = None, **filters: Any) -> list[Model]:
    """Every model (optionally filtered), by name.

    Args:
        catalog: a path, a SQLAlchemy URL or a `Catalog` (default ``$ZOO_CATALOG``).
        **filters: framework, task, dataset, tag, source, local, limit (default: no limit).

    Returns:
        The models, by name.

    Raises:
        CatalogError: the catalog cannot be opened or read.
    """
    filters.setdefault("limit", None)
    return open_catalog(catalog, create=False).search(None, **filters)


def remove(name: str, *, catalog: str | os.PathLike | Catalog | None = None) -> None:
    """Remove a model from the catalog (its files stay on disk).

    Args:
        name: the model's name.
        catalog: a path, a SQLAlchemy URL or a `Catalog` (default ``$ZOO_CATALOG``).

    Returns:
        None.

    Raises:
        UnknownModelError: no such model.
        CatalogError: the catalog is read-only or cannot be written.
    """
    open_catalog(catalog).remove_model(name)
