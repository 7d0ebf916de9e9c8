"""Feature cache: run a dataset through a frozen extractor once and keep the outputs on disk.

One job: the resumable cache. What is read is a data source's (`zoo.datasources`), where the
chunks are computed an engine's (`zoo.engines`); this module keys, writes, checkpoints and
reuses the entries, ``<cache>/features/<key>/``.
"""
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
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from zoo.atomic import atomic_open, write_error
from zoo.cache import features_folder
from zoo.units import human_size
from zoo.errors import DiskFullError, InputError, option, spelled
from zoo.datasources import as_source
from zoo.engines import Computed, LocalEngine, engine_for
from zoo.images import describe_skipped  # the one rule for unreadable images (zoo.images)
from zoo.lineage import Lineage, features_lineage
from zoo.manifests import FEATURES_VERSION, FeatureManifest
from zoo.npy import load as load_npy
from zoo.npy import read_header

if TYPE_CHECKING:
    from zoo.datasources import DataSource
    from zoo.engines import Engine

__all__ = [
    "RowCache",
    "CacheEntry",
    "CachedFeatures",
    "FeatureCache",
    "cache_features",
    "describe_skipped",
    "extract_features",
    "save_features",
    "save_layer_features",
]

MANIFEST = "manifest.json"
FEATURES = "features.npy"
LABELS = "labels.npy"
# The .npy header is written last, into a fixed slot, so rows can be appended before the final
# row count is known (iterables have no length) and a half-written file never loads as an array.
HEADER_BYTES = 256
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
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable inputs: index, path, reason
    reused: bool = False  # True when nothing had to be computed
    lineage: dict[str, Any] | None = None  # zoo.lineage.Lineage of the entry (None: made before lineage)
    index_path: Path | None = None  # the CSV that lines rows up with input files (`save_features`)


