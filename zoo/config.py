"""Where the catalog and the cache live, and whether the network may be used.

The home (``$ZOO_HOME``, else the platform's user data folder) holds the user's catalog and the
cache; ``$ZOO_CATALOG`` / ``$ZOO_CACHE`` override either. A project keeps its own catalog beside
its code: `zoo init` makes ``./catalog.db``, and commands run in that folder or any folder below it
find it as git finds ``.git``. `catalog_location` says which catalog is in use and why (`zoo --where`).

Nothing here touches the disk at import time: folders are resolved when first needed.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

# The file name of a catalog in a project folder (`zoo init`) and in the home.
PROJECT_CATALOG = "catalog.db"
DEFAULT_CATALOG = PROJECT_CATALOG  # kept for code written when ./catalog.db was the default


def home() -> Path:
    """zoo's home: ``$ZOO_HOME``, else the platform's user data folder (``~/.local/share/zoo``); not created here."""
    if os.environ.get("ZOO_HOME", "").strip():
        return Path(os.environ["ZOO_HOME"]).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_data_dir("zoo", appauthor=False))


def find_project_catalog(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest ``catalog.db`` in `start` (default: the working folder) or one of its parents."""
    try:
        folder = Path(start or os.getcwd()).absolute()
    except FileNotFoundError:  # the working folder was deleted under us
        return None
    for candidate in (folder, *folder.parents):
        path = candidate / PROJECT_CATALOG
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class CatalogLocation:
    """Which catalog is in use: its URL, its file (None for a server), and why that one.

    `kind` is "given" (``--catalog`` or a ``catalog=`` argument), "env" (``$ZOO_CATALOG``),
    "project" (a ``catalog.db`` found from the working folder up) or "home" (the user's catalog).
    """

    url: str
    path: Path | None
    kind: str
    why: str


def _url(location: str) -> str:
    if "://" in location:
        return location
    return "sqlite:///" + str(Path(location).expanduser().absolute())


def _file(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    database = url[len(prefix):]
    return Path(database) if database and database != ":memory:" else None


def catalog_location(location: str | os.PathLike | None = None) -> CatalogLocation:
    """The catalog to use: `location`, else $ZOO_CATALOG, else the project's, else the home's.

    Args:
        location: a path or SQLAlchemy URL given by the caller (``--catalog``), or None.

    Returns:
        Its URL, its file when it is one, and why it was chosen (`CatalogLocation`).
    """
    env = os.environ.get("ZOO_CATALOG") or None
    if location:
        location = os.fspath(location)
        url = _url(location)
        if env and _url(env) == url:  # the CLI passes $ZOO_CATALOG as --catalog's value
            return CatalogLocation(url, _file(url), "env", "set by ZOO_CATALOG")
        return CatalogLocation(url, _file(url), "given", "given with --catalog")
    if env:
        url = _url(env)
        return CatalogLocation(url, _file(url), "env", "set by ZOO_CATALOG")
    project = find_project_catalog()
    if project is not None:
        return CatalogLocation(_url(str(project)), project, "project",
                               f"the project catalog found from {Path.cwd()} (made by `zoo init`)")
    path = home() / PROJECT_CATALOG
    why = ("the user catalog in ZOO_HOME" if os.environ.get("ZOO_HOME", "").strip()
           else "the user catalog in zoo's home, the platform's user data folder (set ZOO_HOME to move it)")
    return CatalogLocation(_url(str(path)), path, "home", why)


def catalog_url(location: str | os.PathLike | None = None) -> str:
    """SQLAlchemy URL of the catalog in use (see `catalog_location`)."""
    return catalog_location(location).url


def where(catalog: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """Which catalog, cache and home are in use and why (`zoo --where`, `zoo info --paths`).

    Args:
        catalog: a catalog given with ``--catalog``, if any.
        cache: a cache folder given with ``--cache-dir``, if any.

    Returns:
        ``{"catalog": {...}, "cache": {...}, "home": {...}}``, each with ``path`` and ``why``; the
        catalog's ``url`` too, and ``exists`` (a read does not create it). A cache left where zoo
        kept it before it had a home is named under ``"legacy_cache"``.
    """
    from zoo._redact import mask_url

    location = catalog_location(catalog)
    shown = str(location.path) if location.path is not None else mask_url(location.url)
    exists = location.path.exists() if location.path is not None else True
    cache_path, cache_why = cache_location(cache)
    home_why = "set by ZOO_HOME" if os.environ.get("ZOO_HOME", "").strip() else "the platform's user data folder"
    found: dict[str, dict[str, str]] = {
        "catalog": {"path": shown, "url": mask_url(location.url), "kind": location.kind, "why": location.why,
                    "exists": "yes" if exists else "no (a write creates it; reads show the built-in zoos)"},
        "cache": {"path": str(cache_path), "why": cache_why},
        "home": {"path": str(home()), "why": home_why},
    }
    legacy = legacy_cache_dir()
    if not cache and not os.environ.get("ZOO_CACHE") and legacy != cache_path and (legacy / "models").is_dir():
        found["legacy_cache"] = {"path": str(legacy), "why": (
            f"where zoo kept its cache before it had a home; files cataloged there still work, or move it: "
            f"mv {legacy} {cache_path}")}
    return found


# Connection-pool settings for a catalog on a database server (PostgreSQL): env var -> default.
POOL_SETTINGS = {"pool_size": ("ZOO_POOL_SIZE", 5), "max_overflow": ("ZOO_POOL_MAX_OVERFLOW", 10),
                 "pool_timeout": ("ZOO_POOL_TIMEOUT", 30), "pool_recycle": ("ZOO_POOL_RECYCLE", 1800)}


def pool_options() -> dict[str, int]:
    """SQLAlchemy pool arguments for a server catalog, from $ZOO_POOL_* (invalid values refused)."""
    from zoo.errors import CatalogError

    options = {}
    for option, (variable, default) in POOL_SETTINGS.items():
        raw = os.environ.get(variable, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = -1
        if value < 0:
            raise CatalogError(f"{variable}={raw!r} is not a whole number >= 0; "
                               f"unset it or set it like {variable}={default}")
        options[option] = value
    return options


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: `override`, $ZOO_CACHE, or ``cache`` in zoo's home."""
    return cache_location(override)[0]


def cache_location(override: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The cache folder and why that one (`zoo --where`)."""
    if override:
        return Path(override).expanduser().absolute(), "given with --cache-dir"
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]).expanduser().absolute(), "set by ZOO_CACHE"
    return home() / "cache", "the cache in zoo's home"


def legacy_cache_dir() -> Path:
    """Where the cache lived before zoo had a home (the platform's user cache folder)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("zoo", appauthor=False))


def offline() -> bool:
    """True when $ZOO_OFFLINE asks never to touch the network."""
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def version() -> str:
    """zoo's version, from the installed package's metadata (one place: pyproject.toml).

    Read on first use, not at import: `zoo search` should not pay for scanning installed packages.
    """
    from importlib import metadata

    try:
        return metadata.version("zoo")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
