"""The user's own models: `add(path)` registers one, `scan(folder)` every model under it, `edit(name)` changes one."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import DuplicateModelError, InputError, ModelFormatError
from zoo.records import Artifact, InputSpec, Model, check_name

if TYPE_CHECKING:
    from zoo.catalog import Catalog
    from zoo.formats import FormatInfo

SOURCE = "local"


@dataclass
class ScanResult:
    """What `scan` did: names added, unchanged, moved (path updated), changed (new content);
    local models under the folder whose files are gone; files that look like models but are not."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "unchanged": self.unchanged, "moved": self.moved,
                "changed": self.changed, "missing": self.missing,
                "problems": [{"path": p, "error": e} for p, e in self.problems]}


def _artifacts(info: FormatInfo) -> list[Artifact]:
    """One artifact per file of the model, with its path, size and sha256 (folders: tree hash)."""
    from zoo.hashes import file_sha256

    artifacts = []
    for role, path in info.files.items():
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            meta = {"sha256_of": "folder"}
        else:
            size, meta = path.stat().st_size, {}
        artifacts.append(Artifact(role=role, filename=path.name, size=size, path=str(path),
                                  sha256=file_sha256(path), meta=meta))
    return artifacts


def default_name(info: FormatInfo) -> str:
    """The name `add` gives a model: its file or folder stem, made safe."""
    path = info.path
    stem = path.name if path.is_dir() else path.stem
    stem = re.sub(r"\.weights$", "", stem)  # Keras' tiny.weights.h5
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-") or info.format
    return name[:128]


def _model(info: FormatInfo, name: str, task: str | None, dataset: str | None,
           tags: Iterable[str], description: str | None) -> Model:
    meta = dict(info.meta)
    if info.format == "onnx":
        meta.update(_onnx_inputs(info.path))
    return Model(
        name=name, framework=info.framework, format=info.format, task=task, dataset=dataset,
        description=description, tags=list(dict.fromkeys(tags)), source=SOURCE,
        artifacts=_artifacts(info), meta=meta,
    )


def _onnx_inputs(path: Path) -> dict[str, Any]:
    """``{"graph_inputs": [...]}`` read from an ONNX file (its weights left on disk), for `zoo info`."""
    try:
        import onnx

        from converters.onnx_model import input_records

        return {"graph_inputs": input_records(onnx.load(os.fspath(path), load_external_data=False))}
    except Exception:  # noqa: BLE001  the format check passed; what the inputs are is only a nicety here
        return {}


