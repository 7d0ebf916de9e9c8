"""Exceptions a user can cause; the CLI turns each into one line and exit code 1.

Each carries, besides its message, the facts a program needs (`UnknownModelError.closest`,
`ChecksumError.expected` / `.got`, `OfflineError.missing`...), so a caller passes the error on,
or adds context with `with_context`, instead of rebuilding one from its text.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

_E = TypeVar("_E", bound="ZooError")


def _restore(kind: type, message: str, fields: dict[str, Any]) -> ZooError:
    return kind(message, **fields)


class ZooError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return str(self.args[0]) if self.args and self.args[0] else self.__class__.__name__

    def __reduce__(self):  # the fields survive a trip to another process (Ray workers, pickling)
        return _restore, (type(self), str(self), self.fields)

    def with_context(self: _E, prefix: str) -> _E:
        """The same error, type and fields, with `prefix` said before its message."""
        return _restore(type(self), f"{prefix}: {self}", self.fields)


class CatalogError(ZooError):
    """The catalog cannot be opened, read or written."""


class CatalogVersionError(CatalogError):
    """The catalog was written by a newer zoo than this one."""

    def __init__(self, message: str, *, revision: str | None = None, supported: str | None = None) -> None:
        super().__init__(message, revision=revision, supported=supported)


class UnknownModelError(ZooError, KeyError):
    """No model of that name is in the catalog; `closest` holds the names that look like it."""

    def __init__(self, message: str, *, name: str | None = None, closest: Sequence[str] = ()) -> None:
        super().__init__(message, name=name, closest=list(closest))


class UnknownRevisionError(ZooError, KeyError):
    """``NAME@REV`` names no revision of the model (or several); `known` lists its revision ids."""

    def __init__(self, message: str, *, name: str | None = None, revision: str | None = None,
                 known: Sequence[str] = ()) -> None:
        super().__init__(message, name=name, revision=revision, known=list(known))


class DuplicateModelError(ZooError):
    """A model of that name is already in the catalog."""


class ModelFormatError(ZooError):
    """A model file is unreadable, corrupt, or not in the format it claims."""


class UnsafePickleError(ModelFormatError):
    """A pickle or torch.save checkpoint, refused unopened; `report` lists the globals it would import."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message, report=report)  # a zoo.pickles.PickleReport


class IndexFormatError(ZooError):
    """A zoo index (JSON) is malformed; the message names the entry and the field."""


class UnknownSourceError(ZooError, KeyError):
    """No remote zoo source of that name is registered; `closest` holds the names that look like it."""

    def __init__(self, message: str, *, name: str | None = None, closest: Sequence[str] = ()) -> None:
        super().__init__(message, name=name, closest=list(closest))


class FetchError(ZooError):
    """A download failed (HTTP error, stalled server, redirect loop, disk full)."""


class ChecksumError(FetchError):
    """A downloaded or cached file does not match its published size or checksum.

    `expected` and `got` are what was published and what was found ("sha256:<hex>", or a size in
    bytes), when known; `path` is the file.
    """

    def __init__(self, message: str, *, path: str | None = None, expected: Any = None, got: Any = None) -> None:
        super().__init__(message, path=path, expected=expected, got=got)


class OfflineError(FetchError):
    """Offline mode is on and a needed file is not cached; `missing` says, per file, what is not there."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message, missing=list(missing))


class LockMismatchError(FetchError):
    """What `zoo fetch --locked` would fetch is not what zoo.lock pins; `changes` says what changed."""

    def __init__(self, message: str, *, changes: Sequence[str] = ()) -> None:
        super().__init__(message, changes=list(changes))


class HubError(FetchError):
    """A model hub (the Hugging Face Hub) refused or could not answer; `status` is its HTTP status."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status, retry_after=retry_after)


class UnsafeArchiveError(FetchError):
    """An archive member would write outside its target folder, or is a device/link."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive unpacks to more bytes or members, or at a higher ratio, than the limits allow."""


class SignatureError(ZooError):
    """A model's signature is missing, malformed or does not verify, or a signer/key is unusable;
    `model` names the model when there is one."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, model=model)


class ConversionError(ZooError):
    """A model cannot be converted to ONNX (unsupported layer or op, bad weights)."""


class UnsupportedLayerError(ConversionError):
    """A layer type or ONNX op has no conversion."""


class UnsafeModelError(ConversionError):
    """A model's graph holds an op that could touch files, processes or the network; refused before it runs."""


class VerificationError(ConversionError):
    """A converted model's outputs differ from its source beyond tolerance."""


