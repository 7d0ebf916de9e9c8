"""The `zoo` click group, the option decorators every command shares, and the one way out to the terminal.

Everything a command prints goes through `echo`, `emit` or `table` here (and errors through
`UserError`, warnings through `_show_warning`): secrets in URLs are masked and terminal controls
that came from a model, an index or a file name are shown as escapes (`zoo._terminal`). JSON
output stays lossless: `json.dumps` already writes every control character as a ``\\u`` escape.
An exception nobody anticipated becomes one line naming a log file that holds its traceback.
"""
from __future__ import annotations

import errno
import json
import sys
import warnings
from typing import Any, Callable

import click

from zoo._json import finite
from zoo._redact import mask_secrets
from zoo._terminal import safe_line, safe_text

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Top-level modules of optional dependencies -> the zoo extra that installs them (pyproject.toml).
_EXTRAS = {"torch": "torch", "tensorflow": "tensorflow", "tf2onnx": "tensorflow", "keras": "tensorflow",
           "cv2": "caffe-check", "sklearn": "transfer", "matplotlib": "transfer", "PIL": "transfer",
           "psycopg": "postgres", "pyarrow": "parquet", "ray": "ray", "model_signing": "provenance",
           "OpenSSL": "provenance", "cryptography": "provenance", "cyclonedx": "provenance"}


def echo(message: Any = "", err: bool = False, nl: bool = True, one_line: bool = False) -> None:
    """click.echo of text made safe: secrets masked, terminal controls shown as escapes.

    `one_line` escapes newlines and tabs too: for lines that quote a name (a file name may hold a newline).
    """
    text = mask_secrets(str(message))
    click.echo(safe_line(text) if one_line else safe_text(text), err=err, nl=nl)


class UserError(click.ClickException):
    """A ZooError on its way out: one line on stderr, exit code 1."""

    exit_code = 1
    prefix = "error: "

    def show(self, file=None) -> None:
        # One line even when a driver's message has several (psycopg's "connection failed ...\n\tIs
        # the server running ..."); never a secret, never a terminal control.
        click.echo(self.prefix + safe_line(" ".join(mask_secrets(self.message).split())), err=True)


class InternalError(UserError):
    """An exception zoo did not anticipate: one line, the traceback in a log file, exit code 1."""

    prefix = ""

    @classmethod
    def of(cls, exc: BaseException) -> InternalError:
        import traceback

        from zoo.logs import write

        log = write(f"zoo {' '.join(sys.argv[1:])}: internal error", "".join(traceback.format_exception(exc)))
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = f"the traceback is in {log}" if log else "no log folder could be written for its traceback"
        return cls(f"internal error: {type(exc).__name__}: {first}; {where}")


def _os_error(exc: OSError) -> UserError:
    """An OSError no code path turned into a ZooError: still one line that names the file."""
    what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if exc.errno in _DISK_FULL:
        return UserError(f"no room left to write ({what}); free some space and run the same command again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write or read there ({what}); check the path and its permissions, or "
                         f"point --output / --cache-dir / ZOO_CACHE / ZOO_CATALOG somewhere writable")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG):
        return UserError(f"a path zoo was given or uses is not usable ({what}); check the paths given and "
                         f"--cache-dir / ZOO_CACHE / ZOO_CATALOG / ZOO_HOME")
    return InternalError.of(exc)


class _SafeStream:
    """A text stream that passes what click writes (its own usage errors) through `safe_text`."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(safe_text(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (a layer that is not a cut point, a model converted again) as one safe line."""
    echo(f"warning: {' '.join(mask_secrets(str(message)).split())}", err=True)


