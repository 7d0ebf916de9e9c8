"""Command line: parses arguments, calls the library, prints. One module per concern."""
from __future__ import annotations

import atexit
import sys

from zoo.cli._app import cli

# Each module of commands registers them on `cli` when imported; `zoo.cli._app.COMMAND_MODULES`
# says which module holds which command, and the group imports it when the command is used.


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `zoo` console script."""
    atexit.unregister(_before_shutdown)  # once, however often main runs in one process
    atexit.register(_before_shutdown)
    try:
        cli.main(args=argv, prog_name="zoo")
    except BrokenPipeError:  # `zoo search | head`
        sys.exit(0)


def _before_shutdown() -> None:
    """Close the open catalogs, then spare Python's shutdown its collections over every object left.

    The process is ending: what the imports made (SQLAlchemy's classes and caches, ~50 ms of `zoo
    search` to walk) goes back to the system without a walk. Objects freed by their reference count
    still are at shutdown (files flush and close); only those in reference cycles are left, so the
    catalogs, whose connections must end properly (SQLite's checkpoint), are closed here first.
    """
    import gc

    catalog = sys.modules.get("zoo.catalog")
    if catalog is not None:
        catalog.close_all()
    gc.freeze()


__all__ = ["cli", "main"]
