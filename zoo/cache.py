"""The cache folder: its layout, the one folder-name rule, atomic writes, and listing/pruning what is in it.

Layout under `root(cache_dir)` (``$ZOO_CACHE`` or the platform's user cache folder):
``models/<name>/`` fetched files and trained-model copies, ``onnx/<name>/<name>.onnx`` converted
models, ``cuts/<sha256 of the source>/<cut key>.onnx|.json`` cut graphs, ``features/<key>/``
cached features. Light: imports nothing heavy, so converters may use it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Sequence

from zoo import config
from zoo.errors import CacheError, InputError, write_error

if TYPE_CHECKING:
    from zoo.catalog import Catalog

# Characters a cache folder name may keep; the rest become "_" (a model name never escapes its folder).
_UNSAFE = re.compile(r"[^\w.+=@-]")
KINDS = ("features", "cuts", "onnx", "models", "trained")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a write that ran out of room
# What `remove(everything=True)` deletes unless kinds are named: a trained copy may be the only one.
REGENERABLE = ("features", "cuts", "onnx", "models")


def root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder (`cache_dir`, $ZOO_CACHE or the user cache folder); not created here."""
    return config.cache_dir(cache_dir)


def folder_name(name: str) -> str:
    """The folder a model's files live in: characters outside ``[\\w.+=@-]`` become ``_``, no leading dot."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"


def model_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models/<name>/``: a model's fetched files, or the copy `zoo train`/`zoo pretrain` saved."""
    return root(cache_dir) / "models" / folder_name(name)


def onnx_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `convert(name)` writes the ONNX file."""
    folder = folder_name(name)
    return root(cache_dir) / "onnx" / folder / f"{folder}.onnx"


def cuts_folder(source_sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/cuts/<sha256 of the source ONNX>/``: the cut graphs of one model file."""
    return root(cache_dir) / "cuts" / source_sha256


