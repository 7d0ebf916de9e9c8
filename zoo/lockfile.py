"""zoo.lock: the exact revisions a project uses, and fetching exactly those (`zoo lock`, `zoo fetch --locked`).

A lock file maps each model name to its source, its revision (id, tag, content digest) and the
sha256, size and URLs of every file, so another machine, or this one after an index changed,
gets the same bytes: `fetch_locked` fetches the locked revision (recording it in the catalog if the
catalog never saw it) with every file pinned to the locked sha256, and fails naming what changed
when that is no longer possible. The file is JSON, sorted, with no secrets (URLs are masked), meant
to be committed beside the code.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo._redact import mask_url
from zoo.errors import ChecksumError, InputError, LockMismatchError, OfflineError
from zoo.records import Artifact
from zoo.revisions import DERIVED_ROLES, Revision, split_ref

if TYPE_CHECKING:
    from zoo.catalog import Catalog

__all__ = ["LOCK_FILE", "LockReport", "LockedModel", "fetch_locked", "find_lock_file", "lock", "read_lock"]

LOCK_FORMAT = "zoo-lock/1"
LOCK_FILE = "zoo.lock"


@dataclass
class LockedModel:
    """One model as zoo.lock pins it."""

    name: str
    revision: str
    digest: str
    files: list[Artifact]
    source: str | None = None
    source_url: str | None = None
    tag: str | None = None
    framework: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"source": self.source, "source_url": self.source_url, "revision": self.revision,
                "tag": self.tag, "digest": self.digest, "framework": self.framework, "format": self.format,
                "files": [_file_dict(a) for a in self.files]}
        return {k: v for k, v in data.items() if v is not None}


def _file_dict(artifact: Artifact) -> dict[str, Any]:
    data: dict[str, Any] = {"role": artifact.role, "filename": artifact.filename, "sha256": artifact.sha256,
                            "size": artifact.size, "urls": [mask_url(u) for u in artifact.urls]}
    if artifact.checksum:
        data["checksum"] = artifact.checksum
    if artifact.extract:
        data["extract"] = artifact.extract
    if artifact.meta.get("members"):
        data["members"] = artifact.meta["members"]
    return {k: v for k, v in data.items() if v not in (None, [])}


def find_lock_file(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest zoo.lock: in `start` (default the working folder) or a parent, as a catalog is found."""
    folder = Path(start or os.getcwd()).absolute()
    for candidate in (folder, *folder.parents):
        if (candidate / LOCK_FILE).is_file():
            return candidate / LOCK_FILE
    return None


