"""Lineage: every artifact zoo derives records its parents' digests, the tools and the figures that verified it.

A `Lineage` is one step: a conversion (parents: the publisher's files), a cut (parent: the
converted ONNX), a feature-cache entry (parents: the cut and the input data), a trained head
(parents: the features and the base model's ONNX) or a pretrained stack (parent: the data).
Each names its parents by sha256, so the whole chain, from the publisher's bytes to the
features a head was trained on, is rebuilt by following digests through the catalog and the
cache (`chain`); `zoo lineage NAME` prints it. The same record, wrapped as an in-toto
statement (`statement`), is what `zoo sign` signs beside an artifact, so a signature attests
where the bytes came from, not only what they are.

Records live where their artifact is described: a catalog artifact's ``meta["lineage"]``
(conversions, trained and pretrained models), a cut's JSON, a feature-cache manifest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from zoo.catalog import Catalog
    from zoo.records import Artifact, Model

LINEAGE_VERSION = 1
# The in-toto predicate type of a zoo lineage statement (zoo's schema namespace, as the index's).
PREDICATE_TYPE = "https://zoo.invalid/attestation/lineage/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
KINDS = ("publisher", "conversion", "cut", "features", "training", "pretraining")


def tool_versions(*packages: str) -> dict[str, str]:
    """zoo's, Python's and each installed package's version (nothing is imported to learn them)."""
    from importlib import metadata

    from zoo.config import version

    versions = {"zoo": version(), "python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Parent:
    """One input of a derived artifact, named by its digest (and, for people, by what it is)."""

    kind: str  # "file" (a model's published or own file), "onnx", "cut", "features", "data", "model"
    sha256: str | None
    name: str | None = None  # what a person calls it: a filename, a layer, a data file
    model: str | None = None  # the cataloged model it belongs to
    role: str | None = None  # the artifact role, for a model's file
    ref: str | None = None  # where to find it: a cache key, a path

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Parent:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Lineage:
    """How one artifact was made: kind, own digest, parents, tools, settings, verifying figures."""

    kind: str
    sha256: str | None
    parents: list[Parent] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    version: int = LINEAGE_VERSION

    def to_dict(self) -> dict[str, Any]:
        from zoo._json import finite

        return finite({"version": self.version, "kind": self.kind, "sha256": self.sha256,
                       "parents": [p.to_dict() for p in self.parents], "tools": dict(self.tools),
                       "settings": dict(self.settings), "figures": dict(self.figures),
                       "created": self.created})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        """The record from its JSON form; a record from a newer zoo keeps what this one knows."""
        return cls(kind=data["kind"], sha256=data.get("sha256"),
                   parents=[Parent.from_dict(p) for p in data.get("parents", [])],
                   tools=dict(data.get("tools") or {}), settings=dict(data.get("settings") or {}),
                   figures=dict(data.get("figures") or {}), created=float(data.get("created") or 0),
                   version=int(data.get("version", LINEAGE_VERSION)))

    def statement(self, subject: str) -> dict[str, Any]:
        """This record as an in-toto Statement v1 about the file named `subject`."""
        digest = {"sha256": self.sha256} if self.sha256 else {}
        return {"_type": STATEMENT_TYPE, "subject": [{"name": subject, "digest": digest}],
                "predicateType": PREDICATE_TYPE, "predicate": self.to_dict()}


def lineage_of(artifact: Artifact) -> Lineage | None:
    """The lineage an artifact records (a conversion stored before lineage existed gets one from its report)."""
    recorded = artifact.meta.get("lineage")
    if recorded:
        return Lineage.from_dict(recorded)
    report = artifact.meta.get("report")
    if artifact.role == "onnx" and isinstance(report, dict):
        return conversion_lineage(artifact.sha256, report, artifact.meta.get("source_sha256") or {},
                                  artifact.meta.get("options") or {}, created=0.0)
    return None


def conversion_lineage(sha256: str | None, report: Mapping[str, Any], sources: Mapping[str, str],
                       options: Mapping[str, Any], *, model: str | None = None,
                       filenames: Mapping[str, str] | None = None, created: float | None = None) -> Lineage:
    """A conversion: parents are the source files by role; figures the verified difference."""
    outputs = report.get("outputs") or []
    figures = {
        "verified": report.get("verified"),
        "reference": report.get("reference"),
        "tolerance": report.get("tolerance"),
        "max_abs": max((o.get("max_abs") for o in outputs if o.get("max_abs") is not None), default=None),
        "max_rel": max((o.get("max_rel") for o in outputs if o.get("max_rel") is not None), default=None),
        "outputs": {o.get("name"): o.get("max_rel") for o in outputs},
    }
    if report.get("quantization"):
        figures["quantization"] = report["quantization"]
    parents = [Parent("file", digest, name=(filenames or {}).get(role), model=model, role=role)
               for role, digest in sorted(sources.items())]
    settings = {"converter": report.get("converter"), "source_format": report.get("source_format"),
                "opset": report.get("opset"), "input_layout": report.get("input_layout"),
                **{k: v for k, v in options.items() if k in ("nchw", "inputs", "args", "input_shape")}}
    return Lineage("conversion", sha256, parents, {**tool_versions(), **(report.get("versions") or {})},
                   {k: v for k, v in settings.items() if v is not None},
                   {k: v for k, v in figures.items() if v is not None},
                   time.time() if created is None else created)


def cut_lineage(sha256: str, source_sha256: str, model: str, layers: list[str], outputs: list[str],
                spec: Any, fixed_batch: int | None = None) -> Lineage:
    """A cut graph: its parent is the whole ONNX model it was cut from."""
    is_path = os.sep in model or model.endswith(".onnx")
    parent = Parent("onnx", source_sha256, name=os.path.basename(model) if is_path else f"{model} (ONNX)",
                    model=None if is_path else model, ref=model if is_path else None)
    settings = {"model": model, "layers": layers, "outputs": outputs, "spec": spec}
    if fixed_batch is not None:
        settings["fixed_batch"] = fixed_batch
    return Lineage("cut", sha256, [parent], tool_versions("onnx"), settings, {"layers_kept": len(layers)})


def features_lineage(extractor: Any, dataset: str, description: str, *, engine: str = "LocalEngine") -> Lineage:
    """A feature-cache entry before it is filled: parents are the cut (or extractor) and the data.

    Its own sha256 (of the feature rows as stored) and its figures (rows, shape, skipped inputs)
    are set when the entry is complete.
    """
    meta = getattr(extractor, "meta", None)  # a zoo.manifests.CutMetadata for zoo's extractors
    cut = getattr(meta, "lineage", None) or {}
    source = getattr(extractor, "source", None)
    if cut.get("sha256"):
        layers = getattr(meta, "layers", None) or []
        parent = Parent("cut", cut["sha256"], name=f"cut at {', '.join(map(str, layers))}",
                        model=source if source and os.sep not in source else None)
    else:  # any object with a fingerprint can fill the cache
        parent = Parent("extractor", None, name=type(extractor).__name__,
                        ref=str(getattr(extractor, "fingerprint", ""))[:64] or None)
    settings = {"model": source, "layer": getattr(extractor, "layer", None),
                "pooling": getattr(extractor, "pooling", None),
                "preprocess": getattr(extractor, "preprocess", None), "engine": engine}
    tools = tool_versions("onnxruntime", "numpy", *(("ray",) if engine == "RayEngine" else ()))
    return Lineage("features", None, [parent, Parent("data", dataset, name=description)], tools,
                   {k: v for k, v in settings.items() if v is not None})


def training_lineage(extractor: Any, features: Mapping[str, Any] | None, labels_sha256: str | None,
                     settings: Mapping[str, Any], figures: Mapping[str, Any]) -> Lineage:
    """A trained head (with the frozen layers it sits on): parents are the features it was fit
    on, the cut whose layers it keeps, the labels, and (when fine-tuned) the whole base model."""
    meta = getattr(extractor, "meta", None)  # a zoo.manifests.CutMetadata
    cut = getattr(meta, "lineage", None) or {}
    source = getattr(extractor, "source", None)
    model = source if source and os.sep not in source else None
    parents = []
    if features and features.get("sha256"):
        parents.append(Parent("features", features["sha256"], name="cached features", ref=features.get("key")))
    if cut.get("sha256"):
        layers = getattr(meta, "layers", None) or []
        parents.append(Parent("cut", cut["sha256"], name=f"cut at {', '.join(map(str, layers))}", model=model))
    source_sha256 = getattr(meta, "source_sha256", None)
    if settings.get("unfreeze") and source_sha256:
        parents.append(Parent("onnx", source_sha256, name=f"{source} (ONNX, fine-tuned layers)", model=model))
    if labels_sha256:
        parents.append(Parent("data", labels_sha256, name="labels"))
    return Lineage("training", None, parents, tool_versions("torch", "onnx", "onnxruntime", "numpy"),
                   {k: v for k, v in settings.items() if v is not None}, dict(figures))


def pretraining_lineage(data_sha256: str | None, rows: int, settings: Mapping[str, Any],
                        figures: Mapping[str, Any]) -> Lineage:
    """A greedily pretrained stack: its one parent is the unlabelled data."""
    parents = [Parent("data", data_sha256, name=f"unlabelled data ({rows} rows)")] if data_sha256 else []
    return Lineage("pretraining", None, parents, tool_versions("torch", "onnx", "numpy"),
                   dict(settings), dict(figures))


# ---- the chain -------------------------------------------------------------------------------

@dataclass
class Step:
    """One node of a printed chain: what the artifact is, where it is, and how it was made."""

    label: str  # "bvlc_alexnet.onnx (conversion of bvlc_alexnet)"
    kind: str
    sha256: str | None
    model: str | None = None
    lineage: Lineage | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # publisher: checksum, signature, source
    parents: list[Step] = field(default_factory=list)
    missing: bool = False  # a parent the catalog and cache no longer know

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "kind": self.kind, "sha256": self.sha256}
        if self.model:
            data["model"] = self.model
        if self.lineage is not None:
            data["lineage"] = self.lineage.to_dict()
        if self.facts:
            data["facts"] = self.facts
        if self.missing:
            data["missing"] = True
        data["parents"] = [p.to_dict() for p in self.parents]
        return data