def features_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/features/``: one folder per cached (extractor, data) pair."""
    return root(cache_dir) / "features"


# --------------------------------------------------------------------------------------
# atomic writes: a reader sees the old file or the new one, never half of one


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


# --------------------------------------------------------------------------------------
# listing and pruning (`zoo cache list`, `zoo cache rm`)


@dataclass
class Entry:
    """One thing in the cache: its kind, its key, where it is, its size and the model it belongs to."""

    kind: str  # one of KINDS
    key: str  # a feature key, else the path under the cache folder ("onnx/bvlc_alexnet", "cuts/<sha>/<cut>")
    path: Path
    bytes: int
    model: str | None = None  # the model it belongs to, when known
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific facts (rows, shape, layers...)

    def to_dict(self) -> dict[str, Any]:
        return {**self.detail, "kind": self.kind, "key": self.key, "path": str(self.path),
                "bytes": self.bytes, "model": self.model}


def _size(path: Path) -> int:
    """Bytes under `path`, not following symlinks (a link to elsewhere is not the cache's)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _content(folder: Path) -> list[Path]:
    """A folder's items except lock files (those stay: see `remove`)."""
    return [p for p in folder.iterdir() if not p.name.endswith(".lock")]


def _trained(catalog: Any) -> set[str]:
    """Folder names under models/ holding a model zoo trained or pretrained, from the catalog.

    A catalog that does not exist yet is not created just to list the cache.
    """
    from zoo.catalog import Catalog, open_catalog

    if not isinstance(catalog, Catalog):
        url = config.catalog_url(catalog)
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
            return set()
    cat = open_catalog(catalog)
    return {folder_name(m.name) for m in cat.search(source="local", limit=None)
            if "trained_by" in m.meta or "pretrained" in m.meta}


def _folders(parent: Path) -> list[Path]:
    """Entry folders under `parent`: not hidden (cuts/.hashes), not empty (only lock files left)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and _content(p))


def entries(
    cache_dir: str | os.PathLike | None = None,
    kinds: Sequence[str] | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
) -> list[Entry]:
    """What the cache holds, kind by kind; the catalog tells trained-model copies from fetched files."""
    import json

    base = root(cache_dir)
    wanted = _check_kinds(kinds)
    found: list[Entry] = []
    if "features" in wanted:
        from zoo.features import FeatureCache

        for e in FeatureCache(cache_dir).entries():
            found.append(Entry("features", e.key, e.path, e.bytes, None, e.to_dict()))
    if "cuts" in wanted:
        for folder in _folders(base / "cuts"):
            for graph in sorted(folder.glob("*.onnx")):
                side = graph.with_suffix(".json")
                try:
                    meta = json.loads(side.read_text())
                except (OSError, ValueError):
                    meta = {}
                size = _size(graph) + (_size(side) if side.is_file() else 0)
                found.append(Entry("cuts", f"cuts/{folder.name}/{graph.stem}", graph, size, meta.get("model"),
                                   {"layers": meta.get("layers")}))
    if "onnx" in wanted:
        for folder in _folders(base / "onnx"):
            found.append(Entry("onnx", f"onnx/{folder.name}", folder, _size(folder), folder.name))
    if {"models", "trained"} & set(wanted):
        folders = _folders(base / "models")
        trained = _trained(catalog) if folders else set()
        for folder in folders:
            kind = "trained" if folder.name in trained else "models"
            if kind in wanted:
                found.append(Entry(kind, f"models/{folder.name}", folder, _size(folder), folder.name))
    return found


def _check_kinds(kinds: Sequence[str] | None) -> list[str]:
    """The kinds asked for (all by default); an unknown one is a user error naming the valid ones."""
    if not kinds:
        return list(KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"unknown cache kind {bad[0]!r}; valid: {', '.join(KINDS)}")
    return list(kinds)


def _matches(key: str, entry: Entry) -> bool:
    """`key` names `entry` when each of its /-separated parts starts the entry key's part."""
    want, have = key.split("/"), entry.key.split("/")
    return len(want) <= len(have) and all(h.startswith(w) for w, h in zip(want, have))


def select(
    found: list[Entry],
    keys: Sequence[str] = (),
    model: str | None = None,
    everything: bool = False,
    kinds: Sequence[str] | None = None,
) -> list[Entry]:
    """The entries `zoo cache rm` means: by key (unique prefixes, part by part), by model, or all.

    `everything` leaves trained-model copies alone unless `kinds` names them: they may be the only copy.
    """
    if everything:
        return found if kinds else [e for e in found if e.kind in REGENERABLE]
    chosen: list[Entry] = []
    for key in keys:
        key = key.strip().strip("/")
        exact = [e for e in found if e.key == key]
        matches = exact or ([e for e in found if _matches(key, e)] if key else [])
        if not matches:
            raise InputError(f"nothing in the cache matches {key!r}; list what is there with `zoo cache list`")
        if len(matches) > 1:
            raise InputError(f"cache key {key!r} matches {len(matches)} entries; give more characters")
        chosen.extend(m for m in matches if m not in chosen)
    if model is not None:
        mine = [e for e in found if e.model in (model, folder_name(model))]
        if not mine:
            raise InputError(f"nothing in the cache belongs to model {model!r}; list what is there with `zoo cache list`")
        chosen.extend(m for m in mine if m not in chosen)
    return chosen


def _locks(entry: Entry) -> list[Path]:
    """The lock files a writer of this entry holds: a feature key's, or a fetch's and an unpack's in its folder."""
    if entry.kind == "features":
        return [entry.path.parent / f"{entry.path.name}.lock"]
    if entry.kind == "cuts" or entry.path.is_symlink():
        return []
    return sorted(entry.path.glob("*.lock"))


def _delete(entry: Entry) -> None:
    """Delete what the entry is: a cut and its JSON, a link (never its target), or a folder's content."""
    if entry.kind == "cuts":
        for item in (entry.path, entry.path.with_suffix(".json")):
            item.unlink(missing_ok=True)
    elif entry.path.is_symlink():
        entry.path.unlink()
    elif entry.kind == "features":
        shutil.rmtree(entry.path)
    else:
        for item in _content(entry.path):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()


def remove(chosen: Sequence[Entry], cache_dir: str | os.PathLike | None = None) -> int:
    """Delete entries, all or none: never outside the cache, never under another process's lock; bytes freed.

    Lock files stay: deleting one could let two processes lock two different files.
    """
    from filelock import FileLock, Timeout

    base = root(cache_dir).resolve()
    for entry in chosen:
        where = entry.path.parent.resolve() / entry.path.name  # the entry itself, never a link's target
        if base not in where.parents:
            raise CacheError(f"{entry.path} is not inside the cache folder {base}; not removing it")
    held: list[Any] = []
    try:
        for entry in chosen:
            for lock_file in _locks(entry):
                lock = FileLock(str(lock_file))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    raise CacheError(
                        f"{entry.key} is in use by another process (it holds {lock_file}); nothing was "
                        "removed: try again when its fetch, unpack or extraction has finished"
                    ) from None
                held.append(lock)
        for entry in chosen:
            _delete(entry)
    finally:
        for lock in reversed(held):
            lock.release()
    return sum(e.bytes for e in chosen)


__all__ = ["KINDS", "Entry", "atomic_open", "atomic_path", "cuts_folder", "entries", "features_folder",
           "folder_name", "model_folder", "onnx_path", "remove", "root", "select", "write_atomic"]
