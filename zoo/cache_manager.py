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

from zoo import config
from zoo.cache import folder_name, root
from zoo.errors import CacheError, InputError

if TYPE_CHECKING:
    from zoo.catalog import Catalog

__all__ = ["KINDS", "REGENERABLE", "Entry", "RemovalPlan", "plan_removal", "scan"]

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
    """Entries chosen for removal and the bytes removing them frees; nothing is deleted until `execute`."""

    entries: list[Entry]
    cache_dir: str | os.PathLike | None = None

    @property
    def bytes(self) -> int:
        """The bytes `execute` frees."""
        return sum(e.bytes for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"removed": [e.key for e in self.entries], "bytes": self.bytes}

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
            for entry in self.entries:
                _delete(entry)
        finally:
            for lock in reversed(held):
                lock.release()
        return self.bytes


def _size(path: Path) -> int:
    """Bytes under `path`, not following symlinks (a link to elsewhere is not the cache's)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _content(folder: Path) -> list[Path]:
    """A folder's items except lock files (those stay: see `RemovalPlan.execute`)."""
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
            found.append(Entry("features", e.key, e.path, e.bytes, None, e.to_dict()))
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
        return RemovalPlan(list(chosen), cache_dir)
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
    return RemovalPlan(chosen, cache_dir)


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
