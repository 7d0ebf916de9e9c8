"""The catalog on SQLite: pragmas, read-only media, and the FTS5 search index zoo keeps itself.

WAL mode and a busy timeout let processes share one file; writes take the lock up front (`BEGIN
IMMEDIATE`). A file that it or its folder cannot write opens read-only. `models_fts` is kept by the
catalog after every write rather than by triggers: TensorFlow ships a SQLite without FTS5, and a
process that imports it first searches with LIKE and marks the index stale; the next process with
FTS5 rebuilds it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, exc, select, text

from zoo._backend import Backend, SearchPlan, lenient_json, query_words
from zoo.errors import CatalogError
from zoo.schema import FTS_COLUMNS, FTS_WEIGHTS, models, models_fts

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.orm import Session

BUSY_TIMEOUT_MS = 30_000
_MARK_STALE = ("INSERT INTO zoo_state(key, value) VALUES ('search_stale', '1') "
               "ON CONFLICT(key) DO NOTHING")


def read_only_file(database: str | None) -> bool:
    """Whether a SQLite catalog file exists but it or its folder cannot be written.

    access(2) reports read-only mounts and immutable files even to root, who ignores mode bits.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    path = Path(database)
    if not path.is_file():
        return False
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def database_file(url: URL) -> Path | None:
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


def connect_read_only(path: Path):
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


def fts_query(query: str) -> str | None:
    """A safe FTS5 query: every word of the user's query as a quoted prefix term (AND)."""
    words = query_words(query)
    if not words:
        return None
    return " ".join(f'"{w}"*' for w in words)


class SQLite(Backend):
    """A catalog file: WAL, busy timeout, BEGIN IMMEDIATE for writes, FTS5 search when available."""

    def __init__(self, url: str) -> None:
        self.fts = False  # FTS5 usable in this process, and the index current
        super().__init__(url)

    @property
    def search_mode(self) -> str:
        return "fts5" if self.fts else "like"

    @property
    def where(self) -> str:
        return str(self.engine.url.database) if self.engine.url.database else super().where

    def create_engine(self, url: str) -> Engine:
        from sqlalchemy import create_engine, make_url

        if make_url(url).database in (None, "", ":memory:"):
            # One database for every thread: SQLAlchemy's default gives each thread its own, empty one.
            from sqlalchemy.pool import StaticPool

            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            engine = super().create_engine(url)
        if read_only_file(engine.url.database):
            # Read-only media or permissions: SQLite's default open would need to create the
            # -shm/-wal files beside it and fails even to read, so open it read-only instead.
            path = Path(engine.url.database)
            engine.dispose()
            engine = create_engine(url, creator=lambda: connect_read_only(path), json_deserializer=lenient_json)
            self.read_only = True
        database = engine.url.database
        memory = not database or database == ":memory:"
        path = database_file(engine.url)
        if path is not None:
            if path.is_dir():
                raise CatalogError(f"catalog {path} is a folder; give a file path such as {path / 'catalog.db'}")
            if not path.parent.is_dir():
                # A mistyped ZOO_CATALOG must not grow folders and a fresh, empty catalog.
                raise CatalogError(
                    f"catalog {path}: its folder {path.parent} does not exist; create it first "
                    f"(mkdir -p {path.parent}) or point --catalog / ZOO_CATALOG at a file in an existing folder"
                )
        read_only = self.read_only

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            # Take transactions out of the driver's hands so writes can BEGIN IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            if memory or read_only:
                cursor.close()
                return
            try:  # WAL lets readers go on while another process writes
                cursor.execute("PRAGMA journal_mode=WAL")
            except Exception:  # read-only folder or not a database: reported when the schema is read
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

    # ---- the FTS5 index ------------------------------------------------------------------
    def prepare_search(self, write_engine: Engine) -> None:
        """Use FTS5 when this process's SQLite has it; build or refresh the index if needed."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts5_probe USING fts5(x)")
                connection.exec_driver_sql("DROP TABLE temp.fts5_probe")
        except exc.OperationalError:
            self.fts = False
            return
        with self.engine.connect() as connection:
            exists = connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'models_fts'").first() is not None
            stale = connection.exec_driver_sql(
                "SELECT value FROM zoo_state WHERE key = 'search_stale'").first() is not None
        self.fts = True
        if exists and not stale:
            return
        if self.read_only:
            self.fts = False  # a stale index would miss models: search with LIKE
            return
        try:
            with write_engine.begin() as connection:
                connection.exec_driver_sql(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS models_fts USING fts5({FTS_COLUMNS}, "
                    "tokenize='unicode61', prefix='2 3 4 5 6 7 8')")
                connection.exec_driver_sql("DELETE FROM models_fts")
                connection.exec_driver_sql(
                    f"INSERT INTO models_fts(rowid, {FTS_COLUMNS}) SELECT id, {FTS_COLUMNS} FROM models")
                connection.exec_driver_sql("DELETE FROM zoo_state WHERE key = 'search_stale'")
        except exc.OperationalError as error:
            if "readonly" not in str(error) and "read-only" not in str(error):
                raise
            self.fts = exists  # a read-only catalog searches the index it has

    def sync_search(self, session: Session) -> None:
        """Bring the FTS rows of the models this transaction touched up to date."""
        touched = session.info.pop("touched_models", None)
        if not touched:
            return
        if not self.fts:
            session.execute(text(_MARK_STALE))
            return
        ids = ",".join(str(int(i)) for i in touched)
        session.execute(text(f"DELETE FROM models_fts WHERE rowid IN ({ids})"))
        session.execute(text(f"INSERT INTO models_fts(rowid, {FTS_COLUMNS}) "
                             f"SELECT id, {FTS_COLUMNS} FROM models WHERE id IN ({ids})"))

    def rebuild_search_index(self, write_engine: Engine) -> None:
        with write_engine.begin() as connection:
            connection.exec_driver_sql(_MARK_STALE)
        self.prepare_search(write_engine)

    def search_plan(self, query: str, conditions: list) -> SearchPlan | None:
        if not self.fts:
            return super().search_plan(query, conditions)
        fts = fts_query(query)
        if fts is None:
            return None
        # bm25 is the cost of a search (about 1.5 us per matching row), so the FTS table is
        # ranked on its own when nothing else narrows the rows, and joined only for filters.
        rank = text(f"bm25(models_fts, {FTS_WEIGHTS})")
        if conditions:
            ids = (select(models.c.id).join(models_fts, models_fts.c.rowid == models.c.id)
                   .where(text("models_fts MATCH :fts"), *conditions).order_by(rank))
        else:
            ids = select(models_fts.c.rowid).where(text("models_fts MATCH :fts")).order_by(rank)
        # An exact name is what the user meant: it goes first whatever its bm25.
        exact = select(models.c.id).where(models.c.name == query.strip(), *conditions)
        return SearchPlan(ids, {"fts": fts}, exact)
