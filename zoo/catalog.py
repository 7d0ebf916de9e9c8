"""The catalog database: models, their artifacts and remote sources (SQLAlchemy 2).

SQLite by default (WAL mode, busy timeout, `BEGIN IMMEDIATE` for writes so two processes can
share one file); a team shares one on PostgreSQL (`zoo._postgres`: tsvector search, pooled,
writes serialized); any other SQLAlchemy URL works with LIKE search. The
schema is versioned with Alembic (`zoo/migrations`): an older catalog is upgraded in place, a
newer one is refused. Reads run SQLAlchemy Core on `zoo.schema`'s tables; writes use the ORM
classes of `zoo._orm`, imported only when something is written (the ORM import alone would cost
`zoo search` ~80 ms).
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from sqlalchemy import Text, and_, create_engine, event, exc, func, or_, select, text

from zoo import config
from zoo._redact import mask_url
from zoo.errors import (
    CatalogError,
    CatalogVersionError,
    DuplicateModelError,
    UnknownModelError,
    UnknownSourceError,
)
from zoo.records import FRAMEWORKS, Artifact, InputSpec, Model
from zoo.schema import FTS_COLUMNS, FTS_WEIGHTS
from zoo.schema import artifacts as _artifacts
from zoo.schema import models as _models
from zoo.schema import models_fts as _models_fts
from zoo.schema import sources as _sources

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session

    from zoo._orm import ModelRow, SourceRow

# Alembic revisions this zoo knows, oldest first; the last is the schema this code writes.
SCHEMA_REVISIONS = ("0001", "0002", "0003")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]
BUSY_TIMEOUT_MS = 30_000
# zoo_state key saying whether the built-in zoos were loaded: "pending" from the transaction that
# creates the schema until the one that loads them, so a creation cut short (kill -9) is finished
# by the next open; "loaded" after; "skipped" for catalogs created with builtins=False.
BUILTINS_STATE = "builtins"


@dataclass
class SourceInfo:
    """A remote zoo index the catalog follows."""

    name: str
    url: str
    etag: str | None = None
    synced_at: float | None = None
    models: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": mask_url(self.url), "etag": self.etag,
                "synced_at": self.synced_at, "models": self.models}


@dataclass
class SyncStats:
    """What a source sync changed."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)  # removed upstream but fetched: kept, marked

    def to_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "updated": self.updated, "removed": self.removed,
                "marked": self.marked}


def _keywords(name: str, tags: Iterable[str]) -> str:
    """Extra words for search: 'resnet50.caffe' -> 'resnet 50 caffe', so 'resnet 50' finds it."""
    parts = re.findall(r"[A-Za-z]+|\d+", name)
    return " ".join(parts + [str(t) for t in tags])


def _to_record(row: Any, artifact_rows: Iterable[Any] = ()) -> Model:
    """A Model from a models row (Core Row or ORM object) and its artifact rows."""
    return Model(
        name=row.name,
        framework=row.framework,
        format=row.format,
        task=row.task,
        dataset=row.dataset,
        architecture=row.architecture,
        description=row.description,
        license=row.license,
        tags=list(row.tags or []),
        source=row.source,
        homepage=row.homepage,
        paper=row.paper,
        input=InputSpec.from_dict(row.input_spec),
        parameters=row.parameters,
        metrics=dict(row.metrics or {}),
        meta=dict(row.meta or {}),
        removed_upstream=bool(row.removed_upstream),
        artifacts=[_artifact_record(a) for a in artifact_rows],
    )


def _artifact_record(row: Any) -> Artifact:
    return Artifact(
        role=row.role, filename=row.filename, urls=list(row.urls or []), size=row.size,
        checksum=row.checksum, extract=row.extract, path=row.path, sha256=row.sha256,
        meta=dict(row.meta or {}),
    )


def _check_model(model: Model) -> None:
    if not model.name or not model.name.strip():
        raise CatalogError("a model needs a non-empty name; pass one with --name")
    if model.framework not in FRAMEWORKS:
        raise CatalogError(
            f"model {model.name!r}: framework {model.framework!r} is not one of "
            f"{', '.join(FRAMEWORKS)}"
        )


