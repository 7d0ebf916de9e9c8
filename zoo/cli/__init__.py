"""Command line: parses arguments, calls the library, prints. One module per concern."""
from __future__ import annotations

import sys

from zoo.cli._app import cli

# Each module of commands registers them on `cli` when imported; `zoo.cli._app.COMMAND_MODULES`
# says which module holds which command, and the group imports it when the command is used.


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `zoo` console script."""
    try:
        cli.main(args=argv, prog_name="zoo")
    except BrokenPipeError:  # `zoo search | head`
        sys.exit(0)


__all__ = ["cli", "main"]
