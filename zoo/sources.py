"""Remote zoo sources: zoo indexes (docs/index-format.md) at a URL, added, listed, synced and removed.

A sync sends the ETag of the last one (`If-None-Match`); 304 means nothing changed. An index is
parsed and validated completely before the catalog is touched, and each source's update is one
transaction (`apply_index`, on the catalog's public methods), so a malformed index or a failed
download leaves the catalog as it was. The catalog keeps only the sources' rows.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from zoo._redact import mask_secrets, mask_url
from zoo.units import human_size
from zoo.errors import DuplicateModelError, FetchError, IndexFormatError, OfflineError, UnknownSourceError, ZooError

if TYPE_CHECKING:
    from zoo.catalog import Catalog, SourceInfo
    from zoo.records import Model
    from zoo.signing import Signer

BUILTIN_SCHEME = "builtin:"
RESERVED = ("local",)  # the source of models added with `zoo add`/`zoo scan`
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TIMEOUT = (10, 60)  # connect, read (seconds)
MAX_INDEX_BYTES = 64 << 20


@dataclass
class SyncStats:
    """What a source sync changed."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)  # removed upstream but fetched: kept, marked

    def to_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "updated": self.updated, "removed": self.removed,
                "marked": self.marked}


@dataclass
class SyncReport:
    """The outcome of syncing one source: "synced", "unchanged" (HTTP 304 or same content) or
    "error" (the catalog kept what it had)."""

    name: str
    url: str
    status: str
    stats: SyncStats | None = None
    etag: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "url": mask_url(self.url), "status": self.status}
        if self.stats is not None:
            data.update(self.stats.to_dict())
        if self.etag:
            data["etag"] = self.etag
        if self.error:
            data["error"] = mask_secrets(self.error)
        return data


def _check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ZooError(f"source name {name!r} is not allowed; use letters, digits and . _ - "
                       "(at most 64 characters), e.g. `zoo source add acme URL`")
    if name in RESERVED:
        raise ZooError(f"source name {name!r} is reserved for models added with `zoo add`; "
                       "choose another name")
    return name


def _local_path(url: str) -> Path | None:
    """The file a file:// URL or plain path names; None for http(s) and builtin: URLs."""
    if url.startswith(BUILTIN_SCHEME):
        return None
    try:
        parsed = urlparse(url)
    except ValueError as exc:  # e.g. "http://[::1" (an unclosed IPv6 address)
        raise ZooError(f"index URL {mask_url(url)!r} is not a URL ({exc}); give an http(s):// URL or a path "
                       "to a file") from None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if "://" in url:
        raise ZooError(f"index URL {mask_url(url)!r} has scheme {parsed.scheme!r}; use http://, https://, "
                       "file:// or a path to a file")
    return Path(url).expanduser().absolute()


def _normalise_url(url: str) -> str:
    path = _local_path(url)
    if path is None:
        return url
    if not path.is_file():
        raise ZooError(f"index file {path} does not exist; give the path or URL of a zoo index "
                       "(docs/index-format.md)")
    return path.as_uri()


def _content_etag(data: bytes) -> str:
    return '"sha256-' + hashlib.sha256(data).hexdigest() + '"'


def _download(name: str, url: str, etag: str | None) -> tuple[bytes | None, str | None]:
    """The index's bytes and ETag, or (None, etag) when it has not changed since `etag`."""
    if url.startswith(BUILTIN_SCHEME):
        from importlib import resources

        index = url[len(BUILTIN_SCHEME):]
        resource = resources.files("zoo").joinpath("data", f"{index}.json")
        if not resource.is_file():
            raise IndexFormatError(f"source {name!r} names built-in index {index!r}, which this "
                                   "zoo does not ship; remove it with `zoo source rm`")
        data = resource.read_bytes()
    elif (path := _local_path(url)) is not None:
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_INDEX_BYTES + 1)
        except OSError as exc:
            raise FetchError(f"cannot read index of source {name!r} at {path}: {exc.strerror}"
                             ) from None
    else:
        return _http_get(name, url, etag)
    if len(data) > MAX_INDEX_BYTES:
        raise FetchError(f"source {name!r}: the index at {path} is larger than "
                         f"{human_size(MAX_INDEX_BYTES)}; is it really a zoo index?")
    # Files carry no ETag: the content's hash stands in, so an unchanged file is not re-read.
    new = _content_etag(data)
    return (None, etag) if new == etag else (data, new)