def _read_only_file(database: str | None) -> bool:
    """Whether a SQLite catalog file exists but it or its folder cannot be written.

    access(2) reports read-only mounts and immutable files even to root, who ignores mode bits.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    path = Path(database)
    if not path.is_file():
        return False
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def _sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL opens, None in memory.

    With `uri=true` the database is a SQLite URI (`file:/data/c.db`, `file:c.db`) whose path names
    the file: taken as a path, `file:/data/c.db` would make a folder `file:` in the working directory.
    """
    from urllib.parse import unquote, urlsplit

    from sqlalchemy.util import asbool

    database = url.database
    if not database or database == ":memory:":
        return None
    if not (database.startswith("file:") and asbool(url.query.get("uri", False))):
        return Path(database)
    path = unquote(urlsplit(database).path)  # SQLite decodes %XX in a URI's path
    if not path or path == ":memory:" or url.query.get("mode") == "memory":
        return None
    return Path(path)


def _connect_read_only(path: Path):
    """A read-only SQLite connection to `path`, for catalogs on read-only media.

    `mode=ro` reads a WAL catalog whose -wal/-shm files exist; without them (a cleanly closed
    catalog) SQLite cannot create the -shm, and `immutable=1` reads the file as it is.
    """
    import sqlite3
    from urllib.parse import quote

    base = "file:" + quote(str(path.absolute()))
    connection = sqlite3.connect(f"{base}?mode=ro", uri=True, check_same_thread=False)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return connection
    except sqlite3.OperationalError:
        connection.close()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        # immutable=1 would silently ignore the committed transactions the -wal holds.
        raise sqlite3.OperationalError(
            f"unable to open database file: its write-ahead log {wal.name} cannot be read on "
            "read-only media; open the catalog once where it is writable to merge it")
    return sqlite3.connect(f"{base}?immutable=1", uri=True, check_same_thread=False)


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


def _fts_query(query: str) -> str | None:
    """A safe FTS5 query: every word of the user's query as a quoted prefix term (AND)."""
    words = re.findall(r"\w+", query)
    if not words:
        return None
    return " ".join(f'"{w}"*' for w in words)


