"""Publishing: `zoo index export` writes a zoo index of catalog models that another team can follow.

The index (docs/index-format.md) lists each model at its current revision (or the one ``NAME@REV``
names) with its files' sizes and sha256, its revision and version, and its input spec, so a team
that runs ``zoo source add`` on it fetches exactly these bytes. Two ways to point at the files:

- the files' own URLs (a model from an index or a hub keeps where it came from);
- ``base_url``: the files are published beside the index, ``<folder>/<name>/<revision>/<filename>``
  (a hard link to the cached file where the file system allows, else a copy), and the index points
  at ``<base_url>/<name>/<revision>/<filename>``. A new revision gets a folder of its own, so a
  lock file written against the old index still fetches what it pinned.

Local facts (paths on disk, where a file was fetched from, unpacked folders, signature verdicts)
never go into an index.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote, urlsplit

from zoo.atomic import atomic_path, write_atomic, write_error
from zoo.errors import InputError
from zoo.records import DERIVED_ROLES, NAME_PATTERN, Artifact, Model
from zoo.revisions import split_ref

if TYPE_CHECKING:
    from zoo.catalog import Catalog

__all__ = ["Export", "export_index"]

# What a file's meta says about this machine only: never published.
LOCAL_FILE_META = ("fetched_from", "archive_path", "unpacked_sha256", "first_fetch_sha256", "size_measured", "lineage", "added",
                   "sandbox", "by")
# What a model's meta says about this catalog only ("hub": how this catalog fetches it; the
# published entry is a plain index entry, its origin kept as `upstream`).
LOCAL_MODEL_META = ("hub", "damaged", "fetched_at")


@dataclass
class Export:
    """What `export_index` wrote: the index, the models in it and the files published beside it."""

    index: str
    models: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "models": self.models, "files": self.files, "bytes": self.bytes}


def export_index(names: Sequence[str] = (), output: str | os.PathLike = "index.json", *,
                 base_url: str | None = None, index_name: str | None = None, description: str | None = None,
                 catalog: str | os.PathLike | Catalog | None = None) -> Export:
    """Write a zoo index of `names` (default: every model whose files are on disk) to `output`.

    Args:
        names: catalog names, ``NAME@REV`` for a past revision.
        output: the index file to write (its folder is made, as for any output).
        base_url: where the folder of `output` will be served; the files are published in it.
        index_name: the index's ``name`` (default: the output's stem).
        description: a sentence about the index.
        catalog: the catalog.

    Returns:
        The index written, the models in it and the files published beside it (with their bytes).

    Raises:
        InputError: a model has no file to point at (never fetched, or added from a local file
            without `base_url`), or `base_url` is not http(s).
        UnknownModelError / UnknownRevisionError: a name or revision that is not in the catalog.
    """
    from zoo.catalog import open_catalog
    from zoo.destinations import prepare
    from zoo.index import dump_index, parse_index

    if base_url is not None and _scheme(base_url) not in ("http", "https"):
        raise InputError(f"--base-url {base_url!r} is not an http(s) URL; give where the index's folder will be "
                         "served, e.g. https://models.example.org/zoo")
    output = Path(output).expanduser().absolute()
    cat = open_catalog(catalog, create=False)
    if names:
        models = [cat.get(name) for name in names]
    else:
        models = [m for m in cat.search(limit=None) if m.is_local]
        if not models:
            raise InputError("no model's files are on disk to export; name the models (zoo index export NAME...) "
                             "or fetch them first (zoo fetch NAME)")
    prepare(output, "--output")
    folder = output.parent
    done = Export(str(output))
    entries: list[Model] = []
    seen: set[str] = set()
    for model in models:
        name = split_ref(model.name)[0]
        if name.casefold() in seen:
            raise InputError(f"{name} is named twice; an index holds one revision of each model")
        seen.add(name.casefold())
        entry = _entry(model, name)
        if base_url is not None:
            entry = _publish(entry, model, folder, base_url.rstrip("/"), done)
        else:
            _check_urls(entry)
        entries.append(entry)
        done.models.append(name)
    index = dump_index(entries, name=index_name or _index_name(output), description=description)
    text = json.dumps(index, indent=1, sort_keys=False) + "\n"
    parse_index(text, source=index["name"], remote=base_url is not None)  # what `zoo source add` will read
    write_atomic(output, text)
    return done


def _index_name(output: Path) -> str:
    stem = output.stem if output.stem not in ("index", "zoo") else output.parent.name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("._-")
    return cleaned if cleaned and NAME_PATTERN.match(cleaned) else "zoo"


def _entry(model: Model, name: str) -> Model:
    """The model as an index entry: its published files only, no local facts."""
    meta = {k: v for k, v in model.meta.items() if k not in LOCAL_MODEL_META}
    hub = model.meta.get("hub")
    if isinstance(hub, dict) and hub.get("repo"):
        meta["upstream"] = (f"{hub.get('name', 'hf')}://{hub['repo']}" + (f"@{hub['commit']}" if hub.get("commit") else "")
                            + (f"/{hub['path']}" if hub.get("path") else ""))
    files = [replace(a, meta={k: v for k, v in a.meta.items() if k not in LOCAL_FILE_META})
             for a in model.artifacts if a.role not in DERIVED_ROLES]
    if not files:
        raise InputError(f"{model.name} has no files to publish (a hub search result is pinned by `zoo add` or "
                         "`zoo fetch` first)")
    for artifact in files:
        if not artifact.checksum and artifact.sha256:  # a local file's own hash is what it must hash to
            artifact.checksum = f"sha256:{artifact.sha256}"
        elif not artifact.checksum and artifact.meta.get("checksum_published") is not False:
            first = next((a.meta.get("first_fetch_sha256") for a in model.artifacts if a.filename == artifact.filename),
                         None)
            if first:
                artifact.checksum = f"sha256:{first}"
    signature = model.artifact("signature")
    if signature is not None and signature.meta.get("by") != "zoo":  # the publisher's, passed on
        files.append(replace(signature, meta={k: v for k, v in signature.meta.items() if k not in LOCAL_FILE_META}))
    return replace(model, name=name, artifacts=files, meta=meta, signature={}, source=None, removed_upstream=False)


def _check_urls(entry: Model) -> None:
    for artifact in entry.artifacts:
        if not artifact.urls and not artifact.meta.get("manual"):
            raise InputError(f"{entry.name}: {artifact.filename} has no URL (a file added from this machine); "
                             "give --base-url to publish the files beside the index")


def _scheme(url: str) -> str | None:
    """The URL's scheme, or None when it does not parse (``ftp://[bad``)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        return None


