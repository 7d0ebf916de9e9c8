"""Data sources: what the feature cache reads, a chunk at a time, behind one protocol.

A `DataSource` knows its fingerprint (which changes whenever its rows would), its length, its
labels and classes (an image folder's), the files it reads, and yields ``(first row, batch,
skipped inputs)`` chunks from any row on, so a run resumes where it stopped and an engine can
read its chunks anywhere. `as_source` picks the source for what a user passes: an array, a
``.npy`` file, image files, Parquet (`zoo.parquet.ParquetSource`), an iterable of batches, or
the named inputs of a multi-input model. Each format implements the protocol openly, as Ray Data's
``Datasource`` does; a user's own source only has to provide the same members.

How image files become model input depends on the model (its size, layout, preprocessing), so
`as_source` takes the extractor when it has one; a source made without it is fitted to one later
(`for_extractor`), which is how ``as_source("photos/", on_error="raise")`` can be passed to
`zoo.train` before the model is loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from zoo.errors import InputError, option
from zoo.npy import load as load_npy
from zoo.npy import read_header

__all__ = [
    "ArraySource",
    "DataSource",
    "ImageSource",
    "InputsSource",
    "IterableSource",
    "NpyFileSource",
    "as_source",
    "is_source",
]

_READ_BLOCK = 4 << 20
# A chunk: (index of its first input, the batch, the inputs skipped in it: index, path, reason).
Chunk = tuple[int, Any, list[dict[str, Any]]]


@runtime_checkable
class DataSource(Protocol):
    """Rows of model input, read a chunk at a time from any row on.

    ``fingerprint`` must change whenever the rows would (the cache key hashes it);
    ``length`` is None when unknown before reading (an iterable); ``labels`` and ``classes``
    are an image folder's (class indices, class names), else None; ``unit`` names a row in
    progress bars.
    """

    fingerprint: str
    description: str
    length: int | None
    labels: np.ndarray | None
    classes: list[str] | None
    unit: str

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
        """Chunks of up to `chunk_size` inputs from input `start` on, in order."""

    def ranges(self, start: int, chunk_size: int) -> list[tuple[int, int]]:
        """The (first, end) inputs of the chunks `chunks(start, chunk_size)` yields."""

    def rows(self, batch: Any) -> int:
        """Samples in one chunk's batch (a batch of named inputs counts along its batch axis)."""

    def paths(self) -> list[Path]:
        """The files or folders it reads (none for data in memory): an engine on another machine needs them."""

    def for_extractor(self, extractor: Any) -> DataSource:
        """This source as `extractor` reads it (image files sized and preprocessed for its input)."""