class Catalog:
    """A catalog of models, opened with `open_catalog`. Each method is one transaction."""

    def __init__(self, url: str, *, builtins: bool = True):
        self.url = url
        self._builtins = builtins
        self.read_only = False  # set when the file or its folder cannot be written: reads only
        self._active: Session | None = None
        self._engine = self._create_engine(url)
        self._write_engine = self._engine.execution_options(zoo_write=True)
        self._fts = False
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

    def _create_engine(self, url: str):
        from zoo import _postgres

        try:
            if _postgres.is_postgresql(url):
                return _postgres.create_engine(url)
            engine = create_engine(url)
        except CatalogError:
            raise
        except Exception as error:  # bad URL or missing DB driver
            shown = mask_url(url)  # parse errors quote the URL, password and all
            raise CatalogError(f"cannot open catalog {shown!r}: {str(error).replace(url, shown)}") from None
        if engine.dialect.name == "sqlite" and _read_only_file(engine.url.database):
            # Read-only media or permissions: SQLite's default open would need to create the
            # -shm/-wal files beside it and fails even to read, so open it read-only instead.
            path = Path(engine.url.database)
            engine.dispose()
            engine = create_engine(url, creator=lambda: _connect_read_only(path))
            self.read_only = True
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            memory = not database or database == ":memory:"
            path = _sqlite_file(engine.url)
            if path is not None:
                if path.is_dir():
                    raise CatalogError(
                        f"catalog {path} is a folder; give a file path such as {path / 'catalog.db'}"
                    )
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise CatalogError(
                        f"cannot create the catalog's folder {path.parent}: {error.strerror}; "
                        "choose another location with --catalog or ZOO_CATALOG"
                    ) from None

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection, _record):
                # Take transactions out of the driver's hands so writes can BEGIN IMMEDIATE.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA foreign_keys=ON")
                if memory or self.read_only:
                    cursor.close()
                    return
                try:  # WAL lets readers go on while another process writes
                    cursor.execute("PRAGMA journal_mode=WAL")
                except Exception:  # read-only folder or not a database: reported by _prepare
                    pass
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _on_begin(connection):
                # A write takes the lock up front: a deferred transaction that must later upgrade
                # its read lock can fail with "database is locked" without waiting.
                write = connection.get_execution_options().get("zoo_write")
                connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def _prepare(self) -> None:
        """Create, upgrade or accept the schema; refuse a catalog newer than this zoo."""
        try:
            with self._engine.connect() as connection:
                revision = self._revision(connection)
        except exc.DatabaseError as error:
            raise self._database_error(error) from None
        if revision is not None and revision not in SCHEMA_REVISIONS:
            raise CatalogVersionError(
                f"catalog {self._where} has schema revision {revision}, newer than this zoo "
                f"understands (up to {SCHEMA_HEAD}); upgrade zoo (pip install -U zoo) or use "
                "another catalog with --catalog"
            )
        created = revision is None
        if revision != SCHEMA_HEAD:
            if self.read_only:
                raise self._read_only_error(
                    f"has schema revision {revision}, older than this zoo's {SCHEMA_HEAD}, and "
                    "cannot be upgraded in place")
            self._migrate(created)
        if self.is_sqlite:
            self._prepare_search()
        if self._builtins and not self.read_only and self._builtins_pending():
            self._load_builtins()

    def _prepare_search(self) -> None:
        """Use FTS5 when this process's SQLite has it; build or refresh the index if needed.

        TensorFlow ships its own SQLite without FTS5, and when it is imported before the sqlite3
        module the process uses that one. Such a process searches with LIKE and marks the index
        stale when it writes; the next process that has FTS5 rebuilds it.
        """
        try:
            with self._engine.connect() as connection:
                connection.exec_driver_sql("CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts5_probe USING fts5(x)")
                connection.exec_driver_sql("DROP TABLE temp.fts5_probe")
        except exc.OperationalError:
            self._fts = False
            return
        with self._engine.connect() as connection:
            exists = connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'models_fts'").first() is not None
            stale = connection.exec_driver_sql(
                "SELECT value FROM zoo_state WHERE key = 'search_stale'").first() is not None
        self._fts = True
        if exists and not stale:
            return
        if self.read_only:
            self._fts = False  # a stale index would miss models: search with LIKE
            return
        try:
            with self._write_engine.begin() as connection:
                connection.exec_driver_sql(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS models_fts USING fts5({FTS_COLUMNS}, "
                    "tokenize='unicode61', prefix='2 3 4 5 6 7 8')")
                connection.exec_driver_sql("DELETE FROM models_fts")
                connection.exec_driver_sql(
                    f"INSERT INTO models_fts(rowid, {FTS_COLUMNS}) SELECT id, {FTS_COLUMNS} FROM models")
                connection.exec_driver_sql("DELETE FROM zoo_state WHERE key = 'search_stale'")
        except exc.OperationalError as error:
            if "readonly" not in str(error) and "read-only" not in str(error):
                raise self._database_error(error) from None
            self._fts = exists  # a read-only catalog searches the index it has

    def rebuild_search_index(self) -> None:
        """Re-index every model for full-text search (after bulk writes outside the ORM)."""
        if self.read_only:
            raise self._read_only_error("cannot have its search index rebuilt")
        if self.is_postgresql:
            # The tsvector is a generated column, always current; but the planner's statistics
            # lag a bulk load until autovacuum comes by, and without them a `local` filter can
            # pick a nested loop a hundred times slower.
            with self._engine.connect() as connection:
                connection.exec_driver_sql("ANALYZE models, artifacts")
                connection.commit()
            return
        if not self.is_sqlite:
            return
        with self._write_engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO zoo_state(key, value) VALUES ('search_stale', '1') "
                "ON CONFLICT(key) DO NOTHING")
        self._prepare_search()

    def _sync_search(self, session: Session) -> None:
        """Bring the FTS rows of the models this transaction touched up to date."""
        touched = session.info.pop("touched_models", None)
        if not touched or not self.is_sqlite:
            return
        if not self._fts:
            session.execute(text("INSERT INTO zoo_state(key, value) VALUES ('search_stale', '1') "
                                 "ON CONFLICT(key) DO NOTHING"))
            return
        ids = ",".join(str(int(i)) for i in touched)
        session.execute(text(f"DELETE FROM models_fts WHERE rowid IN ({ids})"))
        session.execute(text(f"INSERT INTO models_fts(rowid, {FTS_COLUMNS}) "
                             f"SELECT id, {FTS_COLUMNS} FROM models WHERE id IN ({ids})"))

    @property
    def _where(self) -> str:
        if self.is_sqlite and self._engine.url.database:
            return str(self._engine.url.database)
        return self._engine.url.render_as_string(hide_password=True)

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
                    f"{self._where} has zoo-like tables but no schema version; it was not written "
                    "by zoo. Use another catalog with --catalog"
                )
            if tables and self.is_sqlite:
                raise CatalogError(
                    f"{self._where} is a SQLite database but not a zoo catalog (tables: "
                    f"{', '.join(sorted(tables)[:5])}); point --catalog at a zoo catalog or a new file"
                )
            return None
        row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None

    def _migrate(self, created: bool) -> None:
        from zoo.migrations import upgrade

        try:
            with self._write_engine.begin() as connection:
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
        if self.is_postgresql:
            from zoo._postgres import server_error

            explained = server_error(message, self._where, self._engine.url)
            if explained is not None:
                return explained
            message = " ".join(message.split())
        if "not a database" in message or "file is encrypted" in message:
            return CatalogError(
                f"{self._where} is not a SQLite catalog ({message}); point --catalog or "
                "ZOO_CATALOG at a zoo catalog file or at a new path"
            )
        if "readonly" in message or "read-only" in message or "unable to open" in message:
            return CatalogError(
                f"catalog {self._where} cannot be written ({message}); choose a writable "
                "location with --catalog or ZOO_CATALOG"
            )
        if "locked" in message:
            return CatalogError(
                f"catalog {self._where} stayed locked by another process for "
                f"{BUSY_TIMEOUT_MS // 1000} s; try again when it finishes"
            )
        return CatalogError(f"catalog {self._where}: {message}")

    def _read_only_error(self, what: str) -> CatalogError:
        return CatalogError(
            f"catalog {self._where} is read-only (the file or its folder cannot be written) and "
            f"{what}; reads work, but to change it copy it somewhere writable and point "
            "--catalog or ZOO_CATALOG at the copy"
        )

    @staticmethod
    def _builtins_state(reader: Any) -> str | None:
        return reader.execute(text("SELECT value FROM zoo_state WHERE key = :key"),
                              {"key": BUILTINS_STATE}).scalar()

    def _builtins_pending(self) -> bool:
        """Whether the built-in zoos still have to be loaded (a creation was cut short)."""
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
            for source, entries in by_source.items():
                self.add_source(source, f"builtin:{source}")
                self.replace_source_models(source, entries)
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
            self._sync_search(session)
            session.commit()
        except exc.IntegrityError as error:
            session.rollback()
            raise CatalogError(f"catalog {self._where}: {' '.join(str(error.orig).split())}") from None
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

        row = session.scalars(select(ModelRow).where(ModelRow.name == name)).first()
        if row is None:
            raise self._unknown(session, name)
        return row

    def _unknown(self, reader: Any, name: str) -> UnknownModelError:
        names = reader.scalars(select(_models.c.name)).all()
        close = closest_names(name, names)
        hint = f"; closest: {', '.join(close)}" if close else ""
        return UnknownModelError(
            f"model {name!r} is not in the catalog{hint}. Find models with `zoo search`"
        )

    def get(self, name: str) -> Model:
        """The model called `name`; UnknownModelError names the closest ones."""
        with self._reader() as reader:
            row = reader.execute(select(_models).where(_models.c.name == name)).first()
            if row is None:
                raise self._unknown(reader, name)
            files = reader.execute(select(_artifacts).where(_artifacts.c.model_id == row.id)
                                   .order_by(_artifacts.c.id)).all()
            return _to_record(row, files)

    def exists(self, name: str) -> bool:
        with self._reader() as reader:
            return reader.scalar(select(_models.c.id).where(_models.c.name == name)) is not None

    def names(self) -> list[str]:
        with self._reader() as reader:
            return list(reader.scalars(select(_models.c.name).order_by(_models.c.name)))

    def add_model(self, model: Model, *, replace: bool = False) -> Model:
        """Add a model with its artifacts; with `replace`, overwrite one of the same name."""
        from zoo._orm import ArtifactRow, ModelRow, fill_artifact_row, fill_model_row

        _check_model(model)
        with self._session() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == model.name)).first()
            if row is not None and not replace:
                raise DuplicateModelError(
                    f"a model named {model.name!r} is already in the catalog; choose another name "
                    f"with --name, or remove it first with `zoo rm {model.name}`"
                )
            if row is None:
                row = ModelRow(name=model.name)
                session.add(row)
            fill_model_row(row, model, _keywords(model.name, model.tags))
            row.artifacts = []
            session.flush()  # delete the old artifact rows before inserting ones with the same keys
            for artifact in model.artifacts:
                artifact_row = ArtifactRow(role=artifact.role, filename=artifact.filename)
                fill_artifact_row(artifact_row, artifact)
                row.artifacts.append(artifact_row)
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
            fill_model_row(row, model, _keywords(model.name, model.tags))
            session.flush()
            return _to_record(row, row.artifacts)

    def rename_model(self, name: str, new_name: str) -> Model:
        with self._session() as session:
            if session.scalar(select(_models.c.id).where(_models.c.name == new_name)) is not None:
                raise DuplicateModelError(f"a model named {new_name!r} is already in the catalog")
            row = self._row(session, name)
            row.name = new_name
            row.keywords = _keywords(new_name, row.tags or [])
            session.flush()
            return _to_record(row, row.artifacts)

    def remove_model(self, name: str) -> None:
        """Remove a model and its artifact records (files on disk are left alone)."""
        with self._session() as session:
            session.delete(self._row(session, name))

    # ---- artifacts ---------------------------------------------------------------------
    def put_artifact(self, name: str, artifact: Artifact) -> Artifact:
        """Insert or update one artifact of a model, keyed by (role, filename); all fields replaced."""
        from zoo._orm import ArtifactRow, fill_artifact_row

        with self._session() as session:
            row = self._row(session, name)
            match = next((a for a in row.artifacts
                          if a.role == artifact.role and a.filename == artifact.filename), None)
            if match is None:
                match = ArtifactRow(role=artifact.role, filename=artifact.filename)
                row.artifacts.append(match)
            fill_artifact_row(match, artifact)
            row.updated_at = time.time()
            session.flush()
            return _artifact_record(match)

    def remove_artifact(self, name: str, role: str, filename: str) -> None:
        with self._session() as session:
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
        fts = _fts_query(query) if query else None
        if query and fts is None:
            return []
        conditions = self._filters(framework, task, dataset, tag, source, local)
        exact = None
        tsq = None
        if fts and self.is_postgresql:
            from zoo import _postgres

            tsq = _postgres.tsquery(query)
            if tsq is None:
                return []
        if tsq:
            # The generated tsvector column and its GIN index (migration 0003), ranked by ts_rank.
            stmt = (select(_models.c.id).where(_postgres.MATCH, *conditions)
                    .order_by(_postgres.RANK, _models.c.name))
            exact = select(_models.c.id).where(_models.c.name == query.strip(), *conditions)
        elif fts and self._fts:
            # bm25 is the cost of a search (about 1.5 us per matching row), so the FTS table is
            # ranked on its own when nothing else narrows the rows, and joined only for filters.
            rank = text(f"bm25(models_fts, {FTS_WEIGHTS})")
            if conditions:
                stmt = (select(_models.c.id).join(_models_fts, _models_fts.c.rowid == _models.c.id)
                        .where(text("models_fts MATCH :fts"), *conditions).order_by(rank))
            else:
                stmt = select(_models_fts.c.rowid).where(text("models_fts MATCH :fts")).order_by(rank)
            # An exact name is what the user meant: it goes first whatever its bm25.
            exact = select(_models.c.id).where(_models.c.name == query.strip(), *conditions)
        elif fts:
            stmt = select(_models.c.id).where(*conditions)
            for word in re.findall(r"\w+", query):
                pattern = f"%{word.lower()}%"
                stmt = stmt.where(or_(*(func.lower(column).like(pattern) for column in (
                    _models.c.name, _models.c.description, _models.c.architecture, _models.c.task,
                    _models.c.dataset, _models.c.keywords))))
            stmt = stmt.order_by(
                (func.lower(_models.c.name) == query.strip().lower()).desc(),
                func.lower(_models.c.name).like(f"%{query.strip().lower()}%").desc(),
                _models.c.name,
            )
        else:
            stmt = select(_models.c.id).where(*conditions).order_by(_models.c.name)
        if limit:
            stmt = stmt.limit(limit)
        with self._reader() as reader:
            params = {"tsq": tsq} if tsq else {"fts": fts} if fts and self._fts else {}
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
        if local is not None:
            needed = _artifacts.c.model_id == _models.c.id, _artifacts.c.role != "onnx"
            anything = select(_artifacts.c.id).where(*needed).exists()
            missing = select(_artifacts.c.id).where(*needed, _artifacts.c.path.is_(None)).exists()
            is_local = anything & ~missing
            conditions.append(is_local if local else ~is_local)
        return conditions

    def count(self) -> int:
        with self._reader() as reader:
            return reader.scalar(select(func.count(_models.c.id))) or 0

    # ---- sources -----------------------------------------------------------------------
    def add_source(self, name: str, url: str) -> SourceInfo:
        """Register a remote zoo index; re-adding a name updates its URL."""
        from zoo._orm import SourceRow

        with self._session() as session:
            row = session.scalars(select(SourceRow).where(SourceRow.name == name)).first()
            if row is None:
                row = SourceRow(name=name, url=url)
                session.add(row)
            elif row.url != url:
                row.url, row.etag = url, None
            session.flush()
            return self._source_info(session, row)

    def _source_row(self, session: Session, name: str) -> SourceRow:
        from zoo._orm import SourceRow

        row = session.scalars(select(SourceRow).where(SourceRow.name == name)).first()
        if row is None:
            raise self._unknown_source(session, name)
        return row

    def _unknown_source(self, reader: Any, name: str) -> UnknownSourceError:
        names = reader.scalars(select(_sources.c.name)).all()
        close = closest_names(name, names)
        hint = f"; closest: {', '.join(close)}" if close else ""
        return UnknownSourceError(
            f"source {name!r} is not registered{hint}. List them with `zoo source list`"
        )

    def _source_info(self, reader: Any, row: Any) -> SourceInfo:
        models = reader.scalar(select(func.count(_models.c.id)).where(_models.c.source == row.name))
        return SourceInfo(row.name, row.url, row.etag, row.synced_at, models or 0)

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
                if key not in ("url", "etag", "synced_at"):
                    raise CatalogError(f"sources have no field {key!r}")
                setattr(row, key, value)
            session.flush()
            return self._source_info(session, row)

    def remove_source(self, name: str) -> SyncStats:
        """Forget a source and its models, keeping (and marking) the ones already fetched."""
        with self.batch():
            stats = self.replace_source_models(name, [])
            with self._session() as session:
                session.delete(self._source_row(session, name))
        return stats

    def replace_source_models(self, source: str, models: list[Model]) -> SyncStats:
        """Make the catalog's models of `source` match `models`, in one transaction.

        New entries are added, changed ones updated (local paths and hashes of fetched files are
        kept), entries gone upstream are deleted, or marked `removed_upstream` if fetched.
        """
        from zoo._orm import ArtifactRow, ModelRow, fill_artifact_row, fill_model_row

        stats = SyncStats()
        with self._session() as session:
            existing = {row.name: row for row in session.scalars(
                select(ModelRow).where(ModelRow.source == source))}
            wanted = {m.name for m in models}
            for model in models:
                model.source = source
                _check_model(model)
                row = existing.get(model.name)
                if row is None:
                    clash = session.scalar(select(_models.c.source).where(_models.c.name == model.name))
                    if clash is not None:
                        raise DuplicateModelError(
                            f"source {source!r} lists {model.name!r}, which the catalog already has "
                            f"from {clash!r}; rename one of them"
                        )
                    row = ModelRow(name=model.name)
                    session.add(row)
                    stats.added.append(model.name)
                    fill_model_row(row, model, _keywords(model.name, model.tags))
                    for artifact in model.artifacts:
                        artifact_row = ArtifactRow(role=artifact.role, filename=artifact.filename)
                        fill_artifact_row(artifact_row, artifact)
                        row.artifacts.append(artifact_row)
                    continue
                before = _to_record(row, row.artifacts).to_dict()
                local = {(a.role, a.filename): a for a in row.artifacts}
                fill_model_row(row, model, _keywords(model.name, model.tags))
                row.removed_upstream = False
                kept = []
                for artifact in model.artifacts:
                    artifact_row = local.pop((artifact.role, artifact.filename), None)
                    path = sha256 = None
                    if artifact_row is not None:
                        path, sha256 = artifact_row.path, artifact_row.sha256
                    else:
                        artifact_row = ArtifactRow(role=artifact.role, filename=artifact.filename)
                    fill_artifact_row(artifact_row, artifact)
                    if path and artifact_row.path is None:
                        artifact_row.path, artifact_row.sha256 = path, sha256
                    kept.append(artifact_row)
                # Converted models are zoo's own: they survive an upstream change of the entry.
                kept += [a for key, a in local.items() if key[0] == "onnx"]
                row.artifacts = kept
                if _to_record(row, row.artifacts).to_dict() != before:
                    stats.updated.append(model.name)
            for name, row in existing.items():
                if name in wanted:
                    continue
                fetched = any(a.path for a in row.artifacts)
                if fetched:
                    if not row.removed_upstream:
                        row.removed_upstream = True
                        stats.marked.append(name)
                else:
                    session.delete(row)
                    stats.removed.append(name)
            session.flush()
        return stats


