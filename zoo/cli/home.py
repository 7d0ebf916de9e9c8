"""Home commands: `zoo init` (a project catalog) and what `zoo --where` / `zoo info --paths` print."""
from __future__ import annotations

import os
from pathlib import Path

import click

from zoo.cli._app import cli, emit, json_option
from zoo.cli._where import where_text  # noqa: F401  (`zoo info --paths` prints it too)


@cli.command("init")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@json_option
def init(folder: Path | None, as_json: bool) -> None:
    """Make a project catalog, FOLDER/catalog.db (default: here), with the built-in zoos.

    zoo commands run in FOLDER or any folder below it use it (found as git finds .git), unless
    --catalog or ZOO_CATALOG says otherwise; the cache stays shared (ZOO_HOME, or ZOO_CACHE).

    \b
    Example:
        zoo init
        zoo init ~/projects/pets
    """
    from zoo.catalog import open_catalog
    from zoo.config import PROJECT_CATALOG
    from zoo.errors import CatalogError

    folder = (folder or Path.cwd()).expanduser().absolute()
    if not folder.is_dir():
        raise CatalogError(f"folder {folder} does not exist; create it first (mkdir -p {folder})")
    path = folder / PROJECT_CATALOG
    existed = path.exists()
    catalog = open_catalog(path)
    data = {"catalog": str(path), "created": not existed, "models": catalog.count()}
    text = (f"{'found' if existed else 'created'} the project catalog {path} ({data['models']} models); "
            f"zoo commands in {folder} and below use it")
    if os.environ.get("ZOO_CATALOG"):
        text += "\nnote: ZOO_CATALOG is set, so zoo uses that catalog here until you unset it"
    emit(data, as_json, text)