class SourceBase:
    """Defaults for the protocol's members: rows are the batch's first axis, chunks are contiguous."""

    description = ""
    length: int | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    unit = "rows"

    def ranges(self, start: int, chunk_size: int) -> list[tuple[int, int]]:
        if self.length is None:
            raise InputError(
                "this data has no length until it is read (an iterable of batches), so its chunks "
                "cannot be handed out ahead; run it in this process (engine='local')"
            )
        return [(lo, min(lo + chunk_size, self.length)) for lo in range(start, self.length, chunk_size)]

    def rows(self, batch: Any) -> int:
        return len(batch)

    def paths(self) -> list[Path]:
        return []

    def for_extractor(self, extractor: Any) -> DataSource:
        return self  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def array_fingerprint(array: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes, read in blocks of rows (a .npy file's source hashes the same)."""
    digest = hashlib.sha256(f"array|{array.dtype.str}|{array.shape}".encode())
    if array.ndim == 0:
        digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()
    rows = max(1, _READ_BLOCK // max(1, array[:1].nbytes))
    for i in range(0, len(array), rows):
        digest.update(np.ascontiguousarray(array[i : i + rows]).data)
    return digest.hexdigest()


class ArraySource(SourceBase):
    """An array already in memory (or any array-like numpy can slice)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.dtype == object:
            raise InputError("the data array has dtype object; give a numeric array (e.g. float32)")
        if array.ndim < 1 or len(array) == 0:
            raise InputError(f"the data array is empty (shape {array.shape}); give at least one row")
        self.array = array
        self.length = len(array)
        self.fingerprint = array_fingerprint(array)
        self.description = f"array {array.dtype}{list(array.shape)}"

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
        for i in range(start, self.length, chunk_size):
            yield i, np.ascontiguousarray(self.array[i : i + chunk_size]), []


class NpyFileSource(SourceBase):
    """A .npy file read a chunk at a time with plain reads.

    Plain reads rather than ``np.load(mmap_mode="r")``: pages of a memory map count in the
    process's resident size until the kernel reclaims them, so a map over a dataset larger
    than memory looks (and is accounted) as if it were all loaded.
    """

    def __init__(self, path: Path, layout: tuple[tuple[int, ...], np.dtype, int] | None = None) -> None:
        self.path = path
        if layout is not None:  # a memory map the caller opened: its shape, dtype and offset
            (shape, dtype, self.offset), fortran = layout, False
        else:  # the header, checked against the file's size: no row is read past its end (zoo.npy)
            header = read_header(path)
            shape, fortran, dtype, self.offset = header.shape, header.fortran, header.dtype, header.offset
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

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
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

    def paths(self) -> list[Path]:
        return [self.path]


class ImageSource(SourceBase):
    """Image files (one sub-folder per class, a flat folder, one file or a list), decoded with Pillow.

    Images are resized and centre-cropped to the net's input (``zoo.images.geometry``), then:
    ``"spec"`` applies the model's InputSpec here; ``"pixels"`` hands (N, H, W, C) raw pixels to
    an extractor that preprocesses them itself; ``"raw"`` gives 0-255 pixels in the net's layout.
    Which one, and the size, come from the extractor: a source made without one (and without
    `image_size`) is fitted to it by `for_extractor` before it is read.
    """

    unit = "img"

    def __init__(
        self,
        files: list[Path],
        description: str,
        *,
        classes: list[str] | None = None,
        labels: list[int] | None = None,
        root: Path | None = None,
        on_error: str = "skip",
        image_size: tuple[int, int] | None = None,
        layout: str | None = None,
        preprocess: bool | None = None,
        extractor: Any = None,
    ) -> None:
        self.files, self.classes, self.root, self.description = files, classes, root, description
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.length = len(files)
        self.on_error, self.image_size, self.preprocess = on_error, image_size, preprocess
        self.requested_layout = layout
        self._made_for = _image_view(extractor)
        self._fingerprint: str | None = None
        self._fit(extractor, defer=extractor is None)

    def _fit(self, extractor: Any, defer: bool) -> None:
        """How the pixels are prepared for `extractor`: size, layout, mode; the fingerprint that follows."""
        from zoo import images

        spec = getattr(extractor, "input_spec", None)
        shape = list(getattr(spec, "shape", None) or [])
        layout = self.requested_layout or getattr(spec, "layout", None)
        if len(shape) == 4 and layout is None:
            layout = "NCHW" if shape[1] in (1, 3) else "NHWC"
        layout = layout or "NCHW"
        if layout not in ("NCHW", "NHWC"):
            raise InputError(f"image layout {layout!r} is not one of NCHW, NHWC; pass layout='NCHW' or 'NHWC'")  # Python only
        geometry = images.geometry(spec, self.image_size)
        if geometry.resize is None and geometry.crop is None:
            if defer:  # sized when fitted to an extractor
                self.geometry = None
                return
            raise InputError(
                "the extractor does not say its input image size; pass "
                + option("image_size", value=(224, 224), cli="224,224") + " (the size to resize images to)"
            )
        own = getattr(extractor, "preprocess", None)
        if own is True:
            mode = "pixels"  # the extractor was loaded with preprocess=True: it applies the spec itself
        elif own is False or self.preprocess is False or spec is None:
            mode = "raw"
        else:
            from dataclasses import replace

            from zoo.preprocessing import warn_if_missing

            warn_if_missing(spec, getattr(extractor, "source", None) or "the model")
            mode, spec = "spec", replace(spec, layout=layout)
        self.geometry, self.layout, self.mode, self.spec = geometry, layout, mode, spec
        # Paths, sizes and modification times stand for the bytes: hashing every image would
        # cost a full read of the folder on each run. What is done to the pixels counts too.
        how = {"geometry": geometry.to_dict(), "layout": layout, "mode": mode,
               "spec": spec.to_dict() if mode == "spec" else None}
        digest = hashlib.sha256(f"images|{json.dumps(how, sort_keys=True)}".encode())
        for path in self.files:
            stat = path.stat()
            name = path.relative_to(self.root) if self.root is not None else path.absolute()
            digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        self._fingerprint = digest.hexdigest()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            raise InputError(
                "the image files have no size to be read at yet; pass "
                + option("image_size", value=(224, 224), cli="224,224") + ", or "
                "let the feature cache fit them to a model's extractor"
            )
        return self._fingerprint

    def for_extractor(self, extractor: Any) -> ImageSource:
        if _image_view(extractor) == self._made_for and self._fingerprint is not None:
            return self
        return ImageSource(
            self.files, self.description, classes=self.classes,
            labels=None if self.labels is None else list(self.labels), root=self.root,
            on_error=self.on_error, image_size=self.image_size, layout=self.requested_layout,
            preprocess=self.preprocess, extractor=extractor,
        )

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        from zoo import images

        if self.mode == "raw":
            return images.to_layout(pixels, self.layout)
        pixels = images.to_pixel_range(pixels, self.spec)
        return pixels if self.mode == "pixels" else images.preprocess(pixels, self.spec)

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
        from zoo.images import read_images, stack_images

        self.fingerprint  # noqa: B018  an image source never fitted to a size cannot be read
        for i in range(start, self.length, chunk_size):
            decoded, skipped = read_images(self.files[i : i + chunk_size], self.geometry, self.on_error, start=i)
            batch = self._batch(stack_images(decoded)) if decoded else np.empty((0,), dtype=np.float32)
            yield i, batch, skipped

    def paths(self) -> list[Path]:
        return [self.root] if self.root is not None else self.files[:1]


def _image_view(extractor: Any) -> Any:
    """What of an extractor decides how image files are read: its input spec and preprocessing."""
    if extractor is None:
        return None
    spec = getattr(extractor, "input_spec", None)
    return (spec.to_dict() if hasattr(spec, "to_dict") else spec, getattr(extractor, "preprocess", None))


def _batch_axes(extractor: Any) -> dict[str, int | None]:
    return dict(getattr(extractor, "batch_axes", None) or {})


class IterableSource(SourceBase):
    """Any iterable of batches; the user's key stands for its content."""

    def __init__(self, batches: Iterable, key: str, extractor: Any = None) -> None:
        self.batches, self.key = batches, key
        self.axes = _batch_axes(extractor)
        self.fingerprint = hashlib.sha256(f"iterable|{key}".encode()).hexdigest()
        self.description = f"iterable key={key!r}"

    def for_extractor(self, extractor: Any) -> IterableSource:
        if _batch_axes(extractor) == self.axes:
            return self
        return IterableSource(self.batches, self.key, extractor)

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
        row = 0
        for batch in self.batches:
            batch = {k: np.asarray(v) for k, v in batch.items()} if isinstance(batch, Mapping) else np.asarray(batch)
            if row >= start:
                yield row, batch, []
            row += self.rows(batch)

    def rows(self, batch: Any) -> int:
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


class InputsSource(SourceBase):
    """Named inputs of a multi-input extractor: arrays or .npy files sharing one batch axis.

    Each input is split along its batch axis (``extractor.batch_axes``, else axis 0); one
    without a batch axis (a scalar sample rate) goes whole with every chunk. The fingerprint
    covers every input, so changing any of them computes the features again.
    """

    def __init__(self, data: Mapping[str, Any], extractor: Any = None) -> None:
        if not data:
            raise InputError("the dict of inputs is empty; give {input name: array or .npy path}")
        self.data = data
        self.axes = _batch_axes(extractor)
        self.inputs: dict[str, tuple[Any, int | None]] = {}
        lengths: dict[str, int] = {}
        digest = hashlib.sha256(b"inputs")
        self.files: dict[str, NpyFileSource] = {}  # batch-first files, read with plain reads
        for name in sorted(data):
            value = data[name]
            if isinstance(value, (str, os.PathLike)):
                value = _load_npy(Path(value).expanduser(), name)
            elif not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype.hasobject:
                raise InputError(f"input {name!r} has dtype {value.dtype}; give a numeric array (e.g. int64 token ids)")
            axis = self.axes.get(name, 0) if value.ndim else None
            if axis is not None and value.ndim <= axis:
                axis = None
            if axis is not None:
                lengths[name] = value.shape[axis]
            self.inputs[name] = (value, axis)
            if axis == 0 and len(value) and whole_file_map(value):
                # As for a single .npy file: plain reads keep the process's resident size bounded.
                self.files[name] = NpyFileSource(Path(value.filename), (value.shape, value.dtype, value.offset))
                fingerprint = self.files[name].fingerprint
            else:
                fingerprint = array_fingerprint(value)
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

    def for_extractor(self, extractor: Any) -> InputsSource:
        if _batch_axes(extractor) == self.axes:
            return self
        return InputsSource(self.data, extractor)

    def chunks(self, start: int, chunk_size: int) -> Iterator[Chunk]:
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

    def rows(self, batch: Any) -> int:
        name, axis = next((k, a) for k, (_, a) in self.inputs.items() if a is not None)
        return batch[name].shape[axis]

    def paths(self) -> list[Path]:
        return [reader.path for reader in self.files.values()][:1]


def _load_npy(path: Path, name: str) -> np.ndarray:
    """One named input's .npy file, mapped for its header and rows (never unpickled)."""
    if not path.is_file():
        raise InputError(f"input {name!r}: {path} is not a file; give a .npy array saved with numpy.save")
    return load_npy(path, mmap=True, what=f"input {name!r}")


def _is_npy(path: Path) -> bool:
    """A .npy file by its magic bytes, whatever its name."""
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def whole_file_map(data: Any) -> bool:
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


def is_source(value: Any) -> bool:
    """Whether `value` is a data source (has the protocol's methods; its attributes are not read,
    since an image source not yet fitted to a model has no fingerprint to read)."""
    kind = type(value)
    return all(callable(getattr(kind, name, None)) for name in ("chunks", "ranges", "rows", "paths", "for_extractor"))


def _image_source(data: Any, extractor: Any, options: dict[str, Any]) -> ImageSource:
    """Image files: a folder with one sub-folder per class (its labels), a flat folder, a file, a list."""
    from zoo import images

    path = Path(data).expanduser() if isinstance(data, (str, os.PathLike)) else None
    found = images.class_folders(path) if path is not None and path.is_dir() else None
    if found is not None:
        classes, files, labels = found
        return ImageSource(files, f"{path} ({len(files)} files, {len(classes)} classes)", classes=classes,
                           labels=labels, root=path, extractor=extractor, **options)
    files = images.image_files(data)
    description = f"{path} ({len(files)} images)" if path is not None else f"{len(files)} image files"
    return ImageSource(files, description, root=path if path is not None and path.is_dir() else None,
                       extractor=extractor, **options)


def as_source(
    data: Any,
    extractor: Any = None,
    *,
    key: str | None = None,
    on_error: str = "skip",
    image_size: tuple[int, int] | None = None,
    layout: str | None = None,
    preprocess: bool | None = None,
    column: str | None = None,
) -> DataSource:
    """The data source for `data`, read as `extractor` needs it.

    Args:
        data: a numpy array (a memory map of a whole ``.npy`` file is read from the file), a
            ``.npy`` path, image files (a folder with one sub-folder per class, a flat folder,
            one file or a list of paths), a Parquet file or folder, an iterable of batches, a
            dict of named inputs for a multi-input model (arrays or ``.npy`` paths), or a
            `DataSource` (fitted to `extractor` and returned).
        extractor: the extractor the rows are for: image files take its input size, layout and
            preprocessing; named inputs and batches its batch axes. Optional when neither applies.
        key: names an iterable's content (it has no fingerprint of its own); change it when the data changes.
        on_error: "skip" (an unreadable image is left out and reported) or "raise".
        image_size: (height, width) for images when the model does not fix its input size.
        layout: "NCHW" or "NHWC" for images, when the model does not say.
        preprocess: False hands images to the model as 0-255 pixels, without its InputSpec.
        column: the Parquet column of inputs, when several hold arrays.

    Returns:
        A `DataSource`.

    Raises:
        InputError: the data cannot be read, is empty, or an option does not apply to it.

    >>> source = zoo.as_source("photos/", on_error="raise")            # doctest: +SKIP
    >>> zoo.extract_features(extractor, source).features.shape          # doctest: +SKIP
    """
    from zoo.images import is_image_input

    if on_error not in ("skip", "raise"):
        raise InputError(f"on_error={on_error!r} is not one of 'skip', 'raise'")
    if is_source(data):
        return data.for_extractor(extractor) if extractor is not None else data
    images = {"on_error": on_error, "image_size": image_size, "layout": layout, "preprocess": preprocess}
    if isinstance(data, (str, os.PathLike)):
        from zoo import parquet

        path = Path(data).expanduser()
        if parquet.is_parquet(path):
            return parquet.ParquetSource(path, column)
        if column is not None:
            raise InputError(f"{option('column', column)} applies to Parquet input only; {path} is not a Parquet "
                             "file or folder")
        if path.is_file() and path.suffix.lower() == ".npy" or path.is_file() and _is_npy(path):
            return NpyFileSource(path)
        if path.is_dir() or path.is_file():
            return _image_source(path, extractor, images)
        if path.exists():  # a FIFO, socket or device: reading one can block forever
            raise InputError(f"{path} is not a regular file or folder; give a .npy file, image files or a folder")
        raise InputError(
            f"{path} does not exist; give a .npy file, an image file, a folder of images or a folder "
            "with one sub-folder per class"
        )
    if isinstance(data, Mapping):  # named inputs of a multi-input extractor
        return InputsSource(data, extractor)
    if is_image_input(data):  # a list of image paths
        return _image_source(data, extractor, images)
    if whole_file_map(data):
        # np.load(path, mmap_mode="r"): read the file instead, so RAM stays bounded (see NpyFileSource)
        return NpyFileSource(Path(data.filename), (data.shape, data.dtype, data.offset))
    if isinstance(data, np.ndarray):
        return ArraySource(data)
    if isinstance(data, Iterable):
        if key is None:
            raise InputError(
                "an iterable of batches has no fingerprint of its own; pass key='...' naming its "
                "content (change the key when the data changes)"
            )
        return IterableSource(data, key, extractor)
    raise InputError(
        f"cannot cache features of a {type(data).__name__}; give a numpy array, a .npy path, an "
        "image folder or an iterable of batches with key=..."
    )
