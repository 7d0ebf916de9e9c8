"""`.npy` files read only when they are as long as their header says.

A `.npy` header states the array's shape and dtype; the data follows it. A truncated file (a
copy cut short, a disk that filled up) or a forged one (a 1 KiB file claiming 10^9 rows) must be
refused before anything reads rows from it: a memory map or a row-by-row reader would otherwise
hand out uninitialised memory, or write gigabytes of features for data that is not there. Every
reader of user inputs, labels and cached entries goes through `read_header` or `load`.
Trailing bytes after the array are allowed (several arrays saved one after another into one file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import InputError

if TYPE_CHECKING:
    import numpy as np

# The longest header numpy writes is far below this; longer ones are refused before parsing.
MAX_HEADER_BYTES = 100_000


@dataclass(frozen=True)
class NpyLayout:
    """Where a `.npy` file's array lies: shape, dtype, Fortran order, data offset, data bytes."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int
    nbytes: int


def read_header(path: str | os.PathLike, what: str = "input") -> NpyLayout:
    """The header of a `.npy` file, checked against the file's size; InputError naming the problem otherwise.

    `what` names the file's role in messages ("input", "labels", "cached features").
    """
    import numpy as np

    path = Path(path)
    fix = "save it again with numpy.save(path, array)"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh, max_header_size=MAX_HEADER_BYTES)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise InputError(f"cannot read {what} {path} as a .npy array ({_first_line(exc)}); {fix}") from None
    if dtype.hasobject:
        raise InputError(f"{what} {path} holds Python objects (dtype {dtype}), which zoo never unpickles; "
                         f"save a numeric array (e.g. float32)")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if size < offset + nbytes:
        raise InputError(
            f"{what} {path} is truncated: its header says {_shape(shape)} {dtype} ({_human(nbytes)} of data) "
            f"but the file holds only {_human(max(size - offset, 0))} after the header; {fix}")
    return NpyLayout(path, tuple(int(d) for d in shape), dtype, bool(fortran), offset, nbytes)


def load(path: str | os.PathLike, *, mmap: bool = False, what: str = "input") -> np.ndarray:
    """`numpy.load` of a checked `.npy` file (never unpickling); memory-mapped read-only with `mmap`."""
    import numpy as np

    read_header(path, what)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path} as a .npy array ({_first_line(exc)}); "
                         f"save it again with numpy.save(path, array)") from None


def _shape(shape: tuple[int, ...]) -> str:
    return "shape (" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


__all__ = ["MAX_HEADER_BYTES", "NpyLayout", "load", "read_header"]