class Lookup:
    """Lookups by name and by digest over the catalog (artifacts) and the cache (cuts, feature entries)."""

    def __init__(self, catalog: Catalog, cache_dir: Any = None):
        self.catalog = catalog
        self.cache_dir = cache_dir
        self._models: dict[str, Model] = {}
        self._cache: dict[str, Any] | None = None

    def model(self, name: str | None) -> Model | None:
        """The cataloged model `name` (read once), or None."""
        from zoo.errors import UnknownModelError

        if not name:
            return None
        if name not in self._models:
            try:
                self._models[name] = self.catalog.get(name)
            except UnknownModelError:
                return None
        return self._models[name]

    def artifacts(self, sha256: str) -> list[tuple[str, Artifact]]:
        return self.catalog.find_by_sha256(sha256) if sha256 else []

    def cached(self, sha256: str | None) -> Any:
        """A cache record (cut or feature entry) whose lineage digest is `sha256`."""
        if self._cache is None:
            self._cache = dict(_cached_lineages(self.cache_dir))
        return self._cache.get(sha256) if sha256 else None


def _cached_lineages(cache_dir: Any) -> Iterable[tuple[str, tuple[str, str, Lineage]]]:
    """(digest, (kind, label, lineage)) for every cut and feature entry in the cache that records one.

    Cuts keep theirs in ``cuts/<source sha256>/<cut>.json``, feature entries in their
    ``manifest.json``; both under a "lineage" key.
    """
    from zoo.cache import cuts_folder, features_folder

    records = [*cuts_folder("x", cache_dir).parent.glob("*/*.json"),
               *features_folder(cache_dir).glob("*/manifest.json")]
    for path in records:
        try:
            data = json.loads(path.read_text())
            lineage = Lineage.from_dict(data["lineage"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a record from before lineage, or one being written
        if lineage.sha256 and all(p.sha256 != lineage.sha256 for p in lineage.parents):
            # (a cut that keeps the whole graph has its parent's bytes: that digest names the parent)
            yield lineage.sha256, (lineage.kind, _cache_label(lineage, path), lineage)


def _cache_label(lineage: Lineage, path: Any) -> str:
    what = lineage.settings.get("layers") or lineage.settings.get("layer") or path.parent.name[:12]
    what = ", ".join(map(str, what)) if isinstance(what, list) else what
    model = lineage.settings.get("model")
    if lineage.kind == "cut":
        return f"cut at {what}" + (f" of {model}" if model else "")
    if lineage.kind == "features":
        rows = lineage.figures.get("rows")
        return f"feature cache {path.parent.name[:12]}" + (f" ({rows} rows)" if rows is not None else "")
    return f"{lineage.kind} {path.name}"


def chain(name: str, *, catalog: Any = None, cache_dir: Any = None) -> Step:
    """The lineage of model `name`: its derived artifacts back to the publisher's files.

    The root is the model; below it its newest derived artifact (a trained model's file, or the
    conversion), then each parent found by digest in the catalog or the cache, down to the
    publisher's files (with their published checksums and the signature check).
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    model = cat.get(name)
    index = Lookup(cat, cache_dir)
    index._models[name] = model
    return _model_step(index, model, seen=set())


def _model_step(index: Lookup, model: Model, seen: set[str]) -> Step:
    derived = [a for a in model.artifacts if lineage_of(a) is not None]
    own = [a for a in model.artifacts if a.role not in ("onnx", "signature")]
    root = Step(model.name, "model", None, model.name, facts=_model_facts(model))
    for artifact in derived:
        root.parents.append(_artifact_step(index, model, artifact, seen))
    if not derived:
        root.parents += [_file_step(model, a) for a in own]
    return root


def _model_facts(model: Model) -> dict[str, Any]:
    facts: dict[str, Any] = {"source": model.source, "framework": model.framework}
    if model.license:
        facts["license"] = model.license
    for by, check in model.signature.items():
        facts[f"signature ({by})"] = ("verified, signed by " + str(check.get("signed_by"))
                                      if check.get("status") == "verified"
                                      else f"FAILED: {check.get('error')}")
    return facts


def _file_step(model: Model, artifact: Artifact) -> Step:
    facts: dict[str, Any] = {"role": artifact.role}
    if artifact.checksum:
        facts["published checksum"] = artifact.checksum
    elif artifact.meta.get("first_fetch_sha256"):
        facts["pinned at first fetch"] = True
    if artifact.urls:
        facts["url"] = artifact.meta.get("fetched_from") or artifact.urls[0]
    elif artifact.path:
        facts["path"] = artifact.path
    check = model.signature.get("publisher")
    if check:  # the publisher's signature covers every file of the model
        facts["signature"] = (f"verified, signed by {check.get('signed_by')}" if check.get("status") == "verified"
                              else f"FAILED: {check.get('error')}")
    kind = "publisher" if model.source != "local" else "file"
    return Step(f"{artifact.filename} ({model.name})", kind, artifact.sha256, model.name, facts=facts,
                missing=not artifact.path)


def _artifact_step(index: Lookup, model: Model, artifact: Artifact, seen: set[str]) -> Step:
    lineage = lineage_of(artifact)
    label = f"{artifact.filename} ({lineage.kind} of {model.name})" if lineage.kind == "conversion" \
        else f"{artifact.filename} ({lineage.kind}: {model.name})"
    step = Step(label, lineage.kind, artifact.sha256, model.name, lineage)
    step.parents = [_parent_step(index, parent, model, seen | {artifact.sha256 or ""})
                    for parent in lineage.parents]
    return step


def _parent_step(index: Lookup, parent: Parent, child_model: Model, seen: set[str]) -> Step:
    """Resolve a parent by digest: a cataloged file or derived artifact, a cache entry, or data."""
    if parent.sha256 and parent.sha256 in seen:
        return Step(f"{parent.name or parent.kind} (cycle)", parent.kind, parent.sha256, missing=True)
    seen = seen | {parent.sha256 or ""}
    if parent.kind == "data":
        return Step(f"{parent.name or 'input data'}", "data", parent.sha256,
                    facts={k: v for k, v in (("ref", parent.ref),) if v})
    cached = index.cached(parent.sha256)
    if cached is not None:
        kind, label, lineage = cached
        step = Step(label, kind, parent.sha256, lineage=lineage)
        step.parents = [_parent_step(index, p, child_model, seen) for p in lineage.parents]
        return step
    for model_name, artifact in index.artifacts(parent.sha256):
        model = index.model(model_name)
        if model is None:
            continue
        if lineage_of(artifact) is not None:
            return _artifact_step(index, model, artifact, seen)
        return _file_step(model, artifact)
    where = parent.model or child_model.name
    return Step(f"{parent.name or parent.role or parent.kind} of {where} (no longer in the catalog or cache)",
                parent.kind, parent.sha256, parent.model, missing=True)


def render(step: Step, *, indent: int = 0, shown: set[str] | None = None) -> str:
    """The chain as indented text, newest first, each line `<-` its parents.

    The chain is a graph (a head depends on its features and on the cut they came from): a
    step met again is named, not repeated.
    """
    shown = set() if shown is None else shown
    pad = "  " * indent
    arrow = "" if indent == 0 else "<- "
    digest = f"  sha256:{step.sha256[:16]}" if step.sha256 else ""
    head = f"{pad}{arrow}{step.label}{digest}" + ("  [missing]" if step.missing else "")
    if step.sha256 and step.parents and step.sha256 in shown:
        return head + "  (shown above)"
    if step.sha256:
        shown.add(step.sha256)
    lines = [head]
    detail = pad + ("   " if indent else "") + "  "
    if step.lineage is not None:
        lines += [f"{detail}{line}" for line in _describe(step.lineage)]
    for key, value in step.facts.items():
        lines.append(f"{detail}{key}: {value}")
    for parent in step.parents:
        lines.append(render(parent, indent=indent + 1, shown=shown))
    return "\n".join(lines)


def _describe(lineage: Lineage) -> list[str]:
    tools = ", ".join(f"{k} {v}" for k, v in lineage.tools.items() if k not in ("python",))
    settings = ", ".join(f"{k} {_short(v)}" for k, v in lineage.settings.items())
    figures = ", ".join(f"{k} {_short(v)}" for k, v in lineage.figures.items() if k != "outputs")
    lines = []
    if settings:
        lines.append(f"how: {settings}")
    if figures:
        lines.append(f"figures: {figures}")
    if tools:
        lines.append(f"tools: {tools}")
    if lineage.created:
        lines.append("made: " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(lineage.created)))
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["LINEAGE_VERSION", "Lineage", "Lookup", "PREDICATE_TYPE", "Parent", "Step", "chain",
           "conversion_lineage", "cut_lineage", "features_lineage", "lineage_of", "pretraining_lineage",
           "render", "tool_versions", "training_lineage"]
