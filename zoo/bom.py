"""An ML-BOM for a model: CycloneDX 1.6, built from the catalog and the lineage chain.

Each model and each artifact derived from it (a conversion, a cut, a feature-cache entry, a
trained head) is a component: machine-learning models with their hashes, licence and model
card (task, datasets, metrics such as the transfer accuracy, input and output formats),
feature caches as data, published files nested in their model. The steps that made them are
the BOM's formulation (one workflow, one task per step, with its tools, settings and figures),
and each component depends on its parents.

`cyclonedx-python-lib` builds the BOM and serializes it; it does not model `modelCard` and
`formulation` yet (both are TODOs in its 11.x), so those two are added to its JSON output, and
the result is checked against the CycloneDX 1.6 JSON schema with the library's validator
before it is returned: zoo never writes a BOM that does not validate.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.lineage import Step
    from zoo.records import Artifact, Model

EXTRA = "provenance"
SPEC_VERSION = "1.6"
# Lineage kind -> (CycloneDX component type, what the step is called in the formulation).
_COMPONENT_TYPES = {"conversion": "machine-learning-model", "cut": "machine-learning-model",
                    "training": "machine-learning-model", "pretraining": "machine-learning-model",
                    "features": "data"}
_APPROACH = {"training": "supervised", "pretraining": "unsupervised"}
_HASH_ALGOS = {"sha256": "SHA_256", "sha1": "SHA_1", "md5": "MD5"}


def _ref(kind: str, key: str) -> str:
    return f"{kind}:{re.sub(r'[^A-Za-z0-9._:/@+-]', '_', key)}"


class _Builder:
    """Walks a lineage chain once, making one component per node and one task per derivation."""

    def __init__(self, catalog: Any):
        from zoo.errors import require
        from zoo.lineage import Lookup

        require("cyclonedx", EXTRA)
        self.model = Lookup(catalog).model  # a model by name, or None
        self.components: dict[str, Any] = {}  # bom-ref -> cyclonedx Component
        self.cards: dict[str, dict[str, Any]] = {}  # bom-ref -> modelCard JSON
        self.depends: dict[str, set[str]] = {}
        self.tasks: list[dict[str, Any]] = []

    # ---- components ----------------------------------------------------------------------
    def add(self, step: Step) -> str:
        """The bom-ref of the component for `step` (made on first sight), its parents added too."""
        if step.kind == "model":
            ref = self._model_component(step)
        elif step.kind in ("publisher", "file"):
            ref = self._file_component(step)
        elif step.kind == "data":
            ref = self._data_component(step)
        else:
            ref = self._derived_component(step)
        for parent in step.parents:
            self.depends.setdefault(ref, set()).add(self.add(parent))
        if step.lineage is not None and ref not in {t["outputs"][0]["resource"]["ref"] for t in self.tasks}:
            self.tasks.append(self._task(step, ref))
        if step.lineage is not None and step.lineage.kind in _APPROACH:
            # A trained model's datasets are the data components it was fit on (features, labels).
            data = [{"ref": r} for r in sorted(self.depends.get(ref, ())) if r.split(":")[0] in ("features", "data")]
            for owner in (ref, _ref("model", step.model) if step.model else None):
                card = self.cards.get(owner)
                if card is not None and data:
                    card.setdefault("modelParameters", {})["datasets"] = data
        return ref

    def _model_component(self, step: Step) -> str:
        from cyclonedx.model.component import Component, ComponentType

        model = self.model(step.model)
        ref = _ref("model", step.model or step.label)
        if ref in self.components:
            return ref
        own = [a for a in model.artifacts if a.role not in ("onnx", "signature")] if model else []
        single = own[0] if len(own) == 1 and model and model.source == "local" else None
        base = self.model(model.meta.get("base_model")) if model and not model.license else None
        component = Component(
            name=step.model or step.label, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=ref,
            description=model.description if model else None,
            licenses=_licenses(model.license if model and model.license else base.license if base else None),
            hashes=_hashes(single) if single is not None else None,
            external_references=_model_links(model) if model else None,
            properties=_properties(_model_properties(model)) if model else None,
        )
        self.components[ref] = component
        if model is not None:
            self.cards[ref] = _model_card(model, self.model)
        return ref

    def _file_component(self, step: Step) -> str:
        """A model's file, nested in its model's component (made first if needed)."""
        from cyclonedx.model.component import Component, ComponentType

        model = self.model(step.model)
        owner = _ref("model", step.model) if step.model else None
        if owner and owner not in self.components:
            from zoo.lineage import Step as _Step

            self._model_component(_Step(step.model, "model", None, step.model))
        artifact = _artifact_by_digest(model, step.sha256) if model else None
        filename = artifact.filename if artifact else step.label
        ref = _ref("file", f"{step.model}/{filename}")
        if ref in self.components or (owner and any(str(c.bom_ref) == ref
                                                    for c in self.components[owner].components)):
            return ref
        # Local paths stay out: a BOM is meant to be shared.
        facts = {k: v for k, v in step.facts.items() if k not in ("url", "path")}
        component = Component(name=filename, type=ComponentType.FILE, bom_ref=ref,
                              hashes=_hashes(artifact) if artifact else _sha256_only(step.sha256),
                              external_references=_file_links(artifact) if artifact else None,
                              properties=_properties(facts))
        if owner:
            self.components[owner].components.add(component)
        else:
            self.components[ref] = component
        return ref

    def _data_component(self, step: Step) -> str:
        from cyclonedx.model.component import Component, ComponentType

        ref = _ref("data", step.sha256 or step.label)
        if ref not in self.components:
            self.components[ref] = Component(name=step.label, type=ComponentType.DATA, bom_ref=ref,
                                             hashes=_sha256_only(step.sha256),
                                             properties=_properties(step.facts))
        return ref

    def _derived_component(self, step: Step) -> str:
        from cyclonedx.model.component import Component, ComponentType

        lineage = step.lineage
        ref = _ref(step.kind, step.sha256 or step.label)
        if ref in self.components:
            return ref
        kind = _COMPONENT_TYPES.get(step.kind, "machine-learning-model")
        upstream = self._upstream(step)
        component = Component(
            name=step.label, bom_ref=ref, hashes=_sha256_only(step.sha256),
            type=ComponentType.DATA if kind == "data" else ComponentType.MACHINE_LEARNING_MODEL,
            # A conversion, a cut or a head on frozen layers is a derivative of the model's weights.
            licenses=_licenses(upstream.license) if upstream is not None and kind != "data" else None,
            properties=_properties({**{f"zoo:setting:{k}": v for k, v in (lineage.settings if lineage else {}).items()},
                                    **{f"zoo:figure:{k}": v for k, v in (lineage.figures if lineage else {}).items()}}))
        self.components[ref] = component
        if kind != "data":
            self.cards[ref] = _derived_card(step, self.model(step.model))
        return ref

    def _upstream(self, step: Step) -> Model | None:
        """The cataloged model whose weights a derived step carries (the base of a trained head)."""
        settings = step.lineage.settings if step.lineage is not None else {}
        return self.model(settings.get("base_model") or settings.get("model") or step.model)

    # ---- formulation -----------------------------------------------------------------------
    def _task(self, step: Step, output: str) -> dict[str, Any]:
        lineage = step.lineage
        uid = f"{lineage.kind}-{(step.sha256 or output)[:16]}"
        task = {
            "bom-ref": _ref("task", uid), "uid": uid,
            "name": f"{lineage.kind}: {step.label}",
            "taskTypes": ["build"] if lineage.kind in ("conversion", "training", "pretraining") else ["other"],
            "inputs": [{"resource": {"ref": self.add(parent)}} for parent in step.parents] or None,
            "outputs": [{"type": "artifact", "resource": {"ref": output}}],
            "properties": [{"name": f"zoo:tool:{k}", "value": str(v)} for k, v in lineage.tools.items()]
                          + [{"name": f"zoo:setting:{k}", "value": _text(v)} for k, v in lineage.settings.items()]
                          + [{"name": f"zoo:figure:{k}", "value": _text(v)} for k, v in lineage.figures.items()],
        }
        if lineage.created:
            import datetime

            task["timeEnd"] = datetime.datetime.fromtimestamp(
                lineage.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {k: v for k, v in task.items() if v}


def _artifact_by_digest(model: Model, sha256: str | None) -> Artifact | None:
    return next((a for a in model.artifacts if sha256 and a.sha256 == sha256), None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _properties(values: dict[str, Any]):
    from cyclonedx.model import Property

    return [Property(name=k if ":" in k else f"zoo:{k}", value=_text(v))
            for k, v in values.items() if v is not None and v != {} and v != []] or None


def _sha256_only(digest: str | None):
    from cyclonedx.model import HashAlgorithm, HashType

    return [HashType(alg=HashAlgorithm.SHA_256, content=digest)] if digest else None


def _hashes(artifact: Artifact):
    """The file's sha256 and the publisher's own checksum when it is another algorithm."""
    from cyclonedx.model import HashAlgorithm, HashType

    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=artifact.sha256)] if artifact.sha256 else []
    if artifact.checksum:
        algo, _, digest = artifact.checksum.partition(":")
        if algo in _HASH_ALGOS and algo != "sha256":
            hashes.append(HashType(alg=getattr(HashAlgorithm, _HASH_ALGOS[algo]), content=digest))
    return hashes or None


def _licenses(text: str | None):
    if not text:
        return None
    import warnings

    with warnings.catch_warnings():  # the factory's re-export location is deprecated, not the factory
        warnings.simplefilter("ignore", DeprecationWarning)
        from cyclonedx.factory.license import LicenseFactory

    return [LicenseFactory().make_from_string(text)]


def _links(pairs: list[tuple[str, str | None]]):
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri

    refs = []
    for kind, url in pairs:
        if url and re.match(r"^[a-z][a-z0-9+.-]*://", url):
            from zoo._redact import mask_url

            refs.append(ExternalReference(type=getattr(ExternalReferenceType, kind), url=XsUri(mask_url(url))))
    return refs or None


def _model_links(model: Model):
    signature = next((a for a in model.artifacts if a.role == "signature" and a.urls), None)
    return _links([("WEBSITE", model.homepage), ("DOCUMENTATION", model.paper),
                   ("DIGITAL_SIGNATURE", signature.urls[0] if signature else None)])


def _file_links(artifact: Artifact):
    return _links([("DISTRIBUTION", url) for url in artifact.urls[:3]])


def _model_properties(model: Model) -> dict[str, Any]:
    values: dict[str, Any] = {"zoo:source": model.source, "zoo:framework": model.framework,
                              "zoo:format": model.format, "zoo:parameters": model.parameters}
    for by, check in model.signature.items():
        values[f"zoo:signature:{by}"] = (f"verified, signed by {check.get('signed_by')}"
                                         if check.get("status") == "verified"
                                         else f"failed: {check.get('error')}")
    return values


def _io_format(model: Model) -> list[dict[str, str]] | None:
    spec = model.input
    if not spec.shape and not spec.dtype:
        return None
    shape = "x".join("N" if d is None else str(d) for d in spec.shape or [])
    layout = f" {spec.layout}" if spec.layout else ""
    return [{"format": f"tensor {spec.name or 'input'}: {spec.dtype}[{shape}]{layout}"}]


# Lineage figure -> the metric type a model card reader understands.
_METRIC_NAMES = {"max_abs": "max absolute output difference", "max_rel": "max relative output difference",
                 "val_accuracy": "transfer accuracy (validation split)", "val_loss": "loss (validation split)",
                 "train_accuracy": "accuracy (training split)", "final_loss": "reconstruction loss"}


def _metrics(values: dict[str, Any], slice_: str | None = None) -> list[dict[str, str]]:
    metrics = []
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metric = {"type": _METRIC_NAMES.get(name, name), "value": f"{value:.6g}"}
            if slice_:
                metric["slice"] = slice_
            metrics.append(metric)
    return metrics


def _model_card(model: Model, lookup) -> dict[str, Any]:
    """The modelCard of a cataloged model: what it does, on what data, how well."""
    parameters: dict[str, Any] = {}
    if model.task:
        parameters["task"] = model.task
    if model.architecture:
        parameters["architectureFamily"] = model.architecture
        parameters["modelArchitecture"] = model.architecture
    if model.dataset:
        parameters["datasets"] = [{"type": "dataset", "name": model.dataset}]
    inputs = _io_format(model)
    if inputs:
        parameters["inputs"] = inputs
    metrics = _metrics(model.metrics, "as published")
    trained = model.meta.get("val_accuracy")
    if isinstance(trained, (int, float)):
        # The transfer accuracy: the new head on the base's frozen features, held-out split.
        parameters["approach"] = {"type": "supervised"}
        metrics.append({"type": "transfer accuracy (validation split)", "value": f"{trained:.6g}",
                        "slice": f"{model.meta.get('base_model', 'base')} cut at {model.meta.get('layer')}"})
    if model.meta.get("pretrained"):
        parameters["approach"] = {"type": "unsupervised"}
    return _card(parameters, metrics)


def _card(parameters: dict[str, Any], metrics: list[dict[str, str]]) -> dict[str, Any]:
    card: dict[str, Any] = {}
    if parameters:
        card["modelParameters"] = parameters
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    return card


def _derived_card(step: Step, model: Model | None) -> dict[str, Any]:
    """The modelCard of a derived model: inherited task, and the figures that verified it."""
    lineage = step.lineage
    parameters: dict[str, Any] = {}
    if model is not None and model.task:
        parameters["task"] = model.task
    if model is not None and model.architecture:
        parameters["modelArchitecture"] = model.architecture
    if lineage is not None and lineage.kind in _APPROACH:
        parameters["approach"] = {"type": _APPROACH[lineage.kind]}
    figures = dict(lineage.figures) if lineage is not None else {}
    reference = figures.get("reference")
    # Performance figures only; counts and settings stay properties of the component.
    metrics = _metrics({k: v for k, v in figures.items() if k in _METRIC_NAMES},
                       f"against {reference}" if reference else None)
    return _card(parameters, metrics)


def _walk(step: Step) -> Iterator[Step]:
    yield step
    for parent in step.parents:
        yield from _walk(parent)


def build(name: str, *, catalog: Any = None, cache_dir: Any = None) -> dict[str, Any]:
    """The CycloneDX 1.6 ML-BOM of model `name` (a JSON-ready dict), validated against the schema.

    >>> bom = zoo.bom.build("my-classifier")           # doctest: +SKIP
    >>> [c["type"] for c in bom["components"]]           # doctest: +SKIP
    ['machine-learning-model', 'machine-learning-model', 'data', ...]
    """
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    from zoo.config import version
    from zoo.catalog import open_catalog
    from zoo.lineage import chain

    cat = open_catalog(catalog)
    root = chain(name, catalog=cat, cache_dir=cache_dir)
    builder = _Builder(cat)
    root_ref = builder.add(root)
    tool = Component(name="zoo", version=version(), type=ComponentType.APPLICATION, bom_ref="tool:zoo")
    metadata = BomMetaData(component=builder.components[root_ref])
    metadata.tools.components.add(tool)
    bom = Bom(metadata=metadata)
    for ref, component in builder.components.items():
        if ref != root_ref:
            bom.components.add(component)
    for ref, parents in builder.depends.items():
        bom.register_dependency(_find(builder, ref), [_find(builder, p) for p in sorted(parents)])
    data = json.loads(JsonV1Dot6(bom).output_as_string())
    _add_cards(data, builder.cards)
    if builder.tasks:
        data["formulation"] = [{
            "bom-ref": _ref("formula", name),
            "workflows": [{
                "bom-ref": _ref("workflow", name), "uid": f"zoo-provenance-{name}",
                "name": f"how zoo made {name} and what it was made from",
                "taskTypes": sorted({t for task in builder.tasks for t in task["taskTypes"]}),
                "tasks": builder.tasks,
                "taskDependencies": _task_dependencies(builder),
            }],
        }]
    problem = validate(data)
    if problem:
        raise ZooError(f"the ML-BOM of {name} does not validate against CycloneDX {SPEC_VERSION} "
                       f"({problem}); this is a bug in zoo, please report it")
    return data


def _find(builder: _Builder, ref: str):
    for component in builder.components.values():
        if str(component.bom_ref) == ref:
            return component
        for inner in component.components:
            if str(inner.bom_ref) == ref:
                return inner
    raise KeyError(ref)


def _add_cards(data: dict[str, Any], cards: dict[str, dict[str, Any]]) -> None:
    """Put each modelCard in its component: the library has no model for them yet."""
    def visit(component: dict[str, Any]) -> None:
        card = cards.get(component.get("bom-ref"))
        if card and component.get("type") == "machine-learning-model":
            component["modelCard"] = card
        for inner in component.get("components", []):
            visit(inner)

    visit(data["metadata"]["component"])
    for component in data.get("components", []):
        visit(component)


def _task_dependencies(builder: _Builder) -> list[dict[str, Any]]:
    """A task depends on the tasks that made its inputs."""
    made_by = {task["outputs"][0]["resource"]["ref"]: task["bom-ref"] for task in builder.tasks}
    dependencies = []
    for task in builder.tasks:
        inputs = [made_by[i["resource"]["ref"]] for i in task.get("inputs", []) if i["resource"]["ref"] in made_by]
        if inputs:
            dependencies.append({"ref": task["bom-ref"], "dependsOn": sorted(set(inputs))})
    return dependencies


def validate(data: dict[str, Any] | str) -> str | None:
    """None when `data` is a valid CycloneDX 1.6 JSON BOM, else the first problem (the library's validator)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = data if isinstance(data, str) else json.dumps(data)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return None if error is None else " ".join(str(error).split())[:500]


def write(name: str, path: str | os.PathLike | None = None, *, catalog: Any = None,
          cache_dir: Any = None) -> tuple[dict[str, Any], Path | None]:
    """Build the ML-BOM of `name` and write it (atomically) to `path`, when given."""
    from zoo.atomic import write_atomic

    data = build(name, catalog=catalog, cache_dir=cache_dir)
    if path is None:
        return data, None
    target = Path(path).expanduser()
    write_atomic(target, json.dumps(data, indent=2) + "\n")
    return data, target


__all__ = ["SPEC_VERSION", "build", "validate", "write"]
