"""Catalog-facing fetching: what to download for a model, recording what was fetched, unpacking, `verify`.

`fetch` downloads every file of a cataloged model through `zoo.transport.download` and only then
registers the artifact; archives are unpacked by `zoo.archives`; `verify` re-hashes what is on disk.

Files fetched without a published checksum are pinned on first use: `fetch` records the
sha256 it observed in `Artifact.sha256` and `Artifact.meta["first_fetch_sha256"]` (leaving
`checksum` None, since nobody published it) and later fetches must match it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from zoo import config
from zoo.archives import UnpackLimits, archive_kind, remove_stale_unpacks, safe_extract, unpacked_name
from zoo.cache import model_folder, root as cache_root
from zoo.errors import ChecksumError, FetchError, OfflineError
from zoo.hashes import file_hash, hash_matches, parse_checksum
from zoo.hubs import origin as hub_origin
from zoo.records import Artifact, file_name_parts
from zoo.signatures import SignaturePolicy
from zoo.store import Store
from zoo.transport import DownloadResult, Expected, RetryPolicy, download, new_session

if TYPE_CHECKING:
    import requests

    from zoo.catalog import Catalog


class _Bar:
    """A tqdm bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str):
        from tqdm import tqdm

        self._bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)
        self._last = 0

    def __call__(self, done: int, total: int | None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()
        if done < self._last:  # a restart from zero
            self._bar.reset(total=total)
            self._last = 0
        self._bar.update(done - self._last)
        self._last = done

    def close(self) -> None:
        self._bar.close()


def _place(model: str, folder: Path, filename: str) -> Path:
    """Where `filename` goes in the model's folder: inside it, never through a link out of it.

    A filename may name a sub-folder (a SavedModel's variables/variables.index), never a way out.
    """
    if file_name_parts(filename) is None:
        raise FetchError(
            f"model {model}: artifact filename {filename!r} is not a file name or a relative path inside the "
            "model's folder; fix the catalog entry (a remote index may not choose paths outside the cache)"
        )
    dest = folder / filename
    if "/" in filename:
        real = os.path.realpath(dest.parent)
        if os.path.commonpath([real, os.path.realpath(folder)]) != os.path.realpath(folder):
            raise FetchError(f"model {model}: the folder of {filename!r} leads out of {folder} (a link); "
                             f"remove {dest.parent} and fetch again")
    return dest


FileReport = Callable[[str, "Artifact", "DownloadResult | None"], None]


def fetch(
    name_or_names: str | Sequence[str],
    *,
    catalog: "str | os.PathLike | Catalog | None" = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    offline: bool | None = None,
    quiet: bool = False,
    session: "requests.Session | None" = None,
    on_file: FileReport | None = None,
    unpack_limits: UnpackLimits | None = None,
    retry: RetryPolicy | None = None,
) -> list["Artifact"]:
    """Download every file of the named models into the cache, unpack archives, register them.

    ZOO_TOKEN is sent only to the host of the registered source a model came from (or to
    the hosts in $ZOO_TOKEN_HOSTS). Files go to `<cache>/models/<name>/<filename>`; an archive with `extract` set is
    unpacked beside it into `<cache>/models/<name>/<filename without suffix>/` and the
    artifact's `path` is that folder (the archive itself is kept, as `meta["archive_path"]`,
    so `verify` can re-hash it and a later fetch can reuse it). A file already on disk that
    verifies is not downloaded again unless `force`. Returns the updated artifacts (every
    role except "onnx", which `zoo convert` makes). `on_file(name, artifact, result)` is
    called after each file (result None for a user's own local file). `unpack_limits` bounds
    what an archive may unpack to (default `UnpackLimits.from_env()`: 32 GiB, 200x, 100k members);
    `retry` how hard each download tries (`zoo.transport.RetryPolicy`).

    Args:
        name_or_names: one model or several.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.
        cache_dir: the cache folder (default ``$ZOO_CACHE``).
        force: download again even what is cached and verifies.
        offline: never touch the network (default ``$ZOO_OFFLINE``).
        quiet: no progress bars.
        session: a requests.Session to reuse.
        on_file: called after each file as ``on_file(name, artifact, result)``.
        unpack_limits: bounds on what an archive may unpack to.
        retry: how hard each download tries (`zoo.transport.RetryPolicy`).

    Returns:
        The updated artifacts, every role but "onnx".

    Raises:
        UnknownModelError: a name is not in the catalog (before any download).
        FetchError, ChecksumError, OfflineError, UnsafeArchiveError: a file could not be fetched.

    >>> [a.path for a in fetch("bvlc_alexnet")]  # doctest: +SKIP
    ['/home/me/.cache/zoo/models/bvlc_alexnet/deploy.prototxt', ...]
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    names = [name_or_names] if isinstance(name_or_names, str) else list(name_or_names)
    models = [cat.get(name) for name in names]  # an unknown name fails before any download
    root = cache_root(cache_dir)
    Store(root).ensure()  # a cache from before the store moves into it, once
    offline = config.offline() if offline is None else offline
    limits = unpack_limits or UnpackLimits.from_env()  # a bad $ZOO_MAX_UNPACK_* fails before downloading
    own_session = session is None and not offline
    session = new_session() if own_session else session
    results: list[Artifact] = []
    missing: list[str] = []  # offline: name every file that is not cached, not just the first
    try:
        for model in models:
            origin = hub_origin(model)  # a hub model (hf://): fetched through the hub's client
            hub_offline = offline or (origin is not None and origin.offline())
            if origin is not None and not hub_offline:
                model = origin.ready(cat, model)  # a search result is pinned to a commit first
            elif origin is not None and origin.stub:
                missing.append(f"{model.name} (a Hub search result, never pinned to a commit: no files known yet)")
                continue
            policy = SignaturePolicy.for_model(cat, model)
            # A model with a signature (or a source that requires one) is registered only once its
            # files are all here and the signature verdict is in: a refusal registers nothing.
            signed = policy.require or any(a.role == "signature" for a in model.artifacts
                                           if a.meta.get("by") != "zoo")
            fetched: list[tuple[Artifact, DownloadResult | None]] = []
            complete = True
            for artifact in model.artifacts:
                if artifact.role == "onnx" or (artifact.role == "signature" and artifact.meta.get("by") == "zoo"):
                    continue
                if origin is None:
                    how = _How(force, offline, quiet, session, retry, _model_token_hosts(cat, model), limits)
                else:
                    how = _How(force, hub_offline, quiet, origin.session(), retry, origin.token_hosts(), limits,
                               origin.headers(), origin.token(), origin.locate)
                try:
                    done, result = _fetch_artifact(cat, model.name, artifact, root, how, register=not signed)
                except OfflineError as exc:
                    missing += [f"{artifact.filename} of {model.name} ({why})" for why in exc.missing]
                    complete = False
                    continue
                fetched.append((done, result))
                if not signed and on_file is not None:
                    on_file(model.name, done, result)
            if signed and complete:
                _register_signed(cat, model, fetched, policy, on_file)
            if origin is not None and complete and "@" not in model.name:
                origin.recognise(cat, cat.get(model.name))  # the file is what its name says, by its content
            results += [done for done, _ in fetched]
    finally:
        if own_session:
            session.close()
    if missing:
        raise OfflineError(
            f"offline mode is on and {len(missing)} file(s) are not cached: {'; '.join(missing)}. "
            "Fetch them while online (unset ZOO_OFFLINE / drop --offline)", missing=missing,
        )
    return results


def _register_signed(cat, model, fetched, policy: SignaturePolicy, on_file: FileReport | None) -> None:
    """Check the publisher's signature of a fetched model, then register its files and the verdict.

    Under the source's `--require-signature` a missing or failing signature raises SignatureError
    before anything is registered; otherwise a failure is recorded (and shown by `zoo info`).
    """
    import logging

    from zoo.errors import MissingDependencyError
    from zoo.signatures import check_publisher_signature

    artifacts = [done for done, _ in fetched]
    try:
        check = check_publisher_signature(model, artifacts, policy)
    except MissingDependencyError as exc:
        if policy.require:
            raise
        logging.getLogger("zoo.download").warning(
            "%s publishes a signature that was not checked: %s", model.name, exc)
        check = None
    if check is not None and not check.verified:
        logging.getLogger("zoo.download").warning("%s: %s", model.name, check.summary())
    with cat.batch():
        for done in artifacts:
            cat.put_artifact(model.name, done)
        if check is not None:
            cat.record_signature(model.name, "publisher", check.to_dict())
    if on_file is not None:
        for done, result in fetched:
            on_file(model.name, done, result)


def _model_token_hosts(cat, model) -> set[str] | None:
    """ZOO_TOKEN goes to the host of the private zoo a model came from, not to public zoos.

    A model synced from a registered source may send the token to that source's host;
    built-in and local models never send it (a token for a private zoo has no business at
    GitHub or Kaggle). $ZOO_TOKEN_HOSTS, when set, decides instead.
    """
    from zoo.errors import UnknownSourceError

    if os.environ.get("ZOO_TOKEN_HOSTS", "").strip() or not os.environ.get("ZOO_TOKEN"):
        return None  # download() reads $ZOO_TOKEN_HOSTS itself; without a token nothing is sent
    try:
        source = cat.get_source(model.source) if model.source else None
    except (UnknownSourceError, AttributeError):
        source = None
    host = urllib.parse.urlsplit(source.url).hostname if source is not None else None
    return {host.lower()} if host else set()


@dataclass(frozen=True)
class _How:
    """How the files of one model are fetched (what `fetch` was told, and who may see the token)."""

    force: bool
    offline: bool
    quiet: bool
    session: Any
    retry: RetryPolicy | None
    token_hosts: set[str] | None
    limits: UnpackLimits | None
    headers: dict[str, str] | None = None  # extra request headers (a hub's)
    token: str | None = None  # a hub's token instead of ZOO_TOKEN (to `token_hosts` only)
    locate: Callable[[Artifact], list[str]] | None = None  # a hub's: where a file is served from now


def _fetch_artifact(cat, name, artifact, root, how: _How, register: bool = True):
    label = f"{artifact.role} file {artifact.filename} of {name}"
    if not artifact.urls:
        if artifact.path and Path(artifact.path).exists():
            return artifact, None  # the user's own file, registered by `zoo add`
        # A file published without a direct link (e.g. on a file-sharing page) is downloaded by
        # hand and dropped where zoo would have put it; it is checked and registered like any other.
        placed = _place(name, model_folder(name, root), artifact.filename)
        if placed.is_file():
            return _register_placed(cat, name, artifact, placed, label, register), None
        how = artifact.meta.get("manual")
        raise FetchError(
            f"{label} has no download URL{f' ({how})' if how else ''}; put the file at {placed} and "
            f"run `zoo fetch {name}` again, or register your copy with `zoo add`"
        )
    folder = model_folder(name, root)
    dest = _place(name, folder, artifact.filename)
    pinned = artifact.sha256 or artifact.meta.get("first_fetch_sha256")
    store = Store(root)
    known = known_sha256(artifact)
    # Held from before the download until the view is made: `zoo cache gc` leaves the blob alone.
    with store.hold(known) if known else contextlib.nullcontext():
        if known and not store.refers(dest, known) and (dest.is_file() or dest.is_symlink()):
            _set_aside(store, dest, known)  # another revision's file: its bytes stay in the store
        if known and not how.force and store.has(known) and not store.refers(dest, known):
            store.link(known, dest)  # the same bytes are in the store (another name, source or revision)
        urls = artifact.urls
        if how.locate is not None and not how.offline and (how.force or not (known and store.refers(dest, known))):
            urls = how.locate(artifact)  # asked only when the bytes must come over the network
        bar = _Bar(f"{name}: {artifact.filename}") if not how.quiet and sys.stderr.isatty() else None
        try:
            result = download(
                urls, dest, expected=Expected(artifact.size, artifact.checksum, pinned), retry=how.retry,
                session=how.session, force=how.force, offline=how.offline, label=label, progress=bar,
                token_hosts=how.token_hosts, headers=how.headers, token=how.token,
            )
        finally:
            if bar is not None:
                bar.close()
        store.adopt(dest, result.sha256)
    return _record_fetched(cat, name, artifact, result, dest, folder, how, register)


def _set_aside(store: Store, dest: Path, known: str) -> None:
    """`dest` holds other bytes than the file now wanted (the model's previous revision): keep them
    in the store, where `fetch NAME@REV` finds them, and clear the place."""
    try:
        digest = file_hash(dest)
    except OSError:  # a dangling link: nothing to keep
        dest.unlink(missing_ok=True)
        return
    if digest == known:
        store.adopt(dest, digest)
        return
    store.adopt(dest, digest)
    dest.unlink()


def known_sha256(artifact: Artifact) -> str | None:
    """The sha256 a file must have, known before it is downloaded: published, or pinned by a fetch."""
    if artifact.checksum:
        algo, digest = parse_checksum(artifact.checksum)
        if algo == "sha256":
            return digest.lower()
    pinned = artifact.sha256 or artifact.meta.get("first_fetch_sha256")
    return pinned.lower() if isinstance(pinned, str) and len(pinned) == 64 else None


def _record_fetched(cat, name, artifact, result, dest: Path, folder: Path, how: _How, register: bool):
    """Register a downloaded (or verified cached) file: its hash, where it came from, its unpacked folder."""
    done = dataclasses.replace(artifact, meta=dict(artifact.meta), urls=list(artifact.urls))
    done.size, done.sha256 = result.size, result.sha256
    if artifact.size is None and not artifact.meta.get("size_measured"):
        done.meta["size_measured"] = True  # not the publisher's: the file's identity stays what was listed
    if not artifact.checksum:
        done.meta.setdefault("first_fetch_sha256", result.sha256)
    if result.url:
        # A hub's file location is signed for a while (a query string): where it came from is the rest.
        done.meta["fetched_from"] = result.url.split("?", 1)[0] if how.locate is not None else result.url
    if artifact.extract:
        kind = archive_kind(artifact.filename, artifact.extract if isinstance(artifact.extract, str) else None)
        target = folder / unpacked_name(artifact.filename)
        fresh = result.cached and target.is_dir() and artifact.meta.get("unpacked_sha256") == result.sha256
        if how.force or not fresh:
            safe_extract(dest, target, kind, how.limits)
        else:
            remove_stale_unpacks(target)  # what an unpack killed during an earlier --force left
        done.path = str(target)
        done.meta["archive_path"] = str(dest)
        done.meta["unpacked_sha256"] = result.sha256
    else:
        done.path = str(dest)
    if register:
        cat.put_artifact(name, done)
    return done, result


def _register_placed(cat, name, artifact, placed: Path, label: str, register: bool = True):
    sha256 = file_hash(placed)
    if artifact.checksum and not hash_matches(placed, artifact.checksum):
        algo, expected = parse_checksum(artifact.checksum)
        got = file_hash(placed, algo)
        raise ChecksumError(
            f"{label} at {placed} does not match its published {algo} {expected} (got {got}); download it again",
            path=str(placed), expected=f"{algo}:{expected}", got=f"{algo}:{got}",
        )
    pinned = artifact.sha256 or artifact.meta.get("first_fetch_sha256")
    if pinned and pinned != sha256:
        raise ChecksumError(f"{label} at {placed} has sha256 {sha256}, but {pinned} was recorded before",
                            path=str(placed), expected=f"sha256:{pinned}", got=f"sha256:{sha256}")
    done = dataclasses.replace(artifact, meta=dict(artifact.meta), urls=[], path=str(placed),
                               sha256=sha256, size=placed.stat().st_size)
    if not artifact.checksum:
        done.meta.setdefault("first_fetch_sha256", sha256)
    if register:
        cat.put_artifact(name, done)
    return done


@dataclass
class Problem:
    """A local artifact that is missing or whose content changed since it was registered."""

    name: str
    role: str
    filename: str
    path: str
    kind: str  # "missing" or "changed"
    expected: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        if self.kind == "missing":
            return (
                f"{self.name}: {self.role} file {self.filename} is missing ({self.path}); "
                f"fetch it again with `zoo fetch {self.name}`"
            )
        return (
            f"{self.name}: {self.role} file {self.filename} changed on disk ({self.path}): sha256 "
            f"expected {self.expected}, got {self.actual}; fetch it again with `zoo fetch --force {self.name}`"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "message": str(self)}


def verify(
    names: str | Sequence[str] | None = None, *, catalog: "str | os.PathLike | Catalog | None" = None
) -> list[Problem]:
    """Re-hash every local artifact of `names` (default: all models); return what is wrong.

    An unpacked archive is checked through the archive it came from (`meta["archive_path"]`)
    and its folder must still exist. Artifacts never fetched are not problems.

    Args:
        names: models to check; None checks every model.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        One `Problem` per file that is missing or does not match.

    Raises:
        UnknownModelError: a name is not in the catalog.
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    if names is None:
        names = cat.names()
    elif isinstance(names, str):
        names = [names]
    problems: list[Problem] = []
    for name in names:
        model = cat.get(name)
        for a in model.artifacts:
            if not a.path:
                continue
            fact = dict(name=model.name, role=a.role, filename=a.filename)
            checked = Path(a.meta.get("archive_path") or a.path)
            if not Path(a.path).exists():
                problems.append(Problem(**fact, path=a.path, kind="missing"))
                continue
            if not a.sha256:
                continue
            if checked.is_dir():  # a SavedModel folder: its tree hash (zoo.hashes.file_sha256)
                from zoo.hashes import file_sha256

                actual = file_sha256(checked)
                if actual != a.sha256:
                    problems.append(Problem(**fact, path=str(checked), kind="changed", expected=a.sha256,
                                            actual=actual))
                continue
            if not checked.is_file():
                problems.append(Problem(**fact, path=str(checked), kind="missing"))
                continue
            actual = file_hash(checked)
            if actual != a.sha256:
                problems.append(Problem(**fact, path=str(checked), kind="changed", expected=a.sha256, actual=actual))
    return problems


__all__ = ["Problem", "fetch", "verify"]
