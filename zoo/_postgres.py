"""The catalog on a PostgreSQL server: driver and pool options, serialized writes, tsvector search.

`zoo.catalog` uses `PostgreSQL` only for a `postgresql://` catalog; nothing here runs for SQLite.
Full-text search uses the `models.search` tsvector column and GIN index that migration 0003 adds.
"""
from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import URL, Engine, make_url

from zoo._backend import Backend, SearchPlan
from zoo._json import finite
from zoo._redact import mask_url
from zoo.errors import CatalogError
from zoo.schema import models

# psycopg 3: what `pip install 'zoo[postgres]'` brings; plain postgresql:// would mean psycopg2.
DRIVER = "postgresql+psycopg"
# Every write transaction takes this advisory lock first, as SQLite's BEGIN IMMEDIATE does: the
# catalog's writes read then write (is the name free? which rows does the source have?), and two
# of them interleaved on READ COMMITTED would fail on a unique key instead of waiting.
WRITE_LOCK_KEY = 0x7A6F6F_CA7A  # "zoo cata(log)"
# ts_rank weights for the tsvector's classes D, C, B, A (migration 0003): description; tags, task,
# dataset; keywords, architecture; name. The same order as SQLite's bm25 weights (zoo.schema).
RANK_WEIGHTS = "{0.1, 0.25, 0.5, 1.0}"
CONNECT_TIMEOUT_S = 10


def _json_dumps(value: Any) -> str:
    """JSON for jsonb columns: PostgreSQL refuses bare NaN/Infinity, so they are stored as strings."""
    return json.dumps(finite(value))


def is_postgresql(url: str) -> bool:
    return str(url).split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def create_engine(url: str) -> Engine:
    """An engine for a catalog server: psycopg 3, pooled ($ZOO_POOL_*), pre-pinged, writes serialized."""
    from sqlalchemy import create_engine as sqlalchemy_engine

    from zoo import config

    try:
        parsed = make_url(url)
    except ValueError as error:  # e.g. a port that is no number
        raise CatalogError(f"cannot open catalog {mask_url(url)!r}: it is not a URL of a catalog server "
                           f"({error}); write it like postgresql://HOST:5432/DATABASE") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=DRIVER)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in parsed.query:
        connect_args["application_name"] = "zoo"
    if "options" not in parsed.query:
        # A catalog query reads a few thousand rows at most: starting parallel workers for it (new
        # processes) costs more than they save, and most on a busy server.
        connect_args["options"] = "-c max_parallel_workers_per_gather=0"
    try:
        # No hstore columns: the dialect need not look the type up on every new process's first connection.
        engine = sqlalchemy_engine(parsed, pool_pre_ping=True, connect_args=connect_args, use_native_hstore=False,
                                   json_serializer=_json_dumps, **config.pool_options())
    except ImportError as error:
        raise CatalogError(
            f"catalog {mask_url(str(parsed))} needs the PostgreSQL driver ({error}); install it with: "
            "pip install 'zoo[postgres]'"
        ) from None

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        if connection.get_execution_options().get("zoo_write"):
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

    return engine


def server_error(message: str, where: str, url: URL) -> CatalogError | None:
    """One line with the fix for a server that cannot be reached or refuses us; None for others."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), message)
    if url.password:
        first = first.replace(url.password, "***")
    if "password authentication failed" in message or "no password supplied" in message:
        return CatalogError(
            f"catalog {where} refused the login ({first}); give the password in PGPASSWORD or "
            "~/.pgpass (or in the URL), and check the user name"
        )
    if re.search(r'database "[^"]*" does not exist', message):
        return CatalogError(
            f"catalog {where}: {first}; create it (createdb {url.database}) or fix the database "
            "name in ZOO_CATALOG / --catalog"
        )
    if "permission denied" in message:
        return CatalogError(
            f"catalog {where}: {first}; the first zoo command creates the tables and loads the "
            "built-in zoos: run it as the database's owner, then GRANT the team SELECT on its "
            "tables to search, and INSERT, UPDATE, DELETE and USAGE on its sequences to add and fetch"
        )
    if re.search(r"connection (is bad|failed|to server)|could not connect|timeout expired|"
                 r"failed to resolve host|could not translate host", message):
        return CatalogError(
            f"cannot reach catalog server {where} ({first}); check that it is running and the "
            "host/port in ZOO_CATALOG / --catalog"
        )
    return None


def tsquery(query: str) -> str | None:
    """A safe to_tsquery string: each word of `query` a prefix term, all of them required (AND).

    Words split at anything but letters and digits, as the indexed text is (and as SQLite's
    unicode61 tokenizer does): 'bvlc_alexnet' -> ('bvlc' <-> 'alexnet':*), a phrase.
    """
    terms = []
    for word in re.findall(r"\w+", query):
        parts = re.findall(r"[^\W_]+", word.lower())
        if parts:
            terms.append("(" + " <-> ".join(parts[:-1] + [parts[-1] + ":*"]) + ")")
    return " & ".join(terms) or None


MATCH = text("models.search @@ to_tsquery('simple', :tsq)")
# Normalization 1 divides by 1 + log(length), as bm25 favours the shorter of two matches.
RANK = text(f"ts_rank('{RANK_WEIGHTS}', models.search, to_tsquery('simple', :tsq), 1) DESC")


class PostgreSQL(Backend):
    """A catalog on a server: pooled psycopg 3 connections, writes serialized, ranked tsvector search."""

    search_mode = "tsvector"

    def create_engine(self, url: str) -> Engine:
        return create_engine(url)

    def rebuild_search_index(self, write_engine: Engine) -> None:
        # The tsvector is a generated column, always current; but after a bulk load the planner's
        # statistics lag until autovacuum comes by (without them a `local` filter can pick a nested
        # loop a hundred times slower), and the GIN index keeps the new rows in its pending list,
        # which every search reads through: VACUUM moves them into the index. (VACUUM cannot run
        # in a transaction; a login that does not own the tables gets a warning, not an error.)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM (ANALYZE) models, artifacts")

    def search_plan(self, query: str, conditions: list) -> SearchPlan | None:
        tsq = tsquery(query)
        if tsq is None:
            return None
        # The generated tsvector column and its GIN index (migration 0003), ranked by ts_rank.
        ids = select(models.c.id).where(MATCH, *conditions).order_by(RANK, models.c.name)
        exact = select(models.c.id).where(models.c.name == query.strip(), *conditions)
        return SearchPlan(ids, {"tsq": tsq}, exact)

    def explain(self, message: str) -> CatalogError | None:
        return server_error(message, self.where, self.engine.url)