@dataclass
class RowIndex:
    """What lines feature rows up with the inputs they came from (`zoo extract`'s index).

    ``paths`` has the file of each feature row (None for arrays, whose rows are the inputs),
    ``labels`` a class folder's class index per row and ``classes`` its class names; ``inputs``
    every input file in order (``input_labels`` their class indices), ``skipped`` those left
    out (index, path, reason).
    """

    paths: list[str] | None
    labels: np.ndarray | None
    classes: list[str] | None
    inputs: list[str]
    skipped: list[dict[str, Any]]
    input_labels: np.ndarray | None = None

    @property
    def has_files(self) -> bool:
        return self.paths is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for an ``.npz`` beside ``features`` (strings as unicode, never pickled)."""
        out: dict[str, np.ndarray] = {}
        if self.paths is not None:
            out["paths"] = np.asarray(self.paths, dtype=str)
        if self.labels is not None:
            out["labels"] = np.asarray(self.labels)
        if self.classes is not None:
            out["classes"] = np.asarray(self.classes, dtype=str)
        if self.paths is not None or self.skipped:
            out["skipped_paths"] = np.asarray([str(s.get("path")) for s in self.skipped], dtype=str)
            out["skipped_reasons"] = np.asarray([str(s.get("reason")) for s in self.skipped], dtype=str)
        return out

    def table(self) -> list[dict[str, Any]]:
        """One dict per input file: input, path, row (None when skipped), label (class name), skipped (reason)."""
        reasons = {s["index"]: s.get("reason") for s in self.skipped}
        out, row = [], 0
        for i, path in enumerate(self.inputs):
            entry: dict[str, Any] = {"input": i, "path": path, "row": None, "label": None, "skipped": reasons.get(i)}
            if self.input_labels is not None:
                label = self.input_labels[i].item()
                entry["label"] = self.classes[label] if self.classes else label
            if i not in reasons:
                entry["row"] = row
                row += 1
            out.append(entry)
        return out


def row_index(cached: CachedFeatures, source: Any) -> RowIndex:
    """The `RowIndex` of cached features computed from `source`."""
    files = getattr(source, "files", None)
    if files is None:
        return RowIndex(None, cached.labels, cached.classes, [], list(cached.skipped))
    dropped = {s["index"] for s in cached.skipped}
    inputs = [str(f) for f in files]
    return RowIndex([p for i, p in enumerate(inputs) if i not in dropped], cached.labels, cached.classes, inputs,
                    list(cached.skipped), getattr(source, "labels", None))


def write_index(rows: RowIndex, path: Path) -> Path:
    """The CSV of `rows.table()` at `path`, written atomically."""
    import csv

    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=["input", "path", "row", "label", "skipped"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.table())
    return path


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
    model: str | None = None  # the model the features come from (`zoo cache rm --model` finds them)
    layer: Any = None  # the layer they were cut at

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
            "model": self.model,
            "layer": self.layer,
        }


# ---------------------------------------------------------------------------------------------
# Files of one cache entry.


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
        f"no room left to cache features in {entry} ({os.strerror(exc.errno)}; {human_size(free)} free); "
        "free some space (`zoo cache list`, `zoo cache rm KEY`) and run again: it resumes from the "
        "last complete chunk", path=str(entry),
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
        return hashlib.sha256(f"{FEATURES_VERSION}|{extractor_fp}|{dataset_fp}".encode()).hexdigest()[:32]

    def key(self, extractor: FeatureExtractor, data: Any) -> str:
        """The cache key of `data` (a `DataSource`, or anything `zoo.as_source` takes) through
        `extractor`: both fingerprints, hashed."""
        return self._key(_fingerprint(extractor), as_source(data, extractor).fingerprint)

    def entries(self) -> list[CacheEntry]:
        """Every entry in the cache, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        entries = []
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            manifest = FeatureManifest.read(folder / MANIFEST)
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            entries.append(
                CacheEntry(
                    key=folder.name,
                    path=folder,
                    complete=bool(manifest and manifest.complete),
                    rows=manifest.rows if manifest else 0,
                    shape=manifest.shape if manifest else None,
                    dtype=manifest.dtype if manifest else None,
                    bytes=size,
                    created=manifest.created if manifest else None,
                    extractor=manifest.extractor if manifest else None,
                    dataset=manifest.dataset_description if manifest else None,
                    model=manifest.model if manifest else None,
                    layer=manifest.layer if manifest else None,
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
        manifest = FeatureManifest.read(folder / MANIFEST)
        if manifest is None or not _valid(folder, manifest):
            raise InputError(f"feature cache entry {folder.name} is not complete; run the extraction again to finish it")
        return _result(folder, manifest, reused=True)

    # -- computing ---------------------------------------------------------------------------

    def features(
        self,
        extractor: FeatureExtractor,
        data: Any,
        *,
        chunk_size: int | None = None,
        progress: bool = True,
        engine: str | Engine = "local",
        on_error: str = "skip",
        image_size: Sequence[int] | None = None,
    ) -> CachedFeatures:
        """Features of `data` through `extractor`: reused when cached, else computed (or resumed).

        Args:
            extractor: the frozen layers (`zoo.load_extractor`); its fingerprint keys the entry.
            data: a `DataSource`, or anything `zoo.as_source` takes (image files get the
                extractor's InputSpec).
            chunk_size: inputs per chunk, the unit of work, of resuming and of the progress bar;
                default the extractor's batch size in this process, 256 on another engine.
            progress: a progress bar on stderr when it is a terminal.
            engine: where missing chunks are computed: "local" (this process), "ray" (a Ray
                actor pool) or an `Engine`; either writes the same entry.
            on_error: an image that cannot be read is left out and reported ("skip") or stops
                the run ("raise"); for data given as a path or list (a source has its own).
            image_size: (height, width) for images when the model does not fix its input size.

        Returns:
            The features, memory-mapped, with an image folder's labels and the skipped inputs.

        Raises:
            InputError: bad data, or (with ``on_error="raise"``) an unreadable image.
            DiskFullError: no room left; the chunks written so far are kept for the next run.
        """
        import filelock

        engine = engine_for(engine)
        if chunk_size is None:
            # In this process a chunk is one batch of the extractor: the bar moves per batch and a
            # crash loses at most one. Another engine hands chunks out as tasks, which want more rows.
            chunk_size = getattr(extractor, "batch_size", None) or 256 if isinstance(engine, LocalEngine) else 256
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"chunk_size={chunk_size} must be at least 1")
        source = as_source(data, extractor, on_error=on_error, image_size=image_size)
        extractor_fp = _fingerprint(extractor)
        name = self._key(extractor_fp, source.fingerprint)
        folder = self.root / name
        lock = filelock.FileLock(str(self.root / f"{name}.lock"))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if progress:
                print(f"waiting for another process caching {name} ...", file=sys.stderr)
            lock.acquire()
        except OSError as exc:  # a cache folder that cannot be written: one line, not a traceback
            raise write_error(exc, self.root / name) from None
        try:
            manifest = FeatureManifest.read(folder / MANIFEST)
            if manifest is not None and _valid(folder, manifest):
                # Only image sources skip inputs; a strict one refuses an entry that skipped some.
                if getattr(source, "on_error", "skip") == "raise" and manifest.skipped:
                    bad = manifest.skipped[0]
                    raise InputError(
                        f"cannot read image {bad['path']} ({bad['reason']}); remove or fix it, or skip "
                        f"unreadable files ({option('on_error', 'skip')}, the default)"
                    )
                return _result(folder, manifest, reused=True)
            if manifest is None or not manifest.resumes(extractor_fp, source.fingerprint):
                shutil.rmtree(folder, ignore_errors=True)
                layer = getattr(extractor, "layer", None)
                manifest = FeatureManifest(extractor=extractor_fp, dataset=source.fingerprint,
                                           dataset_description=source.description, length=source.length,
                                           model=getattr(extractor, "source", None) or None,
                                           layer=layer if isinstance(layer, (str, int, list, type(None))) else str(layer),
                                           revision=getattr(extractor, "revision", None))
            computed = engine.computed(source, extractor, manifest.next, chunk_size)
            folder.mkdir(parents=True, exist_ok=True)
            lineage = features_lineage(extractor, source.fingerprint, source.description,
                                       engine=type(engine).__name__)
            try:
                _fill(folder, manifest, source, computed, progress, lineage)
            except BaseException as exc:
                if manifest.rows == 0:
                    # Refused, or nothing read: an entry with no rows would only be listed as "0 rows, partial".
                    shutil.rmtree(folder, ignore_errors=True)
                if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
                    raise _disk_full(exc, folder) from None
                raise
            finally:
                computed.close()  # stops a Ray job at once when writing failed
            return _result(folder, manifest, reused=False)
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


def _valid(folder: Path, manifest: FeatureManifest) -> bool:
    """A complete entry whose file has exactly the bytes its manifest promises."""
    if manifest.format != FEATURES_VERSION or not manifest.complete or manifest.shape is None:
        return False
    try:
        path = folder / FEATURES
        if path.stat().st_size != HEADER_BYTES + manifest.rows * manifest.row_bytes():
            return False
        header = read_header(path, "cached features")  # the header must say what the manifest says
        return header.shape == (manifest.rows, *manifest.shape) and header.offset == HEADER_BYTES
    except (OSError, TypeError, InputError):
        return False


def _fill(
    folder: Path,
    manifest: FeatureManifest,
    source: DataSource,
    computed: Iterator[Computed],
    progress: bool,
    lineage: Lineage | None = None,
) -> None:
    """Append feature rows chunk by chunk; the manifest records each chunk once it is on disk.

    The rows are hashed as they are written (a resumed entry hashes what it kept first), so the
    complete entry's lineage carries the sha256 of its feature rows at no extra pass.
    """
    from tqdm import tqdm

    path = folder / FEATURES
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    digest = hashlib.sha256()
    try:
        # A crash between writing rows and recording them leaves rows the manifest does not
        # know about: drop them, they are computed again.
        known = HEADER_BYTES + manifest.rows * manifest.row_bytes()
        os.ftruncate(fd, known)
        if known == HEADER_BYTES:
            os.pwrite(fd, b"\0" * HEADER_BYTES, 0)
        for offset in range(HEADER_BYTES, known, _READ_BLOCK):
            digest.update(os.pread(fd, min(_READ_BLOCK, known - offset), offset))
        os.lseek(fd, known, os.SEEK_SET)
        bar = tqdm(
            total=source.length,
            initial=manifest.next,
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
            manifest.write(folder / MANIFEST)

        last, dirty = time.monotonic(), False
        try:
            with bar:
                for start, consumed, out, skipped in computed:
                    if out is not None:
                        shape, dtype = list(out.shape[1:]), out.dtype.str
                        if manifest.shape is None:
                            manifest.shape, manifest.dtype = shape, dtype
                        elif shape != manifest.shape or dtype != manifest.dtype:
                            raise InputError(
                                f"the extractor returned {out.dtype}{shape} rows for the batch at row {start}, "
                                f"but {manifest.dtype}{manifest.shape} before; its output shape must "
                                "not depend on the batch"
                            )
                        rows = memoryview(out).cast("B")
                        _write_all(fd, rows)
                        digest.update(rows)
                        manifest.rows += len(out)
                    manifest.next = start + consumed
                    manifest.chunks += 1
                    manifest.skipped += skipped
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
        if manifest.shape is None:
            raise InputError(f"none of the {len(manifest.skipped) or 'given'} inputs could be read, so there are "
                             f"no features: {describe_skipped(manifest.skipped)}; fix or remove them")
        os.pwrite(fd, _npy_header((manifest.rows, *manifest.shape), np.dtype(manifest.dtype)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    if source.labels is not None:
        dropped = [s["index"] for s in manifest.skipped]
        labels = np.delete(source.labels, dropped) if dropped else source.labels
        with atomic_open(folder / LABELS, fsync=True) as lf:
            np.save(lf, labels)
        manifest.classes = source.classes
    manifest.length = manifest.next
    manifest.complete = True
    manifest.completed = time.time()
    if lineage is not None:
        lineage.sha256 = digest.hexdigest()  # of the feature rows, C order, the manifest's dtype
        lineage.figures = {"rows": manifest.rows, "shape": manifest.shape, "dtype": manifest.dtype,
                           "inputs": manifest.length, "skipped": len(manifest.skipped)}
        manifest.lineage = lineage.to_dict()
    manifest.write(folder / MANIFEST)


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until every byte is written (a write may take only part of them)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _result(folder: Path, manifest: FeatureManifest, *, reused: bool) -> CachedFeatures:
    features = load_npy(folder / FEATURES, mmap=True, what="cached features")
    labels = load_npy(folder / LABELS, what="cached labels") if (folder / LABELS).exists() else None
    return CachedFeatures(
        key=folder.name,
        path=folder / FEATURES,
        features=features,
        labels=labels,
        classes=manifest.classes,
        skipped=list(manifest.skipped),
        reused=reused,
        lineage=manifest.lineage,
    )


# ---------------------------------------------------------------------------------------------
# Per-input rows: the scikit-learn transformer's cache.


ROWS_PREFIX = "rows-"


class RowCache:
    """Feature rows kept per input, for callers that see a dataset in changing subsets.

    Cross-validation and grid search hand a transformer a different slice of the data at every
    fold: a whole-dataset entry would be computed again for each. Here each input is keyed by
    itself (an image file by its path, size and modification time; an array row by its bytes),
    so a row is computed once per extractor whatever slices it comes in. The entry is
    ``<cache>/features/rows-<key>/``: shards of rows (``shard-*.npy``) each with the keys of its
    rows (``shard-*.json``, written after the rows: a shard without it is ignored), and a
    manifest that `zoo cache list` shows (model, layer, rows) and `zoo cache rm` removes.
    Processes that fill one entry at once (``n_jobs``) write separate shards; a row computed
    twice is stored twice and read once.
    """

    def __init__(self, extractor: FeatureExtractor, cache_dir: str | os.PathLike | None = None) -> None:
        self.extractor = extractor
        fingerprint = _fingerprint(extractor)
        key = hashlib.sha256(f"{FEATURES_VERSION}|rows|{fingerprint}".encode()).hexdigest()[:32]
        self.folder = features_folder(cache_dir) / f"{ROWS_PREFIX}{key}"
        self.fingerprint = fingerprint
        self.computed = 0  # rows this object computed (the rest came from the cache)

    @staticmethod
    def keys(items: Any) -> list[str]:
        """One key per input: files by path, size and modification time, array rows by their bytes."""
        keys = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                path = Path(item).expanduser().absolute()
                stat = path.stat()
                text = f"file|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            else:
                row = np.ascontiguousarray(item)
                text = f"row|{row.dtype.str}|{row.shape}|".encode() + row.tobytes()
            keys.append(hashlib.sha256(text).hexdigest()[:40])
        return keys

    def _index(self) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        for side in sorted(self.folder.glob("shard-*.json")):
            try:
                names = json.loads(side.read_text())
            except (OSError, ValueError):
                continue
            for row, key in enumerate(names):
                index.setdefault(key, (side.with_suffix(".npy"), row))
        return index

    def rows(self, items: Any, compute: Any) -> np.ndarray:
        """The rows of `items` (one flat float row each), cached ones read, the others computed by
        ``compute(positions)`` (the positions in `items` still missing) and stored."""
        keys = self.keys(items)
        index = self._index() if self.folder.is_dir() else {}
        missing = [i for i, k in enumerate(keys) if k not in index]
        fresh = None
        if missing:
            fresh = np.ascontiguousarray(compute(missing))
            self.computed += len(missing)
            self._store([keys[i] for i in missing], fresh)
        if fresh is not None and len(missing) == len(keys):
            return fresh
        width = fresh.shape[1:] if fresh is not None else None
        new = {position: i for i, position in enumerate(missing)}
        maps: dict[Path, np.ndarray] = {}
        out = None
        for position, key in enumerate(keys):
            if position in new:
                value = fresh[new[position]]
            else:
                shard, row = index[key]
                if shard not in maps:
                    maps[shard] = np.load(shard, mmap_mode="r")
                value = maps[shard][row]
            if out is None:
                width = width or value.shape
                out = np.empty((len(keys), *width), dtype=value.dtype)
            out[position] = value
        return out if out is not None else np.zeros((0, 0), np.float32)

    def _store(self, keys: list[str], rows: np.ndarray) -> None:
        import secrets

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{secrets.token_hex(8)}"
        with atomic_open(self.folder / f"{name}.npy") as f:
            np.save(f, rows)
        with atomic_open(self.folder / f"{name}.json", "w") as f:  # last: it vouches for the rows
            json.dump(keys, f)
        total = len(self._index())
        layer = getattr(self.extractor, "layer", None)
        FeatureManifest(
            extractor=self.fingerprint, dataset="rows", dataset_description="one row per input, any subset "
            "(ExtractorTransformer)", model=getattr(self.extractor, "source", None) or None,
            layer=layer if isinstance(layer, (str, int, list, type(None))) else str(layer),
            rows=total, next=total, shape=list(rows.shape[1:]), dtype=rows.dtype.str, complete=True,
            completed=time.time(),
        ).write(self.folder / MANIFEST)


# ---------------------------------------------------------------------------------------------
# One-call functions.


def extract_features(
    extractor: FeatureExtractor,
    data: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    engine: str | Engine = "local",
    on_error: str = "skip",
    image_size: Sequence[int] | None = None,
) -> CachedFeatures:
    """Features of `data` through `extractor`, with labels and skipped files for an image folder.

    Args:
        extractor: the frozen layers (`zoo.load_extractor`).
        data: a `DataSource` or anything `zoo.as_source` takes: a numpy array, a ``.npy`` path,
            image files (a folder with one sub-folder per class, a flat folder, one file or a
            list; they get the model's InputSpec), a Parquet file or folder, an iterable of
            batches or, for a multi-input extractor, a dict of named inputs
            (``{"input_ids": "ids.npy", "attention_mask": mask}``). Other options of reading (an
            iterable's key, ``layout``, ``preprocess=False``, a Parquet ``column``) go through
            ``zoo.as_source(data, extractor, ...)``.
        cache_dir: the cache folder (default ``$ZOO_CACHE`` or the user cache folder).
        chunk_size: inputs per chunk, the unit of work, of resuming and of the progress bar
            (default: the extractor's batch size).
        progress: a progress bar on stderr when it is a terminal.
        engine: "local", "ray" (a Ray actor pool, see `zoo.ray_engine.RayEngine`) or an `Engine`;
            the cache entry is the same.
        on_error: an image that cannot be read is left out and listed in ``skipped`` ("skip",
            the default) or stops the run ("raise"). The same rule as an extractor called on
            image files (see `zoo.images`).
        image_size: (height, width) for images when the model does not fix its input size.

    Returns:
        The cached features (memory-mapped), the entry's key, labels and classes of an image
        folder, the inputs skipped, and whether nothing had to be computed.

    Raises:
        InputError: the data cannot be read or does not fit the extractor.
        DiskFullError: no room left; the run resumes from the last complete chunk.
    """
    return FeatureCache(cache_dir).features(extractor, data, chunk_size=chunk_size, progress=progress, engine=engine,
                                            on_error=on_error, image_size=image_size)


def _keywords_of(target: Any) -> Any:
    """Show `target`'s keyword-only parameters in the decorated function's signature, in place of
    its ``**options`` (which it passes on to `target`): help() and the docs' checks see them."""

    def decorate(func: Any) -> Any:
        import inspect

        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        passed = [p for p in inspect.signature(target).parameters.values()
                  if p.kind is p.KEYWORD_ONLY and p.name not in names]
        func.__signature__ = inspect.signature(func).replace(parameters=[*own, *passed])
        return func

    return decorate


@_keywords_of(extract_features)
def cache_features(extractor: FeatureExtractor, data: Any, **options: Any) -> np.ndarray:
    """Run `data` through a frozen `extractor` once; later calls (any process) reuse the result.

    The features are written chunk by chunk to ``<cache>/features/<key>/features.npy`` and
    returned memory-mapped, so a dataset larger than memory needs only one chunk of RAM. The
    key hashes the extractor's fingerprint (model file, cut, preprocessing) and the data (its
    bytes, every input's for a dict of named inputs; for an image folder its file names, sizes
    and times). An interrupted run resumes at the last chunk on disk.

    Args:
        extractor, data: as `extract_features`.
        options: `extract_features`'s keywords (cache_dir, chunk_size, progress, engine,
            on_error, image_size).

    Returns:
        The features, memory-mapped from the cache (`extract_features` also gives the labels
        of a class folder and the inputs skipped).

    Raises:
        InputError: the data cannot be read or does not fit the extractor.
        DiskFullError: no room left; the run resumes from the last complete chunk.

    >>> features = zoo.cache_features(extractor, "train.npy")    # doctest: +SKIP
    """
    return extract_features(extractor, data, **options).features


@_keywords_of(extract_features)
def save_features(
    extractor: FeatureExtractor,
    data: Any,
    output: str | os.PathLike,
    *,
    index_out: str | os.PathLike | None = None,
    **options: Any,
) -> CachedFeatures:
    """`zoo extract`'s one call: cache the features, then copy them to `output` in chunks.

    What lines the rows up with the inputs is written beside them: for an ``.npz`` output, in
    the same file (``features``, and for image files ``paths``, ``labels`` and ``classes`` of a
    class folder, ``skipped_paths`` / ``skipped_reasons``); for an ``.npy`` output of image
    files, to `index_out` (a CSV, default ``<output stem>.index.csv``): one line per input file
    with its feature row (empty when skipped), class and the reason it was skipped.

    Args:
        extractor, data: as `extract_features`.
        output: the ``.npy`` (features only) or ``.npz`` (features and their index) file to write.
        index_out: where the CSV index of an ``.npy`` output goes.
        options: `extract_features`'s keywords (cache_dir, chunk_size, progress, engine,
            on_error, image_size).

    Returns:
        The cached features (as `extract_features`), with ``index_path`` set when one was written.

    Raises:
        DiskFullError: no room left to write `output` (the cache entry stays).
    """
    from zoo.destinations import prepare

    output = Path(output)
    inputs = list(data.values()) if isinstance(data, Mapping) else [data]
    prepare(output, spelled("output", "--output"), inputs=inputs)  # before the work
    index_path = Path(index_out) if index_out else output.with_suffix(".index.csv")
    if output.suffix.lower() != ".npz":
        prepare(index_path, spelled("index_out", "--index-out"), inputs=[*inputs, output])
    result = extract_features(extractor, data, **options)
    rows = row_index(result, as_source(data, extractor))
    try:
        if output.suffix.lower() == ".npz":
            with atomic_open(output, fsync=True) as dst:
                np.savez(dst, features=result.features, **rows.arrays())
        else:
            with open(result.path, "rb") as src, atomic_open(output, fsync=True) as dst:
                shutil.copyfileobj(src, dst, _READ_BLOCK)
            if rows.has_files:
                result.index_path = write_index(rows, index_path)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFullError(f"no room left to write {output} ({os.strerror(exc.errno)}); free some space",
                                path=str(output)) from None
        raise
    return result


def save_layer_features(extractor: FeatureExtractor, data: Any, output: str | os.PathLike) -> dict[str, np.ndarray]:
    """Features of an extractor cut at several layers, run once and written to one ``.npz``.

    Not cached: the cache keeps one array per entry. `data` is an array, a ``.npy`` path, image
    files (a path or a flat folder: the extractor decodes and preprocesses them; an unreadable
    one is left out, by the extractor's ``on_error``), or for a multi-input model a dict of
    named inputs (arrays, numbers or ``.npy`` paths). For image files the ``.npz`` also holds
    ``paths`` (the file of each row) and ``skipped_paths`` / ``skipped_reasons``.

    Returns:
        The features of each layer, by layer name.

    Raises:
        InputError: a ``.npy`` file cannot be read, or the data does not fit the extractor.

    Args:
        extractor: an extractor cut at several layers (`load_extractor(name, ["fc6", "fc7"])`).
        data: the inputs, as above.
        output: the ``.npz`` file to write (one array per layer).
    """
    import warnings

    from zoo.errors import SkippedInputsWarning
    from zoo.images import image_files, is_image_input

    index: dict[str, np.ndarray] = {}
    if isinstance(data, dict):
        data = {k: _read_npy(v) if isinstance(v, (str, os.PathLike)) else v for k, v in data.items()}
    elif not is_image_input(data) and isinstance(data, (str, os.PathLike)):
        data = _read_npy(data)
    if is_image_input(data):
        files = [str(f) for f in image_files(data)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedInputsWarning)
            features = extractor(files)
        skipped = [s for w in caught if isinstance(w.message, SkippedInputsWarning) for s in w.message.skipped]
        for w in caught:
            if not isinstance(w.message, SkippedInputsWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        dropped = {s["index"] for s in skipped}
        index = RowIndex([f for i, f in enumerate(files) if i not in dropped], None, None, files, skipped).arrays()
    else:
        features = extractor(data)
    if not isinstance(features, dict):
        features = {str(extractor.layer): features}
    with atomic_open(Path(output).absolute()) as f:
        np.savez(f, **features, **{k: v for k, v in index.items() if k not in features})
    if index.get("skipped_paths") is not None and len(index["skipped_paths"]):
        warnings.warn(SkippedInputsWarning(f"left out {len(skipped)} images that cannot be read (listed in "
                                           f"{Path(output).name}'s skipped_paths)", skipped), stacklevel=2)
    return features


def _read_npy(path: str | os.PathLike) -> np.ndarray:
    return load_npy(path)  # checked against its header first (zoo.npy)
