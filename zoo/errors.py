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