def read_lock(path: str | os.PathLike) -> dict[str, LockedModel]:
    """The models a lock file pins, by name.

    Raises:
        InputError: the file is missing, not JSON, or not a zoo lock file (the message names the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise InputError(f"cannot read lock file {path}: {error.strerror}; write one with `zoo lock NAMES`") from None
    except ValueError as error:
        raise InputError(f"lock file {path} is not JSON ({error}); write it again with `zoo lock NAMES`") from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT or not isinstance(data.get("models"), dict):
        raise InputError(f"{path} is not a zoo lock file (expected \"format\": \"{LOCK_FORMAT}\" and \"models\"); "
                         "write it again with `zoo lock NAMES`")
    locked = {}
    for name, entry in data["models"].items():
        try:
            files = [Artifact(role=f["role"], filename=f["filename"], urls=list(f.get("urls") or []),
                              size=f.get("size"), checksum=f.get("checksum"), extract=f.get("extract"),
                              sha256=f["sha256"], meta={"members": f["members"]} if f.get("members") else {})
                     for f in entry["files"]]
            bad = [f.filename for f in files if not (isinstance(f.sha256, str) and len(f.sha256) == 64)]
            if bad:
                raise ValueError(f"file {bad[0]} has no sha256")
            locked[name] = LockedModel(name=name, revision=str(entry["revision"]), digest=str(entry["digest"]),
                                       files=files, source=entry.get("source"), source_url=entry.get("source_url"),
                                       tag=entry.get("tag"), framework=entry.get("framework"),
                                       format=entry.get("format"))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(f"lock file {path}: model {name!r} is malformed ({error}); "
                             f"write it again with `zoo lock {name}`") from None
    return locked


def _write_lock(path: Path, models: dict[str, LockedModel]) -> None:
    from zoo.atomic import write_atomic

    data = {"format": LOCK_FORMAT, "models": {n: models[n].to_dict() for n in sorted(models)}}
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def lock(names: Sequence[str], *, output: str | os.PathLike | None = None,
         catalog: str | os.PathLike | Catalog | None = None, cache_dir: str | os.PathLike | None = None,
         offline: bool | None = None, quiet: bool = True) -> tuple[Path, list[LockedModel]]:
    """Pin models (``NAME`` or ``NAME@REV``) in a lock file: source, revision and every file's sha256.

    A file whose sha256 is not known yet (no published sha256 and never fetched) is fetched to learn
    it. Entries already in the file for other names are kept.

    Args:
        names: the models to pin, current revision unless ``@REV`` says otherwise.
        output: the lock file (default: the nearest zoo.lock, else ./zoo.lock).
        catalog, cache_dir: the catalog and cache.
        offline, quiet: as for `zoo.fetch`, when a file must be fetched to be hashed.

    Returns:
        The lock file's path and the models pinned now.

    Raises:
        UnknownModelError, UnknownRevisionError: a name or revision is not in the catalog.
        FetchError: a file had to be fetched to be hashed and could not be.
    """
    from zoo import config
    from zoo.catalog import open_catalog
    from zoo.download import fetch, known_sha256
    from zoo.hubs import origin

    cat = open_catalog(catalog)
    path = Path(output) if output else (find_lock_file() or Path.cwd() / LOCK_FILE)
    existing = read_lock(path) if path.is_file() else {}
    pinned = []
    for ref in names:
        base = split_ref(ref)[0]
        model = cat.get(ref)
        files = [a for a in model.artifacts if a.role not in DERIVED_ROLES]
        hub = origin(model)
        if not files and hub is not None and hub.stub and not (offline or config.offline() or hub.offline()):
            model = hub.ready(cat, model)  # a hub search result: pinned to its commit first, as fetch does
            files = [a for a in model.artifacts if a.role not in DERIVED_ROLES]
        if not files and hub is not None and hub.stub:
            raise InputError(f"{ref} is a Hub search result, never pinned to a commit; lock it while online "
                             "(it is pinned then)")
        if not files:
            raise InputError(f"{ref} has no files to pin; register them first (`zoo add`, `zoo source sync`)")
        if any(known_sha256(a) is None for a in files):
            fetch(model.name, catalog=cat, cache_dir=cache_dir, offline=offline, quiet=quiet)
            model = cat.get(model.name)
            files = [a for a in model.artifacts if a.role not in DERIVED_ROLES]
        files = [replace(a, sha256=known_sha256(a), path=None) for a in files]
        revision = next(r for r in cat.revisions(base) if r.revision == model.revision)
        source_url = None
        if model.source and model.source != "local":
            try:
                source_url = mask_url(cat.get_source(model.source).url)
            except KeyError:
                source_url = None
        entry = LockedModel(name=base, revision=revision.revision, digest=revision.digest, files=files,
                            source=model.source, source_url=source_url, tag=revision.tag,
                            framework=model.framework, format=model.format)
        existing[base] = entry
        pinned.append(entry)
    _write_lock(path, existing)
    return path, pinned


@dataclass
class LockReport:
    """What `fetch_locked` did for one model: the locked revision, the catalog's current one, the files."""

    name: str
    revision: str
    current: str | None
    ref: str  # what names the locked files now: NAME (when current) or NAME@REV
    files: list[Artifact] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # how the current revision differs from the locked one

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "current": self.current, "ref": self.ref,
                "changed": self.changed, "files": [{"role": a.role, "filename": a.filename, "path": a.path,
                                                    "sha256": a.sha256} for a in self.files]}


