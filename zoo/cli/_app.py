"""The `zoo` click group and the option decorators every command shares."""
from __future__ import annotations

import json
from typing import Any, Callable

import click

from zoo._json import finite
from zoo._redact import mask_secrets

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UserError(click.ClickException):
    """A ZooError on its way out: one line on stderr, exit code 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        # One line even when a driver's message has several (psycopg's "connection failed ...\n\tIs
        # the server running ..."); never a secret.
        click.echo(f"error: {' '.join(mask_secrets(self.message).split())}", err=True)


# command -> module that defines it. Commands are imported on first use, so `zoo search` loads
# only the catalog commands (every millisecond of start-up counts there).
COMMAND_MODULES = {
    **dict.fromkeys(["search", "info", "add", "scan", "list", "rm", "source"], "zoo.cli.catalog"),
    **dict.fromkeys(["fetch", "verify", "lock"], "zoo.cli.fetch"),
    "init": "zoo.cli.home",
    "index": "zoo.cli.publish",
    "convert": "zoo.cli.convert",
    **dict.fromkeys(["layers", "extract"], "zoo.cli.extract"),
    **dict.fromkeys(["train", "sweep", "walkthrough"], "zoo.cli.transfer"),
    "cache": "zoo.cli.cache",
    "pretrain": "zoo.cli.pretrain",
    **dict.fromkeys(["sign", "lineage", "bom"], "zoo.cli.provenance"),
}


class ZooGroup(click.Group):
    """The top-level group: loads commands lazily, turns ZooErrors into one line and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            import importlib

            importlib.import_module(COMMAND_MODULES[name])
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        from zoo.errors import ZooError

        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise UserError(str(exc)) from None


def _print_where(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from zoo.cli._where import where_text

    click.echo(where_text())
    ctx.exit()


@click.group(cls=ZooGroup, context_settings=CONTEXT)
@click.version_option(None, "-V", "--version", prog_name="zoo", package_name="zoo")
@click.option("--where", is_flag=True, expose_value=False, is_eager=True, callback=_print_where,
              help="Say which catalog and cache are in use, and why; then exit.")
def cli() -> None:
    """zoo: find, fetch, convert, cut and freeze pretrained models for transfer learning.

    \b
    Example:
        zoo search resnet --framework caffe
        zoo info bvlc_alexnet
    """


def json_option(func: Callable) -> Callable:
    """--json: print machine-readable JSON instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def catalog_option(func: Callable) -> Callable:
    """--catalog / $ZOO_CATALOG: a catalog file path or any SQLAlchemy URL."""
    return click.option(
        "--catalog",
        envvar="ZOO_CATALOG",
        metavar="PATH|URL",
        help="Catalog file or SQLAlchemy URL [env ZOO_CATALOG; default: the project's catalog.db "
             "(this folder or a parent, see `zoo init`), else the one in ZOO_HOME].",
    )(func)


def quiet_option(func: Callable) -> Callable:
    """--quiet: no progress bars or chatter, only results and errors."""
    return click.option("-q", "--quiet", is_flag=True, help="No progress output.")(func)


def cache_option(func: Callable) -> Callable:
    """--cache-dir / $ZOO_CACHE: where fetched and converted files go."""
    return click.option(
        "--cache-dir",
        envvar="ZOO_CACHE",
        type=click.Path(file_okay=False),
        help="Cache folder [env ZOO_CACHE; default: cache/ in ZOO_HOME].",
    )(func)


def _printable(value: Any) -> Any:
    """`value` made valid JSON with no secrets: NaN/Infinity become strings, URLs are masked."""
    return finite(value, _printable_leaf)


def _printable_leaf(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_secrets(value if isinstance(value, str) else str(value))


def emit(data: Any, as_json: bool, text: Callable[[], str] | str | None = None) -> None:
    """Print `data` as JSON, or the human text (a string or a function that renders it).

    Either way, credentials in URLs are masked; JSON is strict (no bare NaN or Infinity).
    """
    if as_json:
        click.echo(json.dumps(_printable(data), indent=2, allow_nan=False))
    elif text is not None:
        rendered = text() if callable(text) else text
        if rendered:
            click.echo(mask_secrets(rendered))


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain left-aligned text table."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
