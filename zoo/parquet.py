"""Parquet input for the feature cache: one tensor column of a file or folder, read a row group at a time."""
from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import InputError, require

SUFFIXES = (".parquet", ".pq")
MAGIC = b"PAR1"  # a Parquet file starts (and ends) with it, whatever its name
_READ_BLOCK = 4 << 20
# Ray Data writes numpy arrays as its own extension types; read without Ray imported they are
# plain lists whose field metadata names the type and holds the row shape.
_EXTENSION_NAME = b"ARROW:extension:name"
_EXTENSION_META = b"ARROW:extension:metadata"
_RAY_TENSORS = (b"ray.data.arrow_tensor", b"ray.data.arrow_tensor_v2")


def is_parquet(path: Path) -> bool:
    """A .parquet file, or a folder of them with no class sub-folders (what Ray Data and Spark write)."""
    if path.is_file():
        if path.suffix.lower() in SUFFIXES:
            return True
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith((".", "_"))]  # _SUCCESS, .crc
    # A Hive-partitioned dataset keeps its files in "key=value" sub-folders.
    return bool(entries) and all(
        (p.is_file() and p.suffix.lower() in SUFFIXES) or (p.is_dir() and "=" in p.name) for p in entries
    ) and bool(_files(path))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def _tensor_like(field: Any) -> bool:
    """A column each row of which can be a numeric array: (nested) lists of numbers, or a tensor type."""
    import pyarrow as pa

    kind = field.type
    if isinstance(kind, pa.BaseExtensionType):
        kind = kind.storage_type
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return True
    return False