def fetch_locked(names: Sequence[str] | None = None, *, lock_file: str | os.PathLike | None = None,
                 catalog: str | os.PathLike | Catalog | None = None, cache_dir: str | os.PathLike | None = None,
                 offline: bool | None = None, quiet: bool = True, on_file: Any = None) -> list[LockReport]:
    """Fetch exactly what the lock file pins: each model's locked revision, every file at its locked sha256.

    Args:
        names: only these of the locked models (default: all of them).
        lock_file: the lock file (default: the nearest zoo.lock).
        catalog, cache_dir, offline, quiet, on_file: as for `zoo.fetch`.

    Returns:
        One `LockReport` per model: which revision, what names it now (``NAME`` or ``NAME@REV``),
        its files, and how the catalog's current revision differs when it is another one.

    Raises:
        InputError: no lock file, or a name it does not pin.
        LockMismatchError: a file's bytes (or the revision's files) are not what the lock pins;
            the message names each change.
    """
    from zoo.catalog import open_catalog
    from zoo.download import fetch, offline_error

    path = Path(lock_file) if lock_file else find_lock_file()
    if path is None:
        raise InputError(f"no {LOCK_FILE} here or in a parent folder; write one with `zoo lock NAMES`")
    locked = read_lock(path)
    wanted = list(names) if names else sorted(locked)
    missing = [n for n in wanted if n not in locked]
    if missing:
        raise InputError(f"{path} does not pin {', '.join(missing)}; pin them with `zoo lock {' '.join(missing)}`")
    cat = open_catalog(catalog)
    reports = []
    not_cached: list[str] = []  # offline: every model's files not in the cache, named at the end
    for name in wanted:
        entry = locked[name]
        ref, current, changed = _place_locked(cat, entry)
        try:
            fetched = fetch(ref, catalog=cat, cache_dir=cache_dir, offline=offline, quiet=quiet, on_file=on_file)
        except OfflineError as error:
            not_cached += error.missing
            continue
        except ChecksumError as error:
            raise LockMismatchError(
                f"{name} changed upstream since {path} pinned revision {entry.revision}: {error}. Its "
                f"publisher changed the file in place; pin what it serves now with `zoo lock {name}`",
                changes=[str(error)]) from None
        reports.append(LockReport(name, entry.revision, current, ref, fetched, changed))
    if not_cached:
        raise offline_error(not_cached)
    return reports


def _place_locked(cat: Catalog, entry: LockedModel) -> tuple[str, str | None, list[str]]:
    """Make the catalog know the locked revision with every file pinned; (its ref, the current id, changes)."""
    from zoo.download import known_sha256
    from zoo.records import Model

    if not cat.exists(entry.name):  # a catalog that never saw the model: recorded from the lock
        cat.add_model(Model(name=entry.name, framework=entry.framework or "onnx", format=entry.format,
                            source=entry.source, artifacts=[replace(a) for a in entry.files],
                            revision=entry.revision, meta={"locked_from": entry.source_url} if entry.source_url else {}))
    revisions = cat.revisions(entry.name)
    current = next((r for r in revisions if r.current), None)
    chosen = next((r for r in revisions if r.revision == entry.revision), None) or next(
        (r for r in revisions if r.digest == entry.digest), None)
    if chosen is None:
        chosen = cat.add_revision(entry.name, Revision(
            revision=entry.revision, digest=entry.digest, tag=entry.tag, created_at=time.time(),
            source=entry.source, files=[replace(a) for a in entry.files], meta={"from_lock": True}))
    ref = entry.name if chosen.current else f"{entry.name}@{chosen.revision}"
    model = cat.get(ref)
    have = {(a.role, a.filename): a for a in model.artifacts if a.role not in DERIVED_ROLES}
    want = {(a.role, a.filename): a for a in entry.files}
    problems = [f"file {f} is locked but the catalog's revision {chosen.revision} does not have it"
                for (_, f) in sorted(set(want) - set(have))]
    problems += [f"the catalog's revision {chosen.revision} has file {f}, which the lock does not pin"
                 for (_, f) in sorted(set(have) - set(want))]
    for key in sorted(set(want) & set(have)):
        known = known_sha256(have[key])
        if known is not None and known != want[key].sha256:
            problems.append(f"file {key[1]}: the catalog says sha256 {known}, the lock {want[key].sha256}")
    if problems:
        raise LockMismatchError(f"{entry.name} revision {entry.revision} is not what the lock file pins: "
                                + "; ".join(problems) + f". Pin the catalog's with `zoo lock {entry.name}`",
                                changes=problems)
    for key, artifact in have.items():  # every file pinned to the locked bytes before anything is fetched
        if artifact.sha256 != want[key].sha256 and artifact.meta.get("first_fetch_sha256") != want[key].sha256:
            cat.put_artifact(ref, replace(artifact, sha256=want[key].sha256))
    changed: list[str] = []
    if current is not None and current.revision != chosen.revision:
        changed = [f"the catalog's current revision is {current.label()}"]
        changed += _differences(cat.get(entry.name).artifacts, entry.files)
    return ref, current.revision if current else None, changed


def _differences(now: Sequence[Artifact], locked: Sequence[Artifact]) -> list[str]:
    """How a revision's files differ from the locked ones, file by file."""
    from zoo.download import known_sha256

    ours = {(a.role, a.filename): known_sha256(a) or (a.urls[:1], a.size) for a in now if a.role not in DERIVED_ROLES}
    theirs = {(a.role, a.filename): a.sha256 for a in locked}
    found = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            found.append(f"{key[1]} added")
        elif key not in ours:
            found.append(f"{key[1]} removed")
        elif ours[key] != theirs[key]:
            found.append(f"{key[1]} changed")
    return found
