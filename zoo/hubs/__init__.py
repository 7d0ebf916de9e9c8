"""Model hubs as zoo sources: search them live, pin a model to a commit, fetch through the hub's client.

A hub is one module with the same few functions (`zoo.hubs.huggingface` is the Hugging Face Hub,
``hf://``); another hub (Kaggle Models through kagglehub, ``kaggle://``) is one more module named in
`SCHEMES`. What a hub module gives:

- ``search(query, *, author, libraries, limit, source) -> list[Model]``: live results, best first,
  as catalog entries without files yet (``meta["hub"]["stub"]``);
- ``resolve(repo, *, revision, path, name, source) -> Model``: the model pinned to a commit, its
  files with their sizes and checksums, its card's facts;
- ``Origin(model)``: how `zoo.fetch` downloads its files (session, token, the file's location);
- ``DEFAULT_LIBRARIES`` and ``offline()``; optionally ``client()``, which imports the hub's
  library so a search can start before the catalog opens.

This package keeps what is the same for every hub: ``SCHEME://REPO[@REV][/PATH]`` references, the
hub source rows (``hf://?author=ORG&library=onnx,keras``), and storing what a search found so an
offline search still shows it. The hub's own library is imported only when a hub is used: `zoo
search` without ``--hub`` never imports it.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import parse_qs, urlencode, urlsplit

from zoo.errors import InputError
from zoo.hubs._early import start_search

if TYPE_CHECKING:
    from types import ModuleType

    from zoo.catalog import Catalog, SourceInfo
    from zoo.records import Model

__all__ = ["SCHEMES", "HubRef", "add", "hub_options", "hub_url", "is_hub_ref", "is_hub_source", "origin",
           "parse_ref", "search", "sync_models"]

# scheme -> the module that speaks to that hub
SCHEMES = {"hf": "zoo.hubs.huggingface"}
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubRef:
    """``hf://OWNER/REPO[@REV][/PATH]``: a repository, maybe a revision (branch, tag, commit), maybe a file."""

    scheme: str
    repo: str
    revision: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return (f"{self.scheme}://{self.repo}" + (f"@{self.revision}" if self.revision else "")
                + (f"/{self.path}" if self.path else ""))


def is_hub_ref(text: str) -> bool:
    """Whether `text` names a hub model (``hf://...``) rather than a file or a catalog name."""
    return isinstance(text, str) and any(text.startswith(f"{scheme}://") for scheme in SCHEMES)


def is_hub_source(url: str) -> bool:
    """Whether a source's URL is a hub's (``hf://``, with or without a query) rather than an index's."""
    return any(url == f"{scheme}://" or url.startswith(f"{scheme}://?") for scheme in SCHEMES)


def parse_ref(text: str) -> HubRef:
    """``hf://onnx-community/resnet-18@main/onnx/model.onnx`` -> its parts.

    Raises:
        InputError: not a hub reference, or not OWNER/REPO.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise InputError(f"{text!r} is not a hub model; write it as hf://OWNER/REPO[@REVISION][/PATH]")
    parts = rest.strip("/").split("/")
    if len(parts) < 2:
        raise InputError(f"{text!r} names no repository; write it as {scheme}://OWNER/REPO, e.g. "
                         f"{scheme}://onnx-community/resnet-18")
    owner, repo_rev, path = parts[0], parts[1], "/".join(parts[2:]) or None
    repo, at, revision = repo_rev.partition("@")
    repo_id = f"{owner}/{repo}"
    if not _REPO.match(repo_id) or "--" in repo_id or ".." in repo_id or (at and not revision):
        raise InputError(f"{text!r} is not a repository name the hub allows (OWNER/REPO of letters, digits, "
                         "'-', '_' and '.')")
    return HubRef(scheme, repo_id, revision or None, path)


def _module(scheme: str) -> ModuleType:
    return importlib.import_module(SCHEMES[scheme])


def hub_url(scheme: str, author: str | None = None, libraries: Sequence[str] | None = None) -> str:
    """The URL a hub source row keeps: ``hf://``, with its author and libraries as a query."""
    query = {k: v for k, v in (("author", author), ("library", ",".join(libraries or []))) if v}
    return f"{scheme}://" + (f"?{urlencode(query)}" if query else "")