class ParquetSource:
    """A tensor column of a Parquet file (or folder of files), row by row in file and row-group order.

    A `zoo.datasources.DataSource`: it implements the protocol itself, as each format does.

    Each row of the column is one input: a fixed-size list, a list (every row the same length),
    nested lists, pyarrow's ``fixed_shape_tensor`` or the tensor type Ray Data writes. Rows are
    read one row group at a time and the last group read is kept, so a chunk costs no more than
    its share of a group and memory stays bounded by the largest row group.
    """

    unit = "rows"
    labels = None
    classes = None

    def __init__(self, path: Path, column: str | None = None) -> None:
        pq = require("pyarrow.parquet", "parquet")
        files = _files(path)
        if not files:
            raise InputError(f"{path} holds no .parquet files; give a .parquet file or a folder of them")
        self.path, self.files = path, files
        self.groups: list[tuple[int, int, int]] = []  # (first row, file index, row group) in order
        self.starts: list[int] = []
        row = 0
        schemas: list[Any] = []
        for index, file in enumerate(files):
            try:
                with pq.ParquetFile(file) as meta:
                    schemas.append(meta.schema_arrow)
                    for group in range(meta.metadata.num_row_groups):
                        rows = meta.metadata.row_group(group).num_rows
                        if rows:
                            self.groups.append((row, index, group))
                            self.starts.append(row)
                            row += rows
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
                raise InputError(f"cannot read {file} as Parquet ({type(exc).__name__}: {exc})") from None
        self.length = row
        if not row:
            raise InputError(f"{path} has no rows; give at least one row")
        self.column = self._pick_column(schemas[0], column)
        for file, schema in zip(files, schemas):
            if self.column not in schema.names:
                raise InputError(
                    f"{file} has no column {self.column!r} (its columns: {', '.join(schema.names)}); every "
                    f"file of {path} must hold the inputs in the same column"
                )
        field = schemas[0].field(self.column)
        self.shape = None
        if field.metadata and field.metadata.get(_EXTENSION_NAME) in _RAY_TENSORS:
            self.shape = tuple(json.loads(field.metadata[_EXTENSION_META]))
        elif getattr(field.type, "shape", None):
            # The tensor type is registered here (Ray Data imported): keep its row shape for the
            # processes that read the rows without it, like the Ray engine's actors.
            self.shape = tuple(field.type.shape)
        digest = hashlib.sha256(f"parquet|{self.column}".encode())
        for file in files:
            digest.update(f"{file.relative_to(path) if file != path else file.name}|".encode())
            with open(file, "rb") as f:
                while block := f.read(_READ_BLOCK):
                    digest.update(block)
        self.fingerprint = digest.hexdigest()
        self.description = f"{path.name} column {self.column!r} ({row} rows, {len(files)} files)"
        self._cached: tuple[int, Any] | None = None  # (group position, its column): the last one read

    def _pick_column(self, schema: Any, column: str | None) -> str:
        tensors = [f.name for f in schema if _tensor_like(f)]
        if column is not None:
            if column not in schema.names:
                raise InputError(
                    f"column {column!r} is not in {self.path}; its columns: {', '.join(schema.names)}"
                )
            if column not in tensors:
                raise InputError(
                    f"column {column!r} of {self.path} is {schema.field(column).type}, not numeric arrays; "
                    f"give a column of fixed-size lists or tensors ({', '.join(tensors) or 'none here'})"
                )
            return column
        if len(tensors) == 1:
            return tensors[0]
        if not tensors:
            raise InputError(
                f"{self.path} has no column of numeric arrays (columns: {', '.join(schema.names)}); each "
                "row must be one input, e.g. a fixed-size list of floats or a tensor column"
            )
        raise InputError(
            f"{self.path} has several columns of arrays ({', '.join(tensors)}); name one with "
            "column='...' (`--column`)"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None  # a copy sent to another process reads its own groups
        return state

    def _group(self, position: int) -> Any:
        if self._cached is None or self._cached[0] != position:
            import pyarrow.parquet as pq

            _, index, group = self.groups[position]
            try:
                with pq.ParquetFile(self.files[index]) as f:
                    table = f.read_row_group(group, columns=[self.column])
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
                raise InputError(
                    f"cannot read row group {group} of {self.files[index]} ({type(exc).__name__}: {exc}); "
                    "the file changed or is damaged"
                ) from None
            self._cached = None  # drop the old group before holding the new one
            self._cached = (position, table.column(0).combine_chunks())
        return self._cached[1]

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi (within one row group) as one numpy array."""
        import pyarrow as pa
        import pyarrow.compute as pc

        position = bisect_right(self.starts, lo) - 1
        array = self._group(position).slice(lo - self.starts[position], hi - lo)
        shape = self.shape
        if isinstance(array.type, pa.BaseExtensionType):
            shape = tuple(getattr(array.type, "shape", None) or ()) or shape
            array = array.storage
        if array.null_count:
            raise InputError(f"rows {lo}-{hi - 1} of column {self.column!r} in {self.path} include nulls; fill or drop them")
        dims: list[int] = []
        while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
            if pa.types.is_fixed_size_list(array.type):
                dims.append(array.type.list_size)
            else:
                lengths = pc.list_value_length(array)
                bounds = pc.min_max(lengths)
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                if low != high:
                    raise InputError(
                        f"rows {lo}-{hi - 1} of column {self.column!r} in {self.path} hold arrays of "
                        f"{low} to {high} values; every row must have the same shape"
                    )
                dims.append(low or 0)
            array = array.flatten()
        if array.null_count:
            raise InputError(f"rows {lo}-{hi - 1} of column {self.column!r} in {self.path} hold null values; fill them")
        values = array.to_numpy(zero_copy_only=False).reshape(hi - lo, *dims)
        if shape:
            values = values.reshape(hi - lo, *shape)
        return np.ascontiguousarray(values)

    def ranges(self, start: int, chunk_size: int) -> list[tuple[int, int]]:
        """Chunk boundaries from `start`: `chunk_size` rows, never across a row group."""
        out = []
        ends = [*self.starts[1:], self.length]
        for first, end in zip(self.starts, ends):
            lo = max(start, first)
            while lo < end:
                out.append((lo, min(lo + chunk_size, end)))
                lo += chunk_size
        return out

    def rows(self, batch: Any) -> int:
        """Samples in a chunk."""
        return len(batch)

    def paths(self) -> list[Path]:
        """The file or folder read: an engine on another machine needs it at the same path."""
        return [self.path]

    def for_extractor(self, extractor: Any) -> ParquetSource:
        """The rows are the model's input as they are: the same source for every extractor."""
        return self

    def chunks(self, start: int, chunk_size: int) -> Iterator[tuple[int, np.ndarray, list[dict]]]:
        for lo, hi in self.ranges(start, chunk_size):
            yield lo, self._rows(lo, hi), []
