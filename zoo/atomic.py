"""Atomic writes: a reader sees the old file or the new one, never half of one.

Ground floor: imports nothing of zoo, so every layer (converters included) may use it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "atomic_path", "write_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A fresh temp path beside `path`, renamed onto it when the block succeeds and removed when it fails.

    The temp name ends in ``.part`` (then `suffix`, for writers that pick the format from it), which
    model scans skip. It is created with the umask's permissions, like a plain `open` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