def hub_options(url: str) -> tuple[str, str | None, list[str] | None]:
    """(scheme, author, libraries) of a hub source's URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    libraries = [x for v in query.get("library", []) for x in v.split(",") if x] or None
    return parts.scheme, (query.get("author") or [None])[0], libraries


def _hub_source(cat: Catalog, scheme: str) -> SourceInfo:
    """The catalog's source row for this hub: the first one whose URL is ``SCHEME://``; made if none."""
    for source in cat.sources():
        if is_hub_source(source.url) and source.url.startswith(f"{scheme}://"):
            return source
    if any(s.name == scheme for s in cat.sources()):
        raise InputError(f"source {scheme!r} is an index, not the {scheme}:// hub; rename it with `zoo source rm "
                         f"{scheme}` and add it again under another name")
    return cat.add_source(scheme, hub_url(scheme))


def _offline(module: ModuleType, offline: bool | None) -> bool:
    from zoo import config

    return bool(offline) or config.offline() or module.offline()


def search(query: str | None, *, scheme: str = "hf", author: str | None = None,
           libraries: Sequence[str] | None = None, limit: int = 20, offline: bool | None = None,
           catalog: str | os.PathLike | Catalog | None = None) -> list[Model]:
    """Search a hub live (most downloaded first) and keep what it found in the catalog.

    The results are stored as entries of the hub's source (files not known yet: `add` or `zoo.fetch`
    pins one), so a later search without the network still shows them. Offline, the stored ones
    are searched instead. The source's ``--author`` and ``--library`` apply unless given here.

    Args:
        query: words to look for (None: the most downloaded).
        scheme: which hub ("hf").
        author: only this user's or organisation's models.
        libraries: only models of these libraries (default: the source's, else the formats zoo converts).
        limit: most results.
        offline: search only what earlier searches stored (also $ZOO_OFFLINE, $HF_HUB_OFFLINE).
        catalog: the catalog.

    Returns:
        The models found, most downloaded first, named as the catalog stores them.

    Raises:
        HubError: the hub refused or cannot be reached (one line: what to do).
        MissingDependencyError: the hub's client library is not installed (`pip install 'zoo[hub]'`).
    """
    module = _module(scheme)
    if _offline(module, offline):  # what earlier searches stored, most downloaded first as the hub ranks
        from zoo.catalog import open_catalog

        cat = open_catalog(catalog)
        stored = cat.search(query, source=_hub_source(cat, scheme).name, limit=None)
        stored.sort(key=lambda m: -((m.meta.get("hub") or {}).get("downloads") or 0))
        return stored[:limit or None]
    # Most searches use the hub source's defaults: ask the hub now, while the catalog opens (both
    # sides are mostly imports; zoo.hubs._early says how they overlap); asked again if the source
    # says otherwise.
    early = start_search(module, query, author, libraries, limit)
    try:
        from zoo.catalog import open_catalog

        cat = open_catalog(catalog)
        source = _hub_source(cat, scheme)
        _, source_author, source_libraries = hub_options(source.url)
        wanted = (author or source_author, list(libraries or source_libraries or module.DEFAULT_LIBRARIES))
        # The batch loads what writes need (SQLAlchemy's ORM) while the hub answers; its lock is
        # taken by the first write, once the answer is in.
        with cat.batch():
            if early.asked == wanted:
                found = early.result()
                for model in found:
                    model.source = source.name
            else:
                early.close()
                found = module.search(query, author=wanted[0], libraries=wanted[1], limit=limit,
                                      source=source.name)
            found = [_keep_stub(cat, model) for model in found]
    finally:
        early.close()  # the search does not outlive an error here (or Ctrl-C)
    return found