class UnknownLayerError(ZooError, KeyError):
    """A layer name or position does not exist in the model; `closest` holds names that look like it."""

    def __init__(self, message: str, *, layer: Any = None, closest: Sequence[str] = ()) -> None:
        super().__init__(message, layer=layer, closest=list(closest))


class ResourceLimitError(ZooError):
    """An input, a graph or a training run would need more memory than zoo lets it plan; refused before allocating."""


class WriteError(ZooError):
    """A file cannot be written where asked (no such folder, read-only file system, no permission)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path)


class DiskFullError(ZooError):
    """No room left to write (disk full, quota, file-size limit); what was written stays resumable."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path)


class CacheError(ZooError):
    """A cache entry cannot be removed: another process holds its lock, or it is outside the cache."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path)


class InputError(ZooError, ValueError):
    """Input data has the wrong shape, dtype, length or values."""


class UnknownOptionError(InputError, TypeError):
    """A keyword names no option of the function; `closest` holds the names that look like it.

    A TypeError too, as Python's own unexpected-keyword error is, so code that catches that keeps working.
    """

    def __init__(self, message: str, *, option: str | None = None, closest: Sequence[str] = ()) -> None:
        super().__init__(message, option=option, closest=list(closest))


class UnfreezeDepthError(InputError):
    """Unfreezing `unfreeze` layers is more than the cut has, or leaves nothing frozen to cache below them."""

    def __init__(self, message: str, *, unfreeze: int | None = None, layers: int | None = None) -> None:
        super().__init__(message, unfreeze=unfreeze, layers=layers)


class EngineError(ZooError):
    """A compute engine failed: a Ray cluster cannot be reached, or one of its workers died."""


class MissingDependencyError(ZooError, ImportError):
    """An optional dependency is not installed; the message gives the pip command (`extra` is zoo's extra)."""

    def __init__(self, message: str, *, module: str | None = None, extra: str | None = None) -> None:
        super().__init__(message, module=module, extra=extra)


class NotConvergedWarning(UserWarning):
    """Training stopped at its last epoch while the validation loss was still falling (as
    scikit-learn's ConvergenceWarning): more epochs would likely give a better model."""


class SkippedInputsWarning(UserWarning):
    """Inputs that could not be read were left out of a result; `skipped` lists them (index, path, reason)."""

    def __init__(self, message: str, skipped: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.skipped = list(skipped)


def require(module: str, extra: str):
    """Import an optional heavy module or raise MissingDependencyError with the fix.

    >>> torch = require("torch", "torch")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for this and is not installed ({exc}); "
            f"install it with: pip install 'zoo[{extra}]'", module=module, extra=extra,
        ) from None


# How a message spells an option: as a Python keyword (the default) or as a command-line flag.
# The CLI switches to flags for the command it runs, so the same error tells a shell user
# `--on-error raise` and a Python user `on_error='raise'` (one message, two vocabularies' syntax).
_SPELLING: contextvars.ContextVar[str] = contextvars.ContextVar("zoo_spelling", default="python")
_UNSET: Any = object()


@contextlib.contextmanager
def command_line_spelling() -> Iterator[None]:
    """Within this block, `option` and `spelled` give command-line syntax (the CLI's commands run in it)."""
    token = _SPELLING.set("cli")
    try:
        yield
    finally:
        _SPELLING.reset(token)


def spelled(python: str, cli: str) -> str:
    """`python` or `cli`, whichever syntax the user is writing in."""
    return cli if _SPELLING.get() == "cli" else python


def option(name: str, value: Any = _UNSET, *, cli: str | None = None, flag: str | None = None) -> str:
    """An option as the user writes it: ``name=value`` in Python, ``--name value`` on the command line.

    Args:
        name: the Python keyword; the flag is the same with dashes unless `flag` says otherwise.
        value: the value to show (its repr in Python); left out, ``name=...`` / the bare flag.
        cli: the value as typed on the command line, when it differs from ``str(value)``.
        flag: the command-line flag, when it is not ``--`` + the name with dashes.

    >>> option("on_error", "raise")
    "on_error='raise'"
    """
    if _SPELLING.get() == "cli":
        dashed = name.replace("_", "-")
        if isinstance(value, bool) and cli is None:  # a switch: --preprocess / --no-preprocess
            return flag or f"--{'' if value else 'no-'}{dashed}"
        flag = flag or "--" + dashed
        if value is _UNSET and cli is None:
            return flag
        return f"{flag} {cli if cli is not None else value}"
    return f"{name}=" + ("..." if value is _UNSET else repr(value))
