"""What the cache holds and how to prune it (`zoo cache list`, `zoo cache rm`): scan, plan, execute.

As huggingface_hub's cache manager: `scan` lists the entries, `plan_removal` picks the ones a
command means and says how many bytes that frees, and `RemovalPlan.execute` deletes them (all or
none). A dry run is a plan not executed. Only the CLI imports this module: it reads the feature
cache's manifests and the catalog (to tell trained-model copies from fetched files), so nothing
below the library layer may depend on it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo.cache import folder_name, root
from zoo.errors import CacheError, InputError

if TYPE_CHECKING:
    from zoo.catalog import Catalog

__all__ = ["KINDS", "REGENERABLE", "Entry", "RemovalPlan", "Usage", "plan_gc", "plan_removal", "scan", "usage"]

KINDS = ("features", "cuts", "onnx", "models", "trained")
# What `plan_removal(everything=True)` picks unless kinds are named: a trained copy may be the only one.
REGENERABLE = ("features", "cuts", "onnx", "models")


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


@dataclass
class RemovalPlan:
    """Entries chosen for removal and the bytes removing them frees; nothing is deleted until `execute`.

    A fetched or converted file is a view of a blob in the store (`zoo.store`): removing the view
    frees its bytes only when no other view refers to the blob, and `blobs` are those it leaves
    unreferenced; `execute` deletes them too (unless a fetch takes one meanwhile).
    """

    entries: list[Entry]
    cache_dir: str | os.PathLike | None = None
    blobs: list[Path] = field(default_factory=list)
    # Bytes of the entries that are not views, and of the blobs; None: the entries' bytes, all freed.
    own_bytes: int | None = None
    blob_bytes: int = 0

    @property
    def bytes(self) -> int:
        """The bytes `execute` frees (as planned)."""
        if self.own_bytes is None:
            return sum(e.bytes for e in self.entries)
        return self.own_bytes + self.blob_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"removed": [e.key for e in self.entries], "bytes": self.bytes,
                "blobs": [b.name for b in self.blobs]}

    def execute(self) -> int:
        """Delete the entries, all or none: never outside the cache, never under another process's lock.

        Returns:
            The bytes freed.

        Raises:
            CacheError: an entry lies outside the cache folder, or another process holds its lock
                (a fetch, an unpack or an extraction); nothing was removed then.

        Lock files stay: deleting one could let two processes lock two different files.
        """
        from filelock import FileLock, Timeout

        base = root(self.cache_dir).resolve()
        for entry in self.entries:
            where = entry.path.parent.resolve() / entry.path.name  # the entry itself, never a link's target
            if base not in where.parents:
                raise CacheError(f"{entry.path} is not inside the cache folder {base}; not removing it",
                                 path=str(entry.path))
        held: list[Any] = []
        try:
            for entry in self.entries:
                for lock_file in _locks(entry):
                    lock = FileLock(str(lock_file))
                    try:
                        lock.acquire(timeout=0)
                    except Timeout:
                        raise CacheError(
                            f"{entry.key} is in use by another process (it holds {lock_file}); nothing was "
                            "removed: try again when its fetch, unpack or extraction has finished",
                            path=str(entry.path),
                        ) from None
                    held.append(lock)
            freed = self.bytes
            for entry in self.entries:
                _delete(entry)
        finally:
            for lock in reversed(held):
                lock.release()
        if self.blobs:  # looked at again under their locks: a fetch may have linked one meanwhile
            from zoo.store import Store

            _, kept = Store(self.cache_dir).collect(self.blobs)
            freed -= sum(_file_size(b) for b in kept)
        return freed


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _size(path: Path) -> int:
    """Bytes under `path` as the files show them: a symbolic link into the store counts its blob's
    size (a view), any other link to elsewhere counts nothing (it is not the cache's)."""
    if path.is_symlink() or path.is_file():
        return _view_size(path)
    return sum(_view_size(p) for p in path.rglob("*") if p.is_symlink() or p.is_file())


def _view_size(path: Path) -> int:
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        return _file_size(target) if target.parent.name == "sha256" and target.parent.parent.name == "blobs" else 0
    return path.lstat().st_size


def _content(folder: Path) -> list[Path]:
    """A folder's items except lock files (those stay: see `RemovalPlan.execute`)."""
    return [p for p in folder.iterdir() if not p.name.endswith(".lock")]


def _trained(catalog: Any) -> set[str]:
    """Folder names under models/ holding a model zoo trained or pretrained, from the catalog.

    A catalog that does not exist yet is not created just to list the cache.
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog, create=False)
    return {folder_name(m.name) for m in cat.search(source="local", limit=None)
            if "trained_by" in m.meta or "pretrained" in m.meta}


def _folders(parent: Path) -> list[Path]:
    """Entry folders under `parent`: not hidden (cuts/.hashes), not empty (only lock files left)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and _content(p))