def _keep_stub(cat: Catalog, model: Model) -> Model:
    """Store a search result; a model already pinned keeps its files, only its numbers change.
    Returns the result as the catalog has it (a pinned model: pinned or fetched, as `zoo search` says)."""
    if not cat.exists(model.name):
        cat.add_model(model)
        return model
    known = cat.get(model.name)
    hub = known.meta.get("hub") or {}
    if hub.get("repo") != model.meta["hub"]["repo"]:
        return model  # a model of that name from elsewhere: left as it is (the result is shown, not stored)
    if hub.get("stub"):
        cat.add_model(model, replace=True)
        return model
    return cat.update_model(model.name, meta={**known.meta, "hub": {
        **hub, "downloads": model.meta["hub"].get("downloads"), "likes": model.meta["hub"].get("likes")}})


def add(ref: str, *, name: str | None = None, catalog: str | os.PathLike | Catalog | None = None) -> Model:
    """Register a hub model pinned to its commit (``hf://OWNER/REPO[@REV][/PATH]``).

    Its files come with their sizes and checksums (an LFS file's sha256), its licence, tags, task,
    the card's summary and, where the repo has one, an input spec from its preprocessing config.
    Adding it again later pins the new commit: a change of files is a new revision (the old one is
    kept, ``NAME@REV``).

    Args:
        ref: the hub reference.
        name: the catalog name (default: OWNER--REPO, and the file's stem when PATH is given).
        catalog: the catalog.

    Returns:
        The catalog entry.

    Raises:
        HubError: the repo, revision or file is not there, is gated, or the hub cannot be reached.
        ModelFormatError: the repo holds no file zoo converts (the message lists what it has).
        DuplicateModelError: `name` belongs to a model from elsewhere.
    """
    from zoo.catalog import open_catalog
    from zoo.errors import DuplicateModelError
    from zoo.records import check_name

    parsed = parse_ref(ref)
    module = _module(parsed.scheme)
    if name is not None:
        check_name(name, example="resnet18.hf")
    cat = open_catalog(catalog)
    source = _hub_source(cat, parsed.scheme)
    model = module.resolve(parsed.repo, revision=parsed.revision, path=parsed.path, name=name, source=source.name)
    if cat.exists(model.name):
        known = cat.get(model.name)
        if (known.meta.get("hub") or {}).get("repo") != parsed.repo:
            raise DuplicateModelError(f"a model named {model.name!r} is already in the catalog (from "
                                      f"{known.source}); add {ref} under another name with --name")
    return cat.add_model(model, replace=True)


def sync_models(cat: Catalog, source: SourceInfo) -> list[Model]:
    """What a hub source holds now: each pinned model at its branch's current commit, the earlier
    search results, and (with an author) that author's models. `zoo.sources` applies it."""
    from zoo.errors import HubError

    scheme, author, libraries = hub_options(source.url)
    module = _module(scheme)
    models: dict[str, Model] = {}
    for known in cat.search(source=source.name, limit=None):
        hub = known.meta.get("hub") or {}
        if hub.get("stub"):
            models[known.name] = known
            continue
        try:
            models[known.name] = module.resolve(hub["repo"], revision=hub.get("ref"), path=hub.get("path"),
                                                name=known.name, source=source.name)
        except HubError as error:
            if error.status != 404:
                raise
            # gone upstream: left out, so the sync deletes it (or marks it when fetched)
    if author:
        for found in module.search(None, author=author, libraries=libraries or list(module.DEFAULT_LIBRARIES),
                                   limit=1000, source=source.name):
            models.setdefault(found.name, found)
    return list(models.values())


def origin(model: Model) -> Any:
    """How to fetch a hub model's files (`Origin` of its hub's module), None for any other model."""
    hub = model.meta.get("hub")
    if not isinstance(hub, dict) or hub.get("name") not in SCHEMES:
        return None
    return _module(hub["name"]).Origin(model)
