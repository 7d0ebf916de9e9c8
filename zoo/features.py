"""Feature cache: run a dataset through a frozen extractor once and keep the outputs on disk."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol

import numpy as np

from zoo.cache import atomic_open, features_folder
from zoo.errors import DiskFullError, InputError

__all__ = [
    "CacheEntry",
    "CachedFeatures",
    "FeatureCache",
    "cache_features",
    "extract_features",
    "save_features",
]

MANIFEST = "manifest.json"
FEATURES = "features.npy"
LABELS = "labels.npy"
# The .npy header is written last, into a fixed slot, so rows can be appended before the final
# row count is known (iterables have no length) and a half-written file never loads as an array.
HEADER_BYTES = 256
FORMAT_VERSION = 1
# Errors that mean "no room left": ENOSPC (disk full), EDQUOT (quota), EFBIG (file size limit).
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_BLOCK = 4 << 20
CHECKPOINT_SECONDS = 1.0


class FeatureExtractor(Protocol):
    """What the cache needs from an extractor: a batch -> features call and a fingerprint.

    ``fingerprint`` must change whenever the outputs would (model file, cut, preprocessing);
    ``zoo.extract.Extractor`` is one. ``input_spec`` (an ``InputSpec``) is read, when present,
    to size images from a folder.
    """

    fingerprint: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class CachedFeatures:
    """Features of one dataset through one extractor, memory-mapped from the cache."""

    key: str
    path: Path
    features: np.ndarray
    labels: np.ndarray | None = None  # class indices, for an image folder
    classes: list[str] | None = None  # class names (sub-folder names), for an image folder
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable inputs: path, reason
    reused: bool = False  # True when nothing had to be computed


@dataclass
class CacheEntry:
    """One folder of the feature cache, as `zoo cache list` shows it."""

    key: str
    path: Path
    complete: bool
    rows: int
    shape: list[int] | None
    dtype: str | None
    bytes: int
    created: float | None
    extractor: str | None
    dataset: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "complete": self.complete,
            "rows": self.rows,
            "shape": self.shape,
            "dtype": self.dtype,
            "bytes": self.bytes,
            "created": self.created,
            "extractor": self.extractor,
            "dataset": self.dataset,
        }


# ---------------------------------------------------------------------------------------------
# Data sources: each knows its fingerprint and yields (first row index, batch, skipped) chunks.


class _Source:
    fingerprint: str
    description: str
    length: int | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    unit = "rows"

    def chunks(self, start: int, chunk_size: int) -> Iterator[tuple[int, np.ndarray, list[dict]]]:
        raise NotImplementedError

    def rows(self, batch: Any) -> int:
        """Samples in one chunk (a chunk of named inputs counts along their batch axis)."""
        return len(batch)


class _ArraySource(_Source):
    """An array already in memory (or any array-like numpy can slice)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.dtype == object:
            raise InputError("the data array has dtype object; give a numeric array (e.g. float32)")
        if array.ndim < 1 or len(array) == 0:
            raise InputError(f"the data array is empty (shape {array.shape}); give at least one row")
        self.array = array
        self.length = len(array)
        self.fingerprint = _array_fingerprint(array)
        self.description = f"array {array.dtype}{list(array.shape)}"

    def chunks(self, start, chunk_size):
        for i in range(start, self.length, chunk_size):
            yield i, np.ascontiguousarray(self.array[i : i + chunk_size]), []