def add(
    path: str | os.PathLike,
    *more: str | os.PathLike,
    name: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    tags: Iterable[str] = (),
    description: str | None = None,
    inputs: Mapping[str, Any] | Iterable[str] | None = None,
    args: Mapping[str, Any] | Iterable[str] | None = None,
    input_spec: InputSpec | Mapping[str, Any] | str | os.PathLike | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
) -> Model:
    """Register the model at `path` (any supported format, detected from its content).

    A Caffe model may be given as its two files, ``add("deploy.prototxt", "net.caffemodel")``
    (either order); one file finds its other half beside it. FIFOs, sockets and devices are
    refused without being opened. The name defaults to the file or folder stem; a name already
    in the catalog raises `DuplicateModelError` (choose another with ``name=``).

    `inputs` and `args` record what a TorchScript ``forward`` takes (see `zoo.input_specs`), so
    `convert` needs nothing more: ``inputs={"x": "1x512"}, args={"sr": 16000}``.

    `input_spec` says how images become its input (see `zoo.preprocessing`). A file whose content
    matches a file of a published catalog entry (a built-in zoo or a synced index) is recognised
    as that model: it takes that entry's input spec (unless given), licence, description and
    task, and ``meta["same_as"]`` names it.

    A Hub model (``hf://OWNER/REPO[@REV][/PATH]``) is registered by `zoo.hubs.add`, pinned to its commit.

    Args:
        path: the model file or folder (or a Hub model); `more` the other half of a Caffe pair.
        name: the catalog name (default: the file or folder stem).
        task, dataset, tags, description: what the catalog says about it.
        inputs, args: what a TorchScript ``forward`` takes (``NAME=SHAPE[:DTYPE]``, ``NAME=VALUE``).
        input_spec: an InputSpec, a dict of its fields or a JSON file
            (``{"mean": [104, 117, 123], "channel_order": "BGR"}``).
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        The new catalog entry, source "local", its files as artifacts.

    Raises:
        ModelFormatError: the file is not a model zoo recognises, or is not what it claims.
        DuplicateModelError: the name is taken.
        InputError: a malformed ``inputs``/``args`` value or input spec.

    >>> zoo.add("exports/cats.onnx", task="image-classification", tags=["cats"])  # doctest: +SKIP
    >>> zoo.add("vad.pt", inputs=["x=1x512"], args=["sr=16000"])  # doctest: +SKIP
    >>> zoo.add("net.onnx", input_spec={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})  # doctest: +SKIP
    """
    from zoo.catalog import open_catalog
    from zoo.formats import detect_files
    from zoo.hubs import is_hub_ref
    from zoo.input_specs import arg_values, input_specs
    from zoo.preprocessing import parse

    if is_hub_ref(os.fspath(path)):  # a Hub model (`zoo add hf://...`), not a file "hf:/..." here
        from zoo.hubs import add as hub_add

        given = [k for k, v in (("more paths", more), ("task", task), ("dataset", dataset), ("tags", tags),
                                ("description", description), ("inputs", inputs), ("args", args),
                                ("input_spec", input_spec)) if v]
        if given:
            raise InputError(f"{os.fspath(path)} is a Hub model: it takes only name= (its facts come from the "
                             f"Hub; set others later with zoo.edit), not {', '.join(given)}")
        return hub_add(os.fspath(path), name=name, catalog=catalog)
    specs, values = input_specs(inputs), arg_values(args)
    spec_fields = parse(input_spec) if input_spec is not None else {}
    info = detect_files([path, *more])
    if (specs or values) and info.framework != "pytorch":
        raise ModelFormatError(
            f"{info.path} is a {info.framework} model: --input/--arg describe a TorchScript "
            f"forward(); its inputs are already in the file, so leave them out")
    name = check_name(name or default_name(info), ModelFormatError, "--name my_model")
    cat = open_catalog(catalog)
    if cat.exists(name):  # say so before hashing a large file
        raise DuplicateModelError(
            f"a model named {name!r} is already in the catalog; choose another name with "
            f"--name, or remove it first with `zoo rm {name}`"
        )
    model = _model(info, name, task, dataset, tags, description)
    _set_inputs(model, specs, values)
    _set_spec(model, spec_fields)
    _recognise(cat, model, keep_spec=bool(spec_fields))
    return cat.add_model(model)


def _set_spec(model: Model, fields: Mapping[str, Any]) -> None:
    """Put checked InputSpec fields (zoo.preprocessing.parse) on a model record."""
    if fields:
        from zoo.preprocessing import apply

        model.input = apply(model.input, fields)


