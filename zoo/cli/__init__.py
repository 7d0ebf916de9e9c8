"""Command line: parses arguments, calls the library, prints. One module per concern."""
from __future__ import annotations

import sys

from zoo.cli._app import cli

# Each module registers its commands on `cli` when imported; they import nothing heavy.
from zoo.cli import catalog as _catalog  # noqa: F401,E402  search info add scan list rm source

for _optional in ("fetch", "convert", "extract", "transfer", "pretrain"):
    try:
        __import__(f"zoo.cli.{_optional}")
    except ModuleNotFoundError as _exc:  # a concern not built yet
        if _exc.name != f"zoo.cli.{_optional}":
            raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `zoo` console script."""
    try:
        cli.main(args=argv, prog_name="zoo")
    except BrokenPipeError:  # `zoo search | head`
        sys.exit(0)


__all__ = ["cli", "main"]
