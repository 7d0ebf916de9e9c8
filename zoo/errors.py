"""Exceptions a user can cause; the CLI turns each into one line and exit code 1."""
from __future__ import annotations


class ZooError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class CatalogError(ZooError):
    """The catalog cannot be opened, read or written."""


class CatalogVersionError(CatalogError):
    """The catalog was written by a newer zoo than this one."""


class UnknownModelError(ZooError, KeyError):
    """No model of that name is in the catalog."""


class DuplicateModelError(ZooError):
    """A model of that name is already in the catalog."""


class ModelFormatError(ZooError):
    """A model file is unreadable, corrupt, or not in the format it claims."""


class IndexFormatError(ZooError):
    """A zoo index (JSON) is malformed; the message names the entry and the field."""


class UnknownSourceError(ZooError, KeyError):
    """No remote zoo source of that name is registered."""


class FetchError(ZooError):
    """A download failed (HTTP error, stalled server, redirect loop, disk full)."""


class ChecksumError(FetchError):
    """A downloaded or cached file does not match its published size or checksum."""


class OfflineError(FetchError):
    """Offline mode is on and a needed file is not cached."""


class UnsafeArchiveError(FetchError):
    """An archive member would write outside its target folder, or is a device/link."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive unpacks to more bytes or members, or at a higher ratio, than the limits allow."""


class ConversionError(ZooError):
    """A model cannot be converted to ONNX (unsupported layer or op, bad weights)."""


class UnsupportedLayerError(ConversionError):
    """A layer type or ONNX op has no conversion."""


class UnsafeModelError(ConversionError):
    """A model's graph holds an op that could touch files, processes or the network; refused before it runs."""


class VerificationError(ConversionError):
    """A converted model's outputs differ from its source beyond tolerance."""


class UnknownLayerError(ZooError, KeyError):
    """A layer name or position does not exist in the model."""


class ResourceLimitError(ZooError):
    """An input, a graph or a training run would need more memory than zoo lets it plan; refused before allocating."""


class WriteError(ZooError):
    """A file cannot be written where asked (no such folder, read-only file system, no permission)."""


class DiskFullError(ZooError):
    """No room left to write (disk full, quota, file-size limit); what was written stays resumable."""


class CacheError(ZooError):
    """A cache entry cannot be removed: another process holds its lock, or it is outside the cache."""


class InputError(ZooError, ValueError):
    """Input data has the wrong shape, dtype, length or values."""


class EngineError(ZooError):
    """A compute engine failed: a Ray cluster cannot be reached, or one of its workers died."""


class MissingDependencyError(ZooError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


def write_error(exc: OSError, path) -> ZooError:
    """The one-line error for an OSError writing `path`: disk full, or where to write instead.

    >>> write_error(OSError(30, "Read-only file system"), "/mnt/ro/x.npy")  # doctest: +SKIP
    """
    import errno
    import os

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"no room left to write {path} ({reason}); free some space or write elsewhere, "
                             f"then run the same command again")
    try:
        from zoo.config import cache_dir

        in_cache = os.path.abspath(os.fspath(path)).startswith(str(cache_dir()) + os.sep)
    except Exception:  # noqa: BLE001  a broken configuration: the general hint
        in_cache = False
    hint = ("point --cache-dir (ZOO_CACHE) at a folder you can write" if in_cache
            else "give a path in a folder that exists and that you can write")
    return WriteError(f"cannot write {path} ({reason}); {hint}")


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
            f"install it with: pip install 'zoo[{extra}]'"
        ) from None