def _http_get(name: str, url: str, etag: str | None) -> tuple[bytes | None, str | None]:
    from zoo import config

    if config.offline():
        raise OfflineError(f"ZOO_OFFLINE is set, so source {name!r} ({url}) was not synced; "
                           "unset ZOO_OFFLINE to sync")
    import requests

    headers = {"Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    shown = mask_url(url)
    too_big = (f"source {name!r}: the index at {shown} is larger than {human_size(MAX_INDEX_BYTES)}; "
               "is it really a zoo index?")
    try:
        with requests.get(url, headers=headers, timeout=TIMEOUT, stream=True) as response:
            if response.status_code == 304:
                return None, etag
            if response.status_code != 200:
                raise FetchError(f"source {name!r}: GET {shown} answered HTTP "
                                 f"{response.status_code} {response.reason}; check the URL "
                                 f"with `zoo source list`")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_INDEX_BYTES:
                raise FetchError(too_big)  # refused before a byte of the body is read
            chunks, total = [], 0
            for chunk in response.iter_content(1 << 16):
                total += len(chunk)
                if total > MAX_INDEX_BYTES:
                    raise FetchError(too_big)
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("ETag")
    except requests.RequestException as exc:
        raise FetchError(f"source {name!r}: cannot download {shown} ({exc.__class__.__name__}: "
                         f"{mask_secrets(str(exc))})") from None


def _parse(name: str, url: str, data: bytes) -> list[Model]:
    from zoo.index import parse_index

    # An index from the network may not point at the user's own files (file://) or other schemes.
    remote = urlparse(url).scheme.lower() in ("http", "https")
    return parse_index(data, source=name, remote=remote)


def apply_index(cat: Catalog, source: str, models: list[Model]) -> SyncStats:
    """Make the catalog's models of `source` match an index's `models`, in one transaction.

    New entries are added and changed ones replaced, keeping what zoo added to them: the local
    paths and hashes of fetched files, and converted ONNX models. Entries gone from the index are
    deleted, or kept and marked `removed_upstream` when their files were fetched.

    Raises:
        DuplicateModelError: the index lists a name the catalog has from another source.
    """
    stats = SyncStats()
    with cat.batch():
        existing = {m.name: m for m in cat.search(source=source, limit=None)}
        for model in models:
            model.source = source
            old = existing.get(model.name)
            if old is None:
                if cat.exists(model.name):
                    raise DuplicateModelError(
                        f"source {source!r} lists {model.name!r}, which the catalog already has "
                        f"from {cat.get(model.name).source!r}; rename one of them"
                    )
                cat.add_model(model)
                stats.added.append(model.name)
                continue
            kept = _keeping_local_files(old, model)
            if kept.to_dict() != old.to_dict():
                cat.add_model(kept, replace=True)
                stats.updated.append(model.name)
            if "publisher" in old.signature and _published(kept) != _published(old):
                # Other files or another signature upstream: what was verified is not what is listed.
                cat.record_signature(model.name, "publisher", None)
        wanted = {m.name for m in models}
        for name, old in existing.items():
            if name in wanted:
                continue
            if not any(a.path for a in old.artifacts):
                cat.remove_model(name)
                stats.removed.append(name)
            elif not old.removed_upstream:
                cat.update_model(name, removed_upstream=True)
                stats.marked.append(name)
    return stats


def _keeping_local_files(old: Model, new: Model) -> Model:
    """The index's new entry with what zoo added to the old one: fetched files' paths and hashes
    (when the index gives none and the file is the same one), converted models and zoo's own
    signatures (while the files are the same: a changed file is a new revision, which has neither
    yet; the catalog keeps the old revision, `Catalog.add_model`), and the signature checks
    (`apply_index` forgets the publisher's when what it vouched for changed)."""
    from zoo.revisions import content_digest, file_identity

    local = {(a.role, a.filename): a for a in old.artifacts}
    artifacts = []
    for artifact in new.artifacts:
        mine = local.pop((artifact.role, artifact.filename), None)
        if (mine is not None and mine.path and artifact.path is None
                and file_identity(mine) == file_identity(artifact)):
            artifact = replace(artifact, path=mine.path, sha256=mine.sha256,
                               size=artifact.size if artifact.size is not None else mine.size,
                               meta={**mine.meta, **artifact.meta})
        artifacts.append(artifact)
    same = content_digest(artifacts) == content_digest(old.artifacts)
    if same:
        artifacts += [a for key, a in local.items() if key[0] == "onnx" or a.meta.get("by") == "zoo"]
    revision = new.revision or (old.revision if same else None)
    return replace(new, artifacts=artifacts, removed_upstream=False, signature=dict(old.signature),
                   revision=revision)


def _published(model: Model) -> list[tuple]:
    """What a publisher's signature vouches for: each listed file's name, origin and checksum, and the
    signature file itself with its signer (a change means the last check no longer applies)."""
    return sorted((a.role, a.filename, tuple(a.urls), a.checksum, repr(a.meta.get("signer")))
                  for a in model.artifacts if a.role != "onnx" and a.meta.get("by") != "zoo")


def add_source(name: str, url: str, *, sync: bool = True, require_signature: bool | None = None,
               signer: Signer | dict[str, Any] | None = None,
               catalog: str | os.PathLike | Catalog | None = None) -> SyncReport:
    """Register a zoo index at `url` (http(s)://, file:// or a path) as source `name`.

    With `sync` (the default) the index is downloaded and validated first: if that fails,
    nothing is registered. Adding an existing name again changes its URL.

    Args:
        name: the source's name (letters, digits, ``. _ -``).
        url: the index: http(s)://, file:// or a path.
        sync: download and apply the index now.
        require_signature: refuse (at fetch) any of its models whose signature is missing or
            does not verify; None keeps the source's current policy.
        signer: who must have signed its models (a `zoo.signing.Signer` or its dict: public key,
            certificate chain, Sigstore identity), overriding what the index says; None keeps it.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        The sync's report (status, models added, updated, removed, marked).

    Raises:
        ZooError: a reserved or malformed name, or a built-in source's name.
        FetchError: the index cannot be downloaded; IndexFormatError: it is malformed.

    >>> zoo.add_source("acme", "https://models.acme.org/zoo.json")   # doctest: +SKIP
    >>> zoo.add_source("acme", URL, require_signature=True,
    ...                signer=Signer.from_files(key="acme.pub"))      # doctest: +SKIP
    """
    from zoo.catalog import open_catalog
    from zoo.signing import Signer

    _check_name(name)
    pinned = None
    if signer is not None:
        pinned = (signer if isinstance(signer, Signer) else Signer.from_dict(signer)).to_dict()
    policy = {"require_signature": require_signature, "signer": pinned}
    cat = open_catalog(catalog)
    existing = {s.name: s for s in cat.sources()}.get(name)
    if existing is not None and existing.url.startswith(BUILTIN_SCHEME) and existing.url != url:
        raise ZooError(f"source {name!r} is one of zoo's built-in zoos; choose another name")
    url = url.strip()
    from zoo.hubs import is_hub_source

    if is_hub_source(url):  # a hub (hf://?author=ORG&library=onnx): its models come by search, add and sync
        cat.add_source(name, url, **policy)
        return _sync_hub(cat, cat.get_source(name)) if sync and "author=" in url else SyncReport(name, url, "added")
    url = _normalise_url(url)
    if not sync:
        cat.add_source(name, url, **policy)
        return SyncReport(name, url, "added")
    data, etag = _download(name, url, None)
    models = _parse(name, url, data)
    with cat.batch():
        cat.add_source(name, url, **policy)
        stats = apply_index(cat, name, models)
        cat.update_source(name, etag=etag, synced_at=time.time())
    return SyncReport(name, url, "synced", stats, etag)


def list_sources(*, catalog: str | os.PathLike | Catalog | None = None) -> list[SourceInfo]:
    """The sources the catalog follows, with their URL, ETag, last sync time and model count.

    Args:
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        One `SourceInfo` per source, by name.

    Raises:
        CatalogError: the catalog cannot be opened or read.
    """
    from zoo.catalog import open_catalog

    return open_catalog(catalog, create=False).sources()


def _sync_hub(cat: Catalog, source: SourceInfo) -> SyncReport:
    """A hub source's sync: each pinned model at its branch's commit now (a new commit with other
    files is a new revision), search results kept, the author's models listed (`zoo.hubs.sync_models`)."""
    from zoo.hubs import sync_models

    models = sync_models(cat, source)  # everything is asked of the hub before the catalog is touched
    with cat.batch():
        stats = apply_index(cat, source.name, models)
        cat.update_source(source.name, synced_at=time.time())
    return SyncReport(source.name, source.url, "synced", stats)


def _sync_one(cat: Catalog, source: SourceInfo, force: bool = False) -> SyncReport:
    from zoo.hubs import is_hub_source

    if is_hub_source(source.url):
        return _sync_hub(cat, source)
    data, etag = _download(source.name, source.url, None if force else source.etag)
    if data is None:
        cat.update_source(source.name, synced_at=time.time())
        return SyncReport(source.name, source.url, "unchanged", etag=etag)
    models = _parse(source.name, source.url, data)  # everything is validated before the catalog is touched
    with cat.batch():
        stats = apply_index(cat, source.name, models)
        cat.update_source(source.name, etag=etag, synced_at=time.time())
    return SyncReport(source.name, source.url, "synced", stats, etag)


def sync_sources(name: str | None = None, *, force: bool = False,
                 catalog: str | os.PathLike | Catalog | None = None) -> list[SyncReport]:
    """Bring the catalog up to date with one source, or all of them.

    Entries gone from an index are deleted, or kept and marked `removed_upstream` when their files
    were fetched. `force` downloads and applies the index even if its ETag says it is unchanged
    (e.g. to restore entries removed with `zoo rm`). Syncing one named source raises its error;
    syncing all reports each source's error in its `SyncReport` and goes on with the others.

    Args:
        name: one source to sync; None syncs every source.
        force: apply the index even when its ETag says it is unchanged.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        One `SyncReport` per source synced.

    Raises:
        UnknownSourceError: `name` is not registered.
        FetchError, IndexFormatError: syncing the one named source failed.
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    if name is not None:
        return [_sync_one(cat, cat.get_source(name), force)]
    reports = []
    for source in cat.sources():
        try:
            reports.append(_sync_one(cat, source, force))
        except ZooError as exc:
            reports.append(SyncReport(source.name, source.url, "error", error=str(exc)))
    return reports


def remove_source(name: str, *, catalog: str | os.PathLike | Catalog | None = None) -> SyncStats:
    """Forget a source and its models, keeping (marked `removed_upstream`) the ones fetched.

    Args:
        name: the source's name.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        What happened to its models: removed, or kept and marked when fetched.

    Raises:
        UnknownSourceError: `name` is not registered (or is "local").
    """
    from zoo.catalog import open_catalog

    if name in RESERVED:
        raise UnknownSourceError(f"{name!r} is not a source but zoo's name for models added with "
                                 "`zoo add`; remove those with `zoo rm NAME`")
    cat = open_catalog(catalog)
    with cat.batch():
        cat.get_source(name)  # an unknown name is an error naming the registered ones
        stats = apply_index(cat, name, [])
        cat.delete_source(name)
    return stats


__all__ = ["SyncReport", "SyncStats", "add_source", "apply_index", "list_sources", "remove_source", "sync_sources"]
