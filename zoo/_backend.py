"""What a catalog back-end provides to `zoo.catalog.Catalog`: its engine, its search, its index upkeep.

`Catalog` holds everything the back-ends share (schema and migrations, models, artifacts,
sources, transactions); a `Backend` holds what differs. This base is the catalog on any other
SQLAlchemy database: a plain engine and LIKE search over the text columns. SQLite's (WAL, read-only
media, FTS5) is `zoo._sqlite.SQLite`; PostgreSQL's (pool, serialized writes, tsvector) is
`zoo._postgres.PostgreSQL`.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select

from zoo._redact import mask_url
from zoo.errors import CatalogError
from zoo.schema import models

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session


class SearchPlan:
    """How one back-end answers one query: the ranked id select, its parameters, and a select of
    the model whose name is the query exactly (it goes first whatever its rank), if the ranking may
    not put it there by itself. (A plain class: `zoo search` imports this, a dataclass costs more.)"""

    __slots__ = ("ids", "params", "exact")

    def __init__(self, ids: Any, params: dict[str, Any] | None = None, exact: Any = None) -> None:
        self.ids, self.params, self.exact = ids, params or {}, exact


class Damaged(str):
    """The text of a JSON column that does not parse (a catalog edited by hand, a torn write)."""


def lenient_json(text: str) -> Any:
    """JSON columns stored as text: a value that does not parse is kept as `Damaged`, not raised.

    One bad row must not make `list`, `search` and `info` fail for everyone sharing the catalog:
    `zoo.catalog` shows the model with ``meta["damaged"]`` saying which columns are unreadable.
    (PostgreSQL's json columns cannot hold malformed JSON; its driver decodes them itself.)
    """
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return Damaged(text)


def query_words(query: str) -> list[str]:
    """The words of a user's query, as every back-end splits it."""
    return re.findall(r"\w+", query)


class Backend:
    """A catalog on a database SQLAlchemy knows, with no full-text index: LIKE search."""

    read_only = False  # True when the database can be read but not written (SQLite on read-only media)
    search_mode = "like"

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = self.create_engine(url)

    def create_engine(self, url: str) -> Engine:
        from sqlalchemy import create_engine

        try:
            return create_engine(url, json_deserializer=lenient_json)
        except CatalogError:
            raise
        except Exception as error:  # bad URL or missing DB driver
            shown = mask_url(url)  # parse errors quote the URL, password and all
            raise CatalogError(f"cannot open catalog {shown!r}: {str(error).replace(url, shown)}") from None

    @property
    def where(self) -> str:
        """How messages name the catalog (never with its password)."""
        return self.engine.url.render_as_string(hide_password=True)

    # ---- search ------------------------------------------------------------------------
    def prepare_search(self, write_engine: Engine) -> None:
        """Make the search index usable when the catalog opens (nothing to do without one)."""

    def sync_search(self, session: Session) -> None:
        """Bring the index up to date with the models a write transaction touched, inside it."""
        session.info.pop("touched_models", None)

    def rebuild_search_index(self, write_engine: Engine) -> None:
        """Re-index every model (after bulk writes outside the ORM)."""

    def search_plan(self, query: str, conditions: list) -> SearchPlan | None:
        """Models whose text columns hold every word of `query`; None when nothing can match."""
        words = query_words(query)
        if not words:
            return None
        ids = select(models.c.id).where(*conditions)
        for word in words:
            pattern = f"%{word.lower()}%"
            ids = ids.where(or_(*(func.lower(column).like(pattern) for column in (
                models.c.name, models.c.description, models.c.architecture, models.c.task,
                models.c.dataset, models.c.keywords))))
        ids = ids.order_by(
            (func.lower(models.c.name) == query.strip().lower()).desc(),
            func.lower(models.c.name).like(f"%{query.strip().lower()}%").desc(),
            models.c.name,
        )
        return SearchPlan(ids)

    # ---- errors ------------------------------------------------------------------------
    def explain(self, message: str) -> CatalogError | None:
        """One line with the fix for an error this back-end knows; None for the others."""
        return None
