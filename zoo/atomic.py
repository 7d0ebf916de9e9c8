"""Atomic writes: a reader sees the old file or the new one, never half of one.

Ground floor: imports only `zoo.errors` (a write that fails is one `WriteError` or `DiskFullError`
line naming the file), so every layer (converters included) may use it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from zoo.errors import DiskFullError, WriteError, ZooError

__all__ = ["atomic_open", "atomic_path", "write_atomic", "write_error"]

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a write that ran out of room


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A fresh temp path beside `path`, renamed onto it when the block succeeds and removed when it fails.

    The temp name ends in ``.part`` (then `suffix`, for writers that pick the format from it), which
    model scans skip. It is created with the umask's permissions, like a plain `open` would.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:  # no such folder, read-only, no permission, full: one line naming the file
        raise write_error(exc, path) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and (exc.errno in _DISK_FULL or exc.filename in (str(tmp), str(path))):
            raise write_error(exc, path) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = False) -> Iterator[IO[Any]]:
    """`open(path, mode)` for writing through a temp file; `fsync` makes the content durable before the rename."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, data: bytes | str, fsync: bool = False) -> None:
    """Write bytes or text to `path` through a temp file."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync) as f:
        f.write(data)


def write_error(exc: OSError, path: str | os.PathLike) -> ZooError:
    """The one-line error for an OSError writing `path`: disk full, or where to write instead.

    >>> write_error(OSError(30, "Read-only file system"), "/mnt/ro/x.npy")  # doctest: +SKIP
    """
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"no room left to write {path} ({reason}); free some space or write elsewhere, "
                             f"then run the same command again", path=os.fspath(path))
    try:
        from zoo.config import cache_dir

        in_cache = os.path.abspath(os.fspath(path)).startswith(str(cache_dir()) + os.sep)
    except Exception:  # noqa: BLE001  a broken configuration: the general hint
        in_cache = False
    hint = ("point --cache-dir (ZOO_CACHE) at a folder you can write" if in_cache
            else "give a path in a folder that exists and that you can write")
    return WriteError(f"cannot write {path} ({reason}); {hint}", path=os.fspath(path))
