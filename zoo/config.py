"""Where the catalog and the cache live, and whether the network may be used.

Nothing here touches the disk at import time: folders are resolved when first needed.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

DEFAULT_CATALOG = "catalog.db"


def catalog_url(location: str | os.PathLike | None = None) -> str:
    """SQLAlchemy URL for a catalog given as a path, a URL, $ZOO_CATALOG or the default."""
    location = location or os.environ.get("ZOO_CATALOG") or DEFAULT_CATALOG
    location = os.fspath(location)
    if "://" in location:
        return location
    return "sqlite:///" + str(Path(location).expanduser().absolute())


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
    """The cache folder: `override`, $ZOO_CACHE, or the platform's user cache folder for zoo."""
    if override:
        return Path(override).expanduser().absolute()
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_cache_dir("zoo"))


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