def _publish(entry: Model, model: Model, folder: Path, base_url: str, done: Export) -> Model:
    """Place the model's files under `folder`/NAME/REVISION/ and point the entry's URLs there."""
    revision = model.revision or "current"
    files = []
    for artifact in entry.artifacts:
        own = next((a for a in model.artifacts if (a.role, a.filename) == (artifact.role, artifact.filename)), None)
        path = own.meta.get("archive_path") if own is not None and own.extract else (own.path if own else None)
        if path and os.path.isdir(path):
            raise InputError(f"{model.name}: {artifact.filename} is a folder, which an index cannot serve; pack it "
                             "as a .tar or .zip, add that, and export it")
        if not path or not os.path.isfile(path):
            from zoo.download import remedy

            how = remedy(model.name, own) if own is not None and own.path else f"run `zoo fetch {model.name}` first"
            raise InputError(f"{model.name}: {artifact.filename} is not on disk, so it cannot be published beside "
                             f"the index; {how}")
        target = folder / entry.name / revision / artifact.filename
        size = _place(Path(path), target)
        done.files.append(str(target))
        done.bytes += size
        sha256 = own.sha256 if own is not None and own.sha256 else None
        checksum = artifact.checksum if artifact.checksum and artifact.checksum.startswith("sha256:") else None
        files.append(replace(
            artifact, urls=[f"{base_url}/{quote(entry.name)}/{quote(revision)}/{quote(artifact.filename)}"],
            size=size, checksum=checksum or (f"sha256:{sha256}" if sha256 else artifact.checksum),
            meta={k: v for k, v in artifact.meta.items() if k != "manual"}))
    return replace(entry, artifacts=files)


def _place(source: Path, target: Path) -> int:
    """`target` made the same bytes as `source`: a hard link where possible, else a copy (atomic)."""
    try:
        if target.exists() and os.path.samefile(source, target):
            return target.stat().st_size
    except OSError:
        pass
    with atomic_path(target) as tmp:
        try:
            tmp.unlink()
            os.link(source, tmp)
        except OSError:
            try:
                shutil.copyfile(source, tmp)
            except OSError as exc:
                raise write_error(exc, target) from None
    return target.stat().st_size