def scan(
    cache_dir: str | os.PathLike | None = None,
    kinds: Sequence[str] | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
) -> list[Entry]:
    """What the cache holds, kind by kind; the catalog tells trained-model copies from fetched files.

    Args:
        cache_dir: the cache folder (default ``$ZOO_CACHE`` or the user cache folder).
        kinds: only these kinds (of `KINDS`); all by default.
        catalog: the catalog whose local models say which folders hold trained copies.

    Returns:
        The entries, features first, then cuts, converted models and model folders.

    Raises:
        InputError: a kind that is not one of `KINDS`.
    """
    from zoo.manifests import CutMetadata
    from zoo.features import FeatureCache

    base = root(cache_dir)
    wanted = _check_kinds(kinds)
    found: list[Entry] = []
    if "features" in wanted:
        for e in FeatureCache(cache_dir).entries():
            found.append(Entry("features", e.key, e.path, e.bytes, e.model, e.to_dict()))
    if "cuts" in wanted:
        for folder in _folders(base / "cuts"):
            for graph in sorted(folder.glob("*.onnx")):
                side = graph.with_suffix(".json")
                meta = CutMetadata.read(side)
                size = _size(graph) + (_size(side) if side.is_file() else 0)
                found.append(Entry("cuts", f"cuts/{folder.name}/{graph.stem}", graph, size,
                                   meta.model if meta else None, {"layers": meta.layers if meta else None}))
    if "onnx" in wanted:
        for folder in _folders(base / "onnx"):
            found.append(Entry("onnx", f"onnx/{folder.name}", folder, _size(folder), _model_of(folder.name)))
    if {"models", "trained"} & set(wanted):
        folders = _folders(base / "models")
        trained = _trained(catalog) if folders else set()
        for folder in folders:
            kind = "trained" if folder.name in trained else "models"
            if kind in wanted:
                found.append(Entry(kind, f"models/{folder.name}", folder, _size(folder), _model_of(folder.name)))
    return found


def _model_of(folder: str) -> str:
    """The model a cache folder belongs to: ``resnet50@3fa9c2`` (a pinned revision's files) is resnet50's."""
    return folder.split("@", 1)[0]


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


def plan_removal(
    found: list[Entry],
    keys: Sequence[str] = (),
    model: str | None = None,
    everything: bool = False,
    kinds: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RemovalPlan:
    """The entries `zoo cache rm` means: by key (unique prefixes, part by part), by model, or all.

    Args:
        found: what `scan` listed.
        keys: entry keys or unique prefixes of them, part by part (``cuts/5e1b/fc7``).
        model: every entry that belongs to this model.
        everything: every entry of `found`; trained-model copies only when `kinds` names kinds
            (they may be the only copy).
        kinds: the kinds `found` was scanned for.
        cache_dir: the cache folder the plan deletes in.

    Returns:
        A plan; nothing is deleted until its `execute`.

    Raises:
        InputError: a key matches nothing or several entries, or the model has nothing cached.
    """
    if everything:
        chosen = found if kinds else [e for e in found if e.kind in REGENERABLE]
        return _with_blobs(RemovalPlan(list(chosen), cache_dir))
    chosen = []
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
    return _with_blobs(RemovalPlan(chosen, cache_dir))


def _with_blobs(plan: RemovalPlan) -> RemovalPlan:
    """The plan with the blobs only its views refer to, and the bytes of what is not a view."""
    from zoo.store import Store

    folders = [e for e in plan.entries if e.kind in ("models", "onnx", "trained")]
    if not folders:
        return plan
    store = Store(plan.cache_dir)
    views = store.views()
    going = {e.path for e in folders}
    viewed: set[Path] = set()
    for name, refs in views.items():
        mine = [v for v in refs if v is not None and v.parent in going]
        viewed.update(mine)
        if mine and len(mine) == len(refs):
            plan.blobs.append(store.blob(name))
            plan.blob_bytes += _file_size(store.blob(name))
    plan.own_bytes = sum(e.bytes for e in plan.entries if e not in folders) + sum(
        _size(p) for e in folders for p in e.path.rglob("*")
        if (p.is_file() or p.is_symlink()) and p not in viewed and not p.is_dir())
    return plan


@dataclass
class Usage:
    """What the cache takes on disk against what its entries show: the store's saving, and the
    bytes of blobs nothing refers to (`zoo cache gc` frees them)."""

    shown: int  # every entry's bytes, each view counted in full
    on_disk: int  # every file once (hard links and views of one blob counted once)
    unreferenced: int

    @property
    def saved(self) -> int:
        """Bytes the store saves: what separate copies would take less what is on disk."""
        return self.shown + self.unreferenced - self.on_disk

    def to_dict(self) -> dict[str, int]:
        return {"shown": self.shown, "on_disk": self.on_disk, "saved": self.saved,
                "unreferenced": self.unreferenced}


def usage(found: list[Entry], cache_dir: str | os.PathLike | None = None) -> Usage:
    """The bytes of `found` and of the store on disk (each inode once) against what `found` shows.

    Only entries and blobs count: the cache's logs and hash memos are neither shown nor saved.
    """
    from zoo.store import Store

    store = Store(cache_dir)
    seen: set[tuple[int, int]] = set()
    on_disk = 0
    for path in [*(Path(os.path.join(folder, name)) for e in found for folder, _, names in _walk(e.path)
                   for name in names), *store.blobs()]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen and not path.is_symlink():
            seen.add((st.st_dev, st.st_ino))
            on_disk += st.st_size
    unreferenced = sum(_file_size(store.blob(n)) for n, refs in store.views().items() if not refs)
    return Usage(sum(e.bytes for e in found), on_disk, unreferenced)


def _walk(path: Path):
    """os.walk of an entry's folder; an entry that is one file walks as that file."""
    if path.is_dir() and not path.is_symlink():
        return os.walk(path)
    return [(str(path.parent), [], [path.name])]


def plan_gc(cache_dir: str | os.PathLike | None = None):
    """The blobs nothing refers to (`zoo.store.GcPlan`): what `zoo cache gc` frees; a cache from
    before the store is moved into it first."""
    from zoo.store import Store

    store = Store(cache_dir)
    store.ensure()
    return store.plan_gc()


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