# command -> module that defines it. Commands are imported on first use, so `zoo search` loads
# only the catalog commands (every millisecond of start-up counts there).
COMMAND_MODULES = {
    **dict.fromkeys(["search", "info", "add", "scan", "edit", "list", "rm", "source"], "zoo.cli.catalog"),
    **dict.fromkeys(["fetch", "verify", "lock"], "zoo.cli.fetch"),
    "init": "zoo.cli.home",
    "index": "zoo.cli.publish",
    "convert": "zoo.cli.convert",
    **dict.fromkeys(["layers", "extract"], "zoo.cli.extract"),
    **dict.fromkeys(["train", "sweep", "walkthrough"], "zoo.cli.transfer"),
    "cache": "zoo.cli.cache",
    "pretrain": "zoo.cli.pretrain",
    "predict": "zoo.cli.predict",
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
        from zoo.errors import ZooError, command_line_spelling

        try:
            with command_line_spelling():  # errors name --flags, not Python keywords
                return super().invoke(ctx)
        except ZooError as exc:
            raise UserError(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, BrokenPipeError,
                KeyboardInterrupt):
            raise
        except MemoryError:
            raise UserError("out of memory; give a smaller input, batch or model, or run it on a machine with "
                            "more memory") from None
        except ModuleNotFoundError as exc:  # an optional dependency imported without zoo.errors.require
            extra = _EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise InternalError.of(exc) from None
            raise UserError(f"{exc.name} is needed for this and is not installed; install it with: "
                            f"pip install 'zoo[{extra}]'") from None
        except OSError as exc:
            raise _os_error(exc) from None
        except Exception as exc:  # noqa: BLE001  the rule: no traceback reaches the user
            raise InternalError.of(exc) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's main, with its own messages (usage errors quote the arguments) made terminal-safe
        and Python warnings shown as one line each."""
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            if not standalone_mode:
                return super().main(args, prog_name, complete_var, False, **extra)
            try:
                result = super().main(args, prog_name, complete_var, False, **extra)
            except click.ClickException as exc:
                exc.show(file=_SafeStream(click.get_text_stream("stderr")))
                sys.exit(exc.exit_code)
            except click.exceptions.Abort:
                echo("interrupted", err=True)
                sys.exit(130)
            sys.exit(result if isinstance(result, int) else 0)
        finally:
            warnings.showwarning = previous


def _print_where(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from zoo.cli._where import where_text

    click.echo(where_text())
    ctx.exit()


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    from zoo.logs import set_verbose

    set_verbose(value)


@click.group(cls=ZooGroup, context_settings=CONTEXT)
@click.version_option(None, "-V", "--version", prog_name="zoo", package_name="zoo")
@click.option("--where", is_flag=True, expose_value=False, is_eager=True, callback=_print_where,
              help="Say which catalog and cache are in use, and why; then exit.")
@click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_verbose,
              help="Show TensorFlow, onnxruntime, torch and Ray output (else in the log file) [env ZOO_LOG_LEVEL=INFO].")
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
    """-q/--quiet, the same on every command: no progress bars, notes or per-step tables; only the
    result and errors (an error is never quiet)."""
    return click.option("-q", "--quiet", is_flag=True,
                        help="Quiet: no progress bars, notes or per-step tables; only the result and errors.")(func)


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
        # ensure_ascii writes every control as \u escape; DEL is the one it leaves raw.
        click.echo(json.dumps(_printable(data), indent=2, allow_nan=False).replace("\x7f", "\\u007f"))
    elif text is not None:
        rendered = text() if callable(text) else text
        if rendered:
            echo(rendered)


def skipped_lines(skipped: list[dict[str, Any]], total: int | None = None, limit: int = 5,
                  where: str = "left out of the results") -> list[str]:
    """Text lines naming unreadable inputs that were skipped: the count, then the first `limit`."""
    if not skipped:
        return []
    of = f" of {total}" if total else ""
    lines = [f"skipped {len(skipped)}{of} inputs that cannot be read ({where}):"]
    lines += [f"  {safe_line(s.get('path'))}: {safe_line(s.get('reason'))}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (--json lists all of them)")
    return lines


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain left-aligned text table; each cell on one line, terminal controls shown as escapes."""
    cells = [[("" if c is None else safe_line(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