def _array_fingerprint(array: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes, read in blocks of rows (a .npy file's source hashes the same)."""
    digest = hashlib.sha256(f"array|{array.dtype.str}|{array.shape}".encode())
    if array.ndim == 0:
        digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()
    rows = max(1, _READ_BLOCK // max(1, array[:1].nbytes))
    for i in range(0, len(array), rows):
        digest.update(np.ascontiguousarray(array[i : i + rows]).data)
    return digest.hexdigest()


class _NpyFileSource(_Source):
    """A .npy file read a chunk at a time with plain reads.

    Plain reads rather than ``np.load(mmap_mode="r")``: pages of a memory map count in the
    process's resident size until the kernel reclaims them, so a map over a dataset larger
    than memory looks (and is accounted) as if it were all loaded.
    """

    def __init__(self, path: Path, layout: tuple[tuple[int, ...], np.dtype, int] | None = None) -> None:
        self.path = path
        if layout is not None:  # a memory map the caller opened: its shape, dtype and offset
            (shape, dtype, self.offset), fortran = layout, False
        else:
            try:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = reader(f)
                    self.offset = f.tell()
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {path} as a .npy array ({exc}); save it with numpy.save") from None
        if dtype.hasobject:
            raise InputError(f"{path} holds Python objects; save a numeric array (e.g. float32)")
        if not shape or shape[0] == 0:
            raise InputError(f"{path} is empty (shape {shape}); give at least one row")
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, dtype
        self.length = shape[0]
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        digest = hashlib.sha256(f"array|{dtype.str}|{self.shape}".encode())
        remaining = self.length * self.row_bytes
        with open(path, "rb") as f:
            f.seek(self.offset)
            while remaining and (block := f.read(min(_READ_BLOCK, remaining))):
                digest.update(block)
                remaining -= len(block)
        self.fingerprint = digest.hexdigest()
        self.description = f"{path.name} {dtype}{list(self.shape)}"

    def chunks(self, start, chunk_size):
        if self.fortran:  # rare; rows are not contiguous on disk, let numpy gather them
            array = np.load(self.path, mmap_mode="r")
            for i in range(start, self.length, chunk_size):
                yield i, np.ascontiguousarray(array[i : i + chunk_size]), []
            return
        with open(self.path, "rb") as f:
            for i in range(start, self.length, chunk_size):
                n = min(chunk_size, self.length - i)
                f.seek(self.offset + i * self.row_bytes)
                batch = np.empty((n, *self.shape[1:]), dtype=self.dtype)
                f.readinto(memoryview(batch).cast("B"))
                yield i, batch, []


class _ImageSource(_Source):
    """Image files (one sub-folder per class, a flat folder, one file or a list), decoded with Pillow.

    Images are resized and centre-cropped to the net's input (``zoo.images.geometry``), then:
    ``"spec"`` applies the model's InputSpec here; ``"pixels"`` hands (N, H, W, C) raw pixels to
    an extractor that preprocesses them itself; ``"raw"`` gives 0-255 pixels in the net's layout.
    """

    unit = "img"

    def __init__(
        self,
        files: list[Path],
        description: str,
        geometry: Any,
        layout: str,
        mode: str,
        spec: Any,
        on_error: str,
        classes: list[str] | None = None,
        labels: list[int] | None = None,
        root: Path | None = None,
    ):
        self.files, self.classes = files, classes
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.geometry, self.layout, self.mode, self.spec, self.on_error = geometry, layout, mode, spec, on_error
        self.length = len(files)
        # Paths, sizes and modification times stand for the bytes: hashing every image would
        # cost a full read of the folder on each run. What is done to the pixels counts too.
        how = {"geometry": geometry.to_dict(), "layout": layout, "mode": mode,
               "spec": spec.to_dict() if mode == "spec" else None}
        digest = hashlib.sha256(f"images|{json.dumps(how, sort_keys=True)}".encode())
        for path in files:
            stat = path.stat()
            name = path.relative_to(root) if root is not None else path.absolute()
            digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        self.fingerprint = digest.hexdigest()
        self.description = description

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        from zoo import images

        if self.mode == "raw":
            return images.to_layout(pixels, self.layout)
        pixels = images.to_pixel_range(pixels, self.spec)
        return pixels if self.mode == "pixels" else images.preprocess(pixels, self.spec)

    def chunks(self, start, chunk_size):
        from zoo.images import load_image

        for i in range(start, self.length, chunk_size):
            decoded, skipped = [], []
            for j, path in enumerate(self.files[i : i + chunk_size], start=i):
                try:
                    decoded.append(load_image(path, self.geometry))
                except Exception as exc:  # Pillow raises many types for a bad file
                    if self.on_error == "raise":
                        raise InputError(
                            f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or fix it, "
                            "or skip unreadable files (on_error='skip', the default; without --strict-images)"
                        ) from None
                    skipped.append({"index": j, "path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
            if decoded and len({d.shape for d in decoded}) > 1:
                raise InputError(
                    f"the images from {self.files[i]} on have different sizes and the model's input has no "
                    "fixed size to resize them to; pass image_size=(height, width)"
                )
            if decoded:
                batch = self._batch(np.stack(decoded))
            else:
                batch = np.empty((0,), dtype=np.float32)
            yield i, batch, skipped


class _IterableSource(_Source):
    """Any iterable of batches; the user's key stands for its content."""

    def __init__(self, batches: Iterable, key: str, axes: dict[str, int | None] | None = None) -> None:
        self.batches = batches
        self.axes = axes or {}
        self.fingerprint = hashlib.sha256(f"iterable|{key}".encode()).hexdigest()
        self.description = f"iterable key={key!r}"

    def chunks(self, start, chunk_size):
        row = 0
        for batch in self.batches:
            batch = {k: np.asarray(v) for k, v in batch.items()} if isinstance(batch, Mapping) else np.asarray(batch)
            if row >= start:
                yield row, batch, []
            row += self.rows(batch)

    def rows(self, batch):
        if not isinstance(batch, Mapping):
            return len(batch)
        # Named inputs: the batch axis of the extractor's, else the first axis of any array.
        for name, value in batch.items():
            axis = self.axes.get(name, 0)
            if axis is not None and value.ndim > axis:
                return value.shape[axis]
        raise InputError(
            f"a batch of inputs ({', '.join(batch)}) has no batch axis; give arrays with one row per sample"
        )


class _InputsSource(_Source):
    """Named inputs of a multi-input extractor: arrays or .npy files sharing one batch axis.

    Each input is split along its batch axis (``extractor.batch_axes``, else axis 0); one
    without a batch axis (a scalar sample rate) goes whole with every chunk. The fingerprint
    covers every input, so changing any of them computes the features again.
    """

    def __init__(self, data: Mapping[str, Any], extractor: Any) -> None:
        if not data:
            raise InputError("the dict of inputs is empty; give {input name: array or .npy path}")
        axes = getattr(extractor, "batch_axes", None) or {}
        self.inputs: dict[str, tuple[Any, int | None]] = {}
        lengths: dict[str, int] = {}
        digest = hashlib.sha256(b"inputs")
        self.files: dict[str, _NpyFileSource] = {}  # batch-first files, read with plain reads
        for name in sorted(data):
            value = data[name]
            if isinstance(value, (str, os.PathLike)):
                value = _load_npy(Path(value).expanduser(), name)
            elif not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype.hasobject:
                raise InputError(f"input {name!r} has dtype {value.dtype}; give a numeric array (e.g. int64 token ids)")
            axis = axes.get(name, 0) if value.ndim else None
            if axis is not None and value.ndim <= axis:
                axis = None
            if axis is not None:
                lengths[name] = value.shape[axis]
            self.inputs[name] = (value, axis)
            if axis == 0 and len(value) and _whole_file_map(value):
                # As for a single .npy file: plain reads keep the process's resident size bounded.
                self.files[name] = _NpyFileSource(Path(value.filename), (value.shape, value.dtype, value.offset))
                fingerprint = self.files[name].fingerprint
            else:
                fingerprint = _array_fingerprint(value)
            # Files hash like the array they hold: a dict of .npy paths and of arrays share a key.
            digest.update(f"|{name}|{axis}|{fingerprint}".encode())
        if not lengths:
            raise InputError(
                f"none of the inputs ({', '.join(sorted(data))}) has a batch axis; give at least one "
                "array with one row per sample"
            )
        if len(set(lengths.values())) > 1:
            raise InputError(
                "the inputs disagree on the number of samples: "
                + ", ".join(f"{k} has {n}" for k, n in lengths.items())
                + "; give every batched input the same number of rows"
            )
        self.length = next(iter(lengths.values()))
        if self.length == 0:
            raise InputError("the inputs hold no samples; give at least one row")
        self.fingerprint = digest.hexdigest()
        self.description = "inputs " + ", ".join(
            f"{k}={v.dtype}{list(v.shape)}" for k, (v, _) in self.inputs.items()
        )

    def chunks(self, start, chunk_size):
        # Every batched input has the same length, so the file readers' chunks line up.
        readers = {name: source.chunks(start, chunk_size) for name, source in self.files.items()}
        for i in range(start, self.length, chunk_size):
            batch = {}
            for name, (value, axis) in self.inputs.items():
                if name in readers:
                    batch[name] = next(readers[name])[1]
                elif axis is None:
                    batch[name] = value
                else:
                    batch[name] = np.ascontiguousarray(value[(slice(None),) * axis + (slice(i, i + chunk_size),)])
            yield i, batch, []

    def rows(self, batch):
        name, axis = next((k, a) for k, (_, a) in self.inputs.items() if a is not None)
        return batch[name].shape[axis]


def _load_npy(path: Path, name: str) -> np.ndarray:
    """One named input's .npy file, mapped for its header and rows (never unpickled)."""
    if not path.is_file():
        raise InputError(f"input {name!r}: {path} is not a file; give a .npy array saved with numpy.save")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read {path} (input {name!r}) as a .npy array ({exc}); save it with numpy.save"
        ) from None


def _image_source(
    data: Any, extractor: Any, on_error: str, image_size: tuple[int, int] | None, layout: str | None,
    preprocess: bool | None,
) -> _ImageSource:
    """Image files, with how to size them and whether the cache or the extractor applies the InputSpec."""
    from zoo import images

    spec = getattr(extractor, "input_spec", None)
    shape = list(getattr(spec, "shape", None) or [])
    layout = layout or getattr(spec, "layout", None)
    if len(shape) == 4 and layout is None:
        layout = "NCHW" if shape[1] in (1, 3) else "NHWC"
    layout = layout or "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise InputError(f"image layout {layout!r} is not one of NCHW, NHWC; pass layout='NCHW' or 'NHWC'")
    geometry = images.geometry(spec, image_size)
    if geometry.resize is None and geometry.crop is None:
        raise InputError(
            "the extractor does not say its input image size; pass image_size=(height, width) "
            "(`--image-size H,W`)"
        )
    own = getattr(extractor, "preprocess", None)
    if own is True:
        mode = "pixels"  # the extractor was loaded with preprocess=True: it applies the spec itself
    elif own is False or preprocess is False or spec is None:
        mode = "raw"
    else:
        from dataclasses import replace

        from zoo.preprocessing import warn_if_missing

        warn_if_missing(spec, getattr(extractor, "source", None) or "the model")
        mode, spec = "spec", replace(spec, layout=layout)
    path = Path(data).expanduser() if isinstance(data, (str, os.PathLike)) else None
    found = images.class_folders(path) if path is not None and path.is_dir() else None
    if found is not None:
        classes, files, labels = found
        description = f"{path} ({len(files)} files, {len(classes)} classes)"
        return _ImageSource(files, description, geometry, layout, mode, spec, on_error, classes, labels, root=path)
    files = images.image_files(data)
    description = f"{path} ({len(files)} images)" if path is not None else f"{len(files)} image files"
    return _ImageSource(files, description, geometry, layout, mode, spec, on_error,
                        root=path if path is not None and path.is_dir() else None)


def _is_npy(path: Path) -> bool:
    """A .npy file by its magic bytes, whatever its name."""
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _whole_file_map(data: Any) -> bool:
    """A read-only or shared memory map of a whole file (not a slice, not copy-on-write)."""
    import mmap

    return (
        isinstance(data, np.memmap)
        and isinstance(data.base, mmap.mmap)
        and bool(data.filename)
        and data.mode != "c"
        and data.flags.c_contiguous
        and data.ndim >= 1
    )


def _source(
    data: Any,
    extractor: Any,
    key: str | None,
    on_error: str,
    image_size: tuple[int, int] | None,
    layout: str | None,
    preprocess: bool | None = None,
    column: str | None = None,
) -> _Source:
    from zoo.images import is_image_input

    if on_error not in ("skip", "raise"):
        raise InputError(f"on_error={on_error!r} is not one of 'skip', 'raise'")
    if isinstance(data, (str, os.PathLike)):
        from zoo import parquet

        path = Path(data).expanduser()
        if parquet.is_parquet(path):
            return parquet.ParquetSource(path, column)
        if column is not None:
            raise InputError(f"column={column!r} applies to Parquet input only; {path} is not a Parquet file or folder")
        if path.is_file() and path.suffix.lower() == ".npy" or path.is_file() and _is_npy(path):
            return _NpyFileSource(path)
        if path.is_dir() or path.is_file():
            return _image_source(path, extractor, on_error, image_size, layout, preprocess)
        raise InputError(
            f"{path} does not exist; give a .npy file, an image file, a folder of images or a folder "
            "with one sub-folder per class"
        )
    if isinstance(data, Mapping):  # named inputs of a multi-input extractor
        return _InputsSource(data, extractor)
    if is_image_input(data):  # a list of image paths
        return _image_source(data, extractor, on_error, image_size, layout, preprocess)
    if _whole_file_map(data):
        # np.load(path, mmap_mode="r"): read the file instead, so RAM stays bounded (see above)
        return _NpyFileSource(Path(data.filename), (data.shape, data.dtype, data.offset))
    if isinstance(data, np.ndarray):
        return _ArraySource(data)
    if isinstance(data, Iterable):
        if key is None:
            raise InputError(
                "an iterable of batches has no fingerprint of its own; pass key='...' naming its "
                "content (change the key when the data changes)"
            )
        return _IterableSource(data, key, getattr(extractor, "batch_axes", None))
    raise InputError(
        f"cannot cache features of a {type(data).__name__}; give a numpy array, a .npy path, an "
        "image folder or an iterable of batches with key=..."
    )


# ---------------------------------------------------------------------------------------------
# Files of one cache entry.


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    with atomic_open(path, "w", fsync=True) as f:
        json.dump(data, f, indent=1)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body_len = HEADER_BYTES - len(np.lib.format.MAGIC_PREFIX) - 2 - 2
    if len(header) + 1 > body_len:
        raise InputError(f"features of shape {shape[1:]} have too many dimensions to cache; flatten them")
    text = header.ljust(body_len - 1) + "\n"
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + len(text).to_bytes(2, "little") + text.encode("latin1")


def _disk_full(exc: OSError, entry: Path) -> DiskFullError:
    free = shutil.disk_usage(entry).free if entry.exists() else 0
    return DiskFullError(
        f"no room left to cache features in {entry} ({os.strerror(exc.errno)}; {free // 2**20} MiB free); "
        "free some space (`zoo cache list`, `zoo cache rm KEY`) and run again: it resumes from the "
        "last complete chunk"
    )


class FeatureCache:
    """The feature cache folder, ``<cache>/features/<key>/``.

    >>> cache = FeatureCache()
    >>> result = cache.features(extractor, "train.npy")        # doctest: +SKIP
    >>> result.features.shape                                  # doctest: +SKIP
    (50000, 4096)
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.root = features_folder(cache_dir)

    # -- keys and entries --------------------------------------------------------------------

    @staticmethod
    def _key(extractor_fp: str, dataset_fp: str) -> str:
        return hashlib.sha256(f"{FORMAT_VERSION}|{extractor_fp}|{dataset_fp}".encode()).hexdigest()[:32]

    def key(
        self,
        extractor: FeatureExtractor,
        data: Any,
        *,
        key: str | None = None,
        image_size: tuple[int, int] | None = None,
        layout: str | None = None,
        preprocess: bool | None = None,
        column: str | None = None,
    ) -> str:
        """The cache key of `data` through `extractor` (both fingerprints, hashed)."""
        source = _source(data, extractor, key, "skip", image_size, layout, preprocess, column)
        return self._key(_fingerprint(extractor), source.fingerprint)

    def entries(self) -> list[CacheEntry]:
        """Every entry in the cache, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        entries = []
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            manifest = _read_json(folder / MANIFEST) or {}
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            entries.append(
                CacheEntry(
                    key=folder.name,
                    path=folder,
                    complete=bool(manifest.get("complete")),
                    rows=int(manifest.get("rows", 0)),
                    shape=manifest.get("shape"),
                    dtype=manifest.get("dtype"),
                    bytes=size,
                    created=manifest.get("created"),
                    extractor=manifest.get("extractor"),
                    dataset=manifest.get("dataset_description"),
                )
            )
        return sorted(entries, key=lambda e: (e.created or 0, e.key))

    def _resolve(self, key: str) -> str:
        names = [p.name for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        if key in names:
            return key
        matches = [n for n in names if n.startswith(key)] if key else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(f"cache key {key!r} matches {len(matches)} entries; give more characters")
        raise InputError(f"no feature cache entry {key!r} in {self.root}; list them with `zoo cache list`")

    def remove(self, key: str) -> int:
        """Delete one entry (a unique key prefix is enough); returns the bytes freed."""
        import filelock

        name = self._resolve(key)
        folder = self.root / name
        with filelock.FileLock(str(self.root / f"{name}.lock")):
            freed = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            shutil.rmtree(folder)
        # The lock file stays: deleting it could let two processes lock two different files.
        return freed

    def clear(self) -> int:
        """Delete every entry; returns the bytes freed."""
        return sum(self.remove(entry.key) for entry in self.entries())

    def load(self, key: str) -> CachedFeatures:
        """A complete entry, memory-mapped; InputError when it is missing or unfinished."""
        folder = self.root / self._resolve(key)
        manifest = _read_json(folder / MANIFEST) or {}
        if not _valid(folder, manifest):
            raise InputError(f"feature cache entry {folder.name} is not complete; run the extraction again to finish it")
        return _result(folder, manifest, reused=True)

    # -- computing ---------------------------------------------------------------------------

    def features(
        self,
        extractor: FeatureExtractor,
        data: Any,
        *,
        key: str | None = None,
        chunk_size: int = 256,
        progress: bool = True,
        on_error: str = "skip",
        image_size: tuple[int, int] | None = None,
        layout: str | None = None,
        preprocess: bool | None = None,
        column: str | None = None,
        engine: Any = "local",
    ) -> CachedFeatures:
        """Features of `data` through `extractor`: reused when cached, else computed (or resumed).

        Image files get the extractor's InputSpec (resize, crop, channel order, mean/std...)
        unless ``preprocess=False`` (or the extractor was loaded with ``preprocess=False``).

        `engine` computes missing chunks: ``"local"`` (this process) or ``"ray"`` / a
        ``zoo.ray_engine.RayEngine`` (an actor pool on Ray); either writes the same entry.
        """
        import filelock

        if chunk_size < 1:
            raise InputError(f"chunk_size={chunk_size} must be at least 1")
        if engine != "local":
            from zoo.ray_engine import RayEngine

            engine = RayEngine.of(engine)
        source = _source(data, extractor, key, on_error, image_size, layout, preprocess, column)
        extractor_fp = _fingerprint(extractor)
        name = self._key(extractor_fp, source.fingerprint)
        folder = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.root / f"{name}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if progress:
                print(f"waiting for another process caching {name} ...", file=sys.stderr)
            lock.acquire()
        try:
            manifest = _read_json(folder / MANIFEST)
            if manifest is not None and _valid(folder, manifest):
                if on_error == "raise" and manifest.get("skipped"):
                    bad = manifest["skipped"][0]
                    raise InputError(
                        f"cannot read image {bad['path']} ({bad['reason']}); remove or fix it, or skip "
                        "unreadable files (on_error='skip', the default; without --strict-images)"
                    )
                return _result(folder, manifest, reused=True, source=source)
            if manifest is None or not _resumable(manifest, extractor_fp, source.fingerprint):
                shutil.rmtree(folder, ignore_errors=True)
                manifest = {
                    "format": FORMAT_VERSION,
                    "extractor": extractor_fp,
                    "dataset": source.fingerprint,
                    "dataset_description": source.description,
                    "length": source.length,
                    "created": time.time(),
                    "next": 0,
                    "rows": 0,
                    "chunks": 0,
                    "shape": None,
                    "dtype": None,
                    "skipped": [],
                    "complete": False,
                }
            if engine == "local":
                computed = _computed(source, extractor, manifest["next"], chunk_size)
            else:
                computed = engine.computed(source, extractor, manifest["next"], chunk_size)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                _fill(folder, manifest, source, computed, progress)
            except OSError as exc:
                if exc.errno in _DISK_FULL:
                    raise _disk_full(exc, folder) from None
                raise
            finally:
                computed.close()  # stops a Ray job at once when writing failed
            return _result(folder, manifest, reused=False, source=source)
        finally:
            lock.release()


def _fingerprint(extractor: Any) -> str:
    fp = getattr(extractor, "fingerprint", None)
    if not isinstance(fp, str) or not fp:
        raise InputError(
            f"{type(extractor).__name__} has no fingerprint; the cache key needs one that changes "
            "with the model, the cut and the preprocessing (zoo.load_extractor gives one)"
        )
    return fp


def _resumable(manifest: dict[str, Any], extractor_fp: str, dataset_fp: str) -> bool:
    return (
        manifest.get("format") == FORMAT_VERSION
        and manifest.get("extractor") == extractor_fp
        and manifest.get("dataset") == dataset_fp
        and not manifest.get("complete")
    )


def _row_bytes(manifest: dict[str, Any]) -> int:
    return int(np.prod(manifest["shape"], dtype=np.int64)) * np.dtype(manifest["dtype"]).itemsize


def _valid(folder: Path, manifest: dict[str, Any]) -> bool:
    """A complete entry whose file has exactly the bytes its manifest promises."""
    if manifest.get("format") != FORMAT_VERSION or not manifest.get("complete"):
        return False
    path = folder / FEATURES
    try:
        return path.stat().st_size == HEADER_BYTES + manifest["rows"] * _row_bytes(manifest)
    except (OSError, KeyError, TypeError):
        return False


def _computed(
    source: _Source, extractor: Any, start: int, chunk_size: int
) -> Iterator[tuple[int, int, np.ndarray | None, list[dict]]]:
    """(first row, inputs consumed, features or None, skipped) of each chunk, run in this process."""
    for first, batch, skipped in source.chunks(start, chunk_size):
        rows = source.rows(batch)
        yield first, rows + len(skipped), _run(extractor, batch, rows) if rows else None, skipped


def _fill(
    folder: Path,
    manifest: dict[str, Any],
    source: _Source,
    computed: Iterator[tuple[int, int, np.ndarray | None, list[dict]]],
    progress: bool,
) -> None:
    """Append feature rows chunk by chunk; the manifest records each chunk once it is on disk."""
    from tqdm import tqdm

    path = folder / FEATURES
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # A crash between writing rows and recording them leaves rows the manifest does not
        # know about: drop them, they are computed again.
        known = HEADER_BYTES + (manifest["rows"] * _row_bytes(manifest) if manifest["shape"] else 0)
        os.ftruncate(fd, known)
        if known == HEADER_BYTES:
            os.pwrite(fd, b"\0" * HEADER_BYTES, 0)
        os.lseek(fd, known, os.SEEK_SET)
        bar = tqdm(
            total=source.length,
            initial=manifest["next"],
            unit=source.unit,
            desc="features",
            disable=not progress or not sys.stderr.isatty(),  # no bar in logs and pipes
            file=sys.stderr,
            leave=False,
        )

        def checkpoint() -> None:
            # Rows first, then the manifest that vouches for them: fsync makes the order hold
            # on disk too, so a manifest never counts rows a power cut could lose.
            os.fsync(fd)
            _write_json(folder / MANIFEST, manifest)

        last, dirty = time.monotonic(), False
        try:
            with bar:
                for start, consumed, out, skipped in computed:
                    if out is not None:
                        shape, dtype = list(out.shape[1:]), out.dtype.str
                        if manifest["shape"] is None:
                            manifest["shape"], manifest["dtype"] = shape, dtype
                        elif shape != manifest["shape"] or dtype != manifest["dtype"]:
                            raise InputError(
                                f"the extractor returned {out.dtype}{shape} rows for the batch at row {start}, "
                                f"but {manifest['dtype']}{manifest['shape']} before; its output shape must "
                                "not depend on the batch"
                            )
                        _write_all(fd, memoryview(out).cast("B"))
                        manifest["rows"] += len(out)
                    manifest["next"] = start + consumed
                    manifest["chunks"] += 1
                    manifest["skipped"] += skipped
                    dirty = True
                    bar.update(consumed)
                    # Recording progress costs two fsyncs; once a second bounds both that cost
                    # and the work a crash can lose.
                    if time.monotonic() - last >= CHECKPOINT_SECONDS:
                        checkpoint()
                        last, dirty = time.monotonic(), False
        finally:
            if dirty:
                try:
                    checkpoint()  # keep the complete chunks of an interrupted run
                except OSError:
                    pass  # no room even for that: the previous checkpoint still stands
        if manifest["shape"] is None:
            raise InputError("no input could be read, so there are no features; see the skipped files")
        os.pwrite(fd, _npy_header((manifest["rows"], *manifest["shape"]), np.dtype(manifest["dtype"])), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    if source.labels is not None:
        dropped = [s["index"] for s in manifest["skipped"]]
        labels = np.delete(source.labels, dropped) if dropped else source.labels
        with atomic_open(folder / LABELS, fsync=True) as lf:
            np.save(lf, labels)
        manifest["classes"] = source.classes
    manifest["length"] = manifest["next"]
    manifest["complete"] = True
    manifest["completed"] = time.time()
    _write_json(folder / MANIFEST, manifest)


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until every byte is written (a write may take only part of them)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _run(extractor: Any, batch: Any, rows: int | None = None) -> np.ndarray:
    """Features of one chunk, one flat row per sample; `rows` counts a chunk of named inputs."""
    rows = len(batch) if rows is None else rows
    out = extractor(batch)
    # An output whose batch is not its first axis (a recurrent state (layers, N, hidden)) is
    # cached batch first, so every row of the cache is one sample.
    axes = getattr(extractor, "output_batch_axes", None) or {}
    if isinstance(out, dict):  # an extractor cut at several layers: {layer: features}
        out = [np.moveaxis(np.asarray(o), axes.get(k, 0), 0) for k, o in out.items()]
    elif len(axes) == 1 and next(iter(axes.values())):
        out = np.moveaxis(np.asarray(out), next(iter(axes.values())), 0)
    if isinstance(out, (list, tuple)):  # several outputs: cache them side by side, flattened
        out = np.concatenate([np.asarray(o).reshape(rows, -1) for o in out], axis=1)
    out = np.ascontiguousarray(out)
    if out.ndim < 1 or len(out) != rows:
        raise InputError(
            f"the extractor returned {out.shape} for a batch of {rows}; it must return one row per input"
        )
    return out


def _result(
    folder: Path, manifest: dict[str, Any], *, reused: bool, source: _Source | None = None
) -> CachedFeatures:
    features = np.load(folder / FEATURES, mmap_mode="r")
    labels = np.load(folder / LABELS) if (folder / LABELS).exists() else None
    return CachedFeatures(
        key=folder.name,
        path=folder / FEATURES,
        features=features,
        labels=labels,
        classes=manifest.get("classes"),
        skipped=list(manifest.get("skipped", [])),
        reused=reused,
    )


# ---------------------------------------------------------------------------------------------
# One-call functions.


def extract_features(
    extractor: FeatureExtractor,
    data: Any,
    *,
    key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    on_error: str = "skip",
    image_size: tuple[int, int] | None = None,
    layout: str | None = None,
    preprocess: bool | None = None,
    column: str | None = None,
    engine: Any = "local",
) -> CachedFeatures:
    """Features of `data` through `extractor`, with labels and skipped files for an image folder.

    `data` is a numpy array, a ``.npy`` path, image files (a folder with one sub-folder per
    class, a flat folder, one file or a list of paths: they get the model's InputSpec unless
    ``preprocess=False``), a Parquet file or folder (one row per input in a tensor column; `column`
    names it when there are several), an iterable of batches (then `key` names its content), or
    for a multi-input extractor a dict of named inputs (arrays or ``.npy`` paths;
    ``{"input_ids": "ids.npy", "attention_mask": mask}``, split along each input's batch axis,
    scalars fed whole). ``engine="ray"`` runs the extractor on a Ray actor pool instead of this
    process (see ``zoo.ray_engine.RayEngine``); the cache entry is the same. See
    :func:`cache_features`.
    """
    return FeatureCache(cache_dir).features(
        extractor,
        data,
        key=key,
        chunk_size=chunk_size,
        progress=progress,
        on_error=on_error,
        image_size=image_size,
        layout=layout,
        preprocess=preprocess,
        column=column,
        engine=engine,
    )


def cache_features(
    extractor: FeatureExtractor,
    data: Any,
    *,
    key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    on_error: str = "skip",
    image_size: tuple[int, int] | None = None,
    layout: str | None = None,
    preprocess: bool | None = None,
    column: str | None = None,
    engine: Any = "local",
) -> np.ndarray:
    """Run `data` through a frozen `extractor` once; later calls (any process) reuse the result.

    The features are written chunk by chunk to ``<cache>/features/<key>/features.npy`` and
    returned memory-mapped, so a dataset larger than memory needs only one chunk of RAM. The
    key hashes the extractor's fingerprint (model file, cut, preprocessing) and the data (its
    bytes, every input's for a dict of named inputs; for an image folder its file names, sizes
    and times). An interrupted run resumes at
    the last chunk on disk.

    >>> features = zoo.cache_features(extractor, "train.npy")    # doctest: +SKIP
    """
    return extract_features(
        extractor,
        data,
        key=key,
        cache_dir=cache_dir,
        chunk_size=chunk_size,
        progress=progress,
        on_error=on_error,
        image_size=image_size,
        layout=layout,
        preprocess=preprocess,
        column=column,
        engine=engine,
    ).features


def save_features(
    extractor: FeatureExtractor,
    data: Any,
    output: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    on_error: str = "skip",
    image_size: tuple[int, int] | None = None,
    layout: str | None = None,
    preprocess: bool | None = None,
    column: str | None = None,
    engine: Any = "local",
) -> CachedFeatures:
    """`zoo extract`'s one call: cache the features, then copy them to `output` (.npy) in chunks."""
    result = extract_features(
        extractor,
        data,
        cache_dir=cache_dir,
        chunk_size=chunk_size,
        progress=progress,
        on_error=on_error,
        image_size=image_size,
        layout=layout,
        preprocess=preprocess,
        column=column,
        engine=engine,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(result.path, "rb") as src, atomic_open(output, fsync=True) as dst:
            shutil.copyfileobj(src, dst, _READ_BLOCK)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(f"no room left to write {output} ({os.strerror(exc.errno)}); free some space") from None
        raise
    return result
