"""Writes go only where asked: an output never overwrites an input, and folders are not made in silence.

`prepare` is called for every file or folder a user names for zoo to write (``zoo extract
--output``, ``zoo sweep --plot``, ``zoo walkthrough --out``) and for the catalog file
(``ZOO_CATALOG``, ``--catalog``): an output that is one of the command's inputs is refused
before any work (it would be replaced by its own features), and missing parent folders outside
the working directory are created with a warning naming them, so a typo such as
``--output /hmoe/me/f.npy`` does not quietly build a tree somewhere else.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo.atomic import write_error
from zoo.errors import InputError


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file (links and relative spellings included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(output: str | os.PathLike, inputs: Iterable[Any], option: str = "--output") -> None:
    """Refuse writing `output` when it is one of the `inputs` (paths; other values are ignored)."""
    if not os.path.exists(output):
        return  # every input exists: a new file cannot be one of them
    for value in inputs:
        if isinstance(value, (str, os.PathLike)) and os.path.exists(value) and same_file(output, value):
            raise InputError(f"{option} {output} is also an input of this command; writing it would destroy the "
                             f"input: give another {option} path")


def prepare(path: str | os.PathLike, what: str, *, folder: bool = False, inputs: Iterable[Any] = ()) -> list[str]:
    """Make `path` ready to be written; the folders created for it (outside the working directory: warned).

    `folder` says `path` is itself a folder to create (else its parent is). Refuses a `path` that
    is one of `inputs`.
    """
    target = Path(path).expanduser().absolute()
    check_not_an_input(target, inputs, what)
    try:
        return make_folders(target if folder else target.parent, what, target)
    except OSError as exc:
        raise write_error(exc, target) from None


def make_folders(wanted: Path, what: str, target: Path) -> list[str]:
    """Create `wanted` and its missing parents; the ones created. Warns when they lie outside the
    working directory. OSError when the file system refuses."""
    missing = []
    current = wanted
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    if not missing:
        return []
    wanted.mkdir(parents=True, exist_ok=True)
    outermost = missing[-1]
    if not _inside(outermost, Path.cwd()):
        below = " and the folders below it" if len(missing) > 1 else ""
        warnings.warn(f"created {outermost}{below} for {what} {target}, as it did not exist", stacklevel=3)
    return [str(p) for p in reversed(missing)]


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


__all__ = ["check_not_an_input", "make_folders", "prepare", "same_file"]