_OPEN: dict[str, Catalog] = {}


def open_catalog(location: str | os.PathLike | Catalog | None = None, *, builtins: bool = True) -> Catalog:
    """Open (creating or upgrading if needed) the catalog at a path or SQLAlchemy URL.

    `None` means $ZOO_CATALOG, else ``catalog.db`` in the working directory. A new catalog is
    filled with the built-in Caffe and TensorFlow zoo indexes.

    >>> cat = open_catalog("my-models.db")      # doctest: +SKIP
    """
    if isinstance(location, Catalog):
        return location
    url = config.catalog_url(location)
    catalog = _OPEN.get(url)
    if catalog is not None and catalog.is_sqlite:
        database = catalog._engine.url.database
        if database and database != ":memory:" and not os.path.exists(database):
            catalog.close()  # the file was deleted under us: start again
            catalog = None
    if catalog is None:
        catalog = Catalog(url, builtins=builtins)
        _OPEN[url] = catalog
    return catalog


def search(query: str | None = None, *, catalog: str | os.PathLike | Catalog | None = None,
           **filters: Any) -> list[Model]:
    """Search the catalog; see `Catalog.search` for the filters.

    >>> [m.name for m in search("alexnet")]      # doctest: +SKIP
    ['bvlc_alexnet']
    """
    return open_catalog(catalog).search(query, **filters)


def info(name: str, *, catalog: str | os.PathLike | Catalog | None = None) -> Model:
    """Everything the catalog knows about one model."""
    return open_catalog(catalog).get(name)


def list_models(*, catalog: str | os.PathLike | Catalog | None = None, **filters: Any) -> list[Model]:
    """Every model (optionally filtered), by name."""
    filters.setdefault("limit", None)
    return open_catalog(catalog).search(None, **filters)


def remove(name: str, *, catalog: str | os.PathLike | Catalog | None = None) -> None:
    """Remove a model from the catalog (its files stay on disk)."""
    open_catalog(catalog).remove_model(name)