def _recognise(cat: Catalog, model: Model, keep_spec: bool) -> str | None:
    """Make `model` inherit from the published catalog entry one of its files is a copy of; its name.

    The entry gives what the file cannot say: its input spec (mean, std, channel order, sizes:
    the same Caffe weights must see the same pixels whether added by hand or fetched), licence,
    description, task, dataset and architecture. What the user gave is kept.
    """
    from zoo.hashes import MultiHasher, parse_checksum

    for artifact in model.artifacts:
        if not artifact.sha256 or not artifact.path or os.path.isdir(artifact.path):
            continue
        candidates = [(n, a) for n, a in cat.find_published(artifact.sha256, artifact.size or 0)
                      if a.role == artifact.role]
        if not candidates:
            continue
        algos = {parse_checksum(a.checksum)[0] for _, a in candidates if a.checksum}
        digests = {"sha256": artifact.sha256}
        if algos - {"sha256"}:  # one more read of the file, for the algorithms its publishers used
            hasher = MultiHasher(sorted(algos), size=artifact.size)
            with open(artifact.path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    hasher.update(chunk)
            digests.update({algo: hasher.hexdigest(algo) for algo in algos})
        for name, published in candidates:
            same = published.sha256 == artifact.sha256 or (
                published.checksum and digests.get(parse_checksum(published.checksum)[0])
                == parse_checksum(published.checksum)[1])
            if same:
                _inherit(model, cat.get(name), keep_spec, f"{artifact.role} {artifact.filename}")
                return name
    return None


def _inherit(model: Model, published: Model, keep_spec: bool, which: str) -> None:
    if not keep_spec:
        spec = published.input
        if spec.name is None or (model.input.name and model.framework != published.framework):
            spec = dataclasses.replace(spec, name=model.input.name or spec.name)
        model.input = spec
    for fact in ("license", "description", "task", "dataset", "architecture", "homepage", "paper"):
        if getattr(model, fact) is None and getattr(published, fact) is not None:
            setattr(model, fact, getattr(published, fact))
    model.meta["same_as"] = {"model": published.name, "file": which,
                             "inherited": ["input spec"] * (not keep_spec) + ["licence", "description"]}


def edit(
    name: str,
    *,
    input_spec: InputSpec | Mapping[str, Any] | str | os.PathLike | None = None,
    task: str | None = None,
    dataset: str | None = None,
    description: str | None = None,
    license: str | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
) -> Model:
    """Change what the catalog says about a model: its input spec (fields given replace those
    recorded, the others stay), task, dataset, description or licence.

    Each edit is recorded in ``meta["edits"]`` (when, which fields), which `zoo info` shows.
    Features cached from images follow: their cache key holds the spec.

    Args:
        name: the cataloged model.
        input_spec: InputSpec fields to set (an InputSpec, a dict or a JSON file; see `zoo.preprocessing`).
        task, dataset, description, license: what the catalog says about it.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        The updated catalog entry.

    Raises:
        UnknownModelError: no model of that name.
        InputError: nothing to change, or a malformed spec field.

    >>> zoo.edit("my_net", input_spec={"mean": [104, 117, 123], "channel_order": "BGR"})  # doctest: +SKIP
    """
    import time

    from zoo.catalog import open_catalog
    from zoo.preprocessing import apply, parse

    cat = open_catalog(catalog)
    model = cat.get(name)
    changes: dict[str, Any] = {}
    fields = parse(input_spec) if input_spec is not None else {}
    if fields:
        changes["input"] = apply(model.input, fields).to_dict()
    for fact, value in (("task", task), ("dataset", dataset), ("description", description), ("license", license)):
        if value is not None:
            changes[fact] = value
    if not changes:
        from zoo.errors import InputError

        raise InputError(f"nothing to change for {name}: give an input spec field (--mean, --std, --scale, "
                         f"--channel-order, --layout, --resize, --crop or --input-spec) or --task, --dataset, "
                         f"--description, --license")
    meta = dict(model.meta)
    record = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "fields": sorted([*fields, *(k for k in changes if k != "input")])}
    meta["edits"] = [*meta.get("edits", []), record]
    return cat.update_model(name, meta=meta, **changes)


def _set_inputs(model: Model, specs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """Put input specs and forward args on a model record: meta, and `input` for a single input."""
    if specs:
        model.meta["input_specs"] = specs
        if len(specs) == 1:
            model.input = dataclasses.replace(model.input, name=specs[0]["name"], shape=specs[0]["shape"],
                                              dtype=specs[0]["dtype"])
    if values:
        model.meta["args"] = values


def record_inputs(cat: Catalog, model: Model, specs: list[dict[str, Any]], values: dict[str, Any]) -> Model:
    """Store input specs and forward args on a cataloged model (after a conversion proved them)."""
    _set_inputs(model, specs, values)
    return cat.update_model(model.name, meta=model.meta, input=model.input.to_dict())


def _unique_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def scan(folder: str | os.PathLike, *, input_spec: InputSpec | Mapping[str, Any] | str | os.PathLike | None = None,
         catalog: str | os.PathLike | Catalog | None = None) -> ScanResult:
    """Register every model under `folder`; safe to run again.

    A file already registered at its path is left alone (or updated if its content changed);
    a file whose sha256 matches a local model whose file is gone is that model, moved (its path
    is updated). Everything happens in one transaction. Models added get `input_spec` (see
    `add`); one that is a copy of a published catalog entry's file inherits from it, as in `add`.

    Args:
        folder: where to look, recursively.
        input_spec: the input spec of the models added (see `add`).
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        What was added, updated, moved, left alone or found missing, and the files skipped and why.

    Raises:
        ModelFormatError: `folder` is not a folder.
        InputError: a malformed input spec.
        CatalogError: the catalog cannot be written.
    """
    from zoo.catalog import open_catalog
    from zoo.formats import find_models
    from zoo.preprocessing import parse

    spec_fields = parse(input_spec) if input_spec is not None else {}
    found, problems = find_models(folder)
    result = ScanResult(problems=[(str(p), e) for p, e in problems])
    # Hash before the transaction: hashing large files must not hold the catalog's write lock.
    candidates = [(info, _artifacts(info)) for info in found]
    cat = open_catalog(catalog)
    root = Path(folder).expanduser().absolute()
    with cat.batch():
        taken = set(cat.names())
        seen: set[str] = set()
        for info, artifacts in candidates:
            primary = next(a for a in artifacts if Path(a.path) == info.path)
            for outcome, name in _place(cat, info, artifacts, primary, taken, spec_fields):
                seen.add(name)
                getattr(result, outcome).append(name)
        for model in cat.search(source=SOURCE, limit=None):
            if model.name in seen:
                continue
            paths = [Path(a.path) for a in model.artifacts if a.path and a.role != "onnx"]
            if any(p.is_relative_to(root) and not p.exists() for p in paths):
                result.missing.append(model.name)
    return result


def _place(cat: Catalog, info: FormatInfo, artifacts: list[Artifact], primary: Artifact,
           taken: set[str], spec_fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Register one found model; returns (what happened, model name) for each entry it touched."""
    outcomes = []
    for name, known in cat.find_by_path(primary.path):
        if known.role != primary.role:
            continue
        # The usual rescan case costs one query per file: look the model up only if it changed.
        same = known.sha256 == primary.sha256 and all(
            any(n == name and k.role == a.role and k.sha256 == a.sha256
                for n, k in cat.find_by_path(a.path))
            for a in artifacts if a is not primary)
        if same:
            outcomes.append(("unchanged", name))
        else:
            _refresh(cat, cat.get(name), info, artifacts)
            outcomes.append(("changed", name))
    if outcomes:
        return outcomes
    for name, known in cat.find_by_sha256(primary.sha256):
        if known.role != primary.role or (known.path and Path(known.path).exists()):
            continue  # a copy of a model still in its place is a model of its own
        model = cat.get(name)
        if model.source != SOURCE:
            continue  # fetched files are the fetcher's to track
        _refresh(cat, model, info, artifacts)
        outcomes.append(("moved", name))
    if outcomes:
        return outcomes
    name = _unique_name(default_name(info), taken)
    taken.add(name)
    model = Model(name=name, framework=info.framework, format=info.format, source=SOURCE,
                  artifacts=artifacts, meta=dict(info.meta))
    _set_spec(model, spec_fields)
    _recognise(cat, model, keep_spec=bool(spec_fields))
    cat.add_model(model)
    return [("added", name)]


def _refresh(cat: Catalog, model: Model, info: FormatInfo, artifacts: list[Artifact]) -> None:
    """Point a model at its files' new paths and hashes, keeping what the user said about it."""
    for artifact in artifacts:
        old = model.artifact(artifact.role)
        if old is not None and old.filename != artifact.filename:
            cat.remove_artifact(model.name, old.role, old.filename)
        meta = {**old.meta, **artifact.meta} if old is not None else dict(artifact.meta)
        cat.put_artifact(model.name, dataclasses.replace(artifact, meta=meta))
    if (model.framework, model.format) != (info.framework, info.format):
        cat.update_model(model.name, framework=info.framework, format=info.format)


__all__ = ["ScanResult", "add", "default_name", "edit", "record_inputs", "scan"]
