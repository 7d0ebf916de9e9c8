"""`convert(name)`: fetch a cataloged model, pick its converter, verify, register the ONNX artifact.

`name` may also be the path of a model file that is not in the catalog yet: it is registered
first, exactly as `zoo add PATH` would (same name, same checks), so `zoo layers` and
`zoo extract` find it afterwards; a file already registered is converted under its name.

Converting again is instant when nothing changed: the stored ONNX artifact records the hashes
of its source files (with their size and mtime, so unchanged files are not re-hashed), the opset
and the options; when they all still match, the stored artifact is returned before any heavy
framework is imported.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import (ConversionError, DuplicateModelError, ModelFormatError, UnsafeModelError,
                        VerificationError)
from zoo.cache import onnx_path
from zoo.formats import model_location
from zoo.freshness import changed, file_state, remember
from zoo.hashes import file_sha256
from zoo.lineage import conversion_lineage
from zoo.records import Artifact, Model
from zoo.store import Store

if TYPE_CHECKING:
    from converters.report import Conversion
    from zoo.catalog import Catalog

# Bump when a change here or in a converter should invalidate every stored conversion.
CONVERSION_VERSION = 1
# Converter defaults when --opset is not given (ONNX models keep their own opset).
DEFAULT_OPSET = 17
# Keras Applications constructor options that a model's meta may carry.
_KERAS_OPTIONS = ("include_top", "classes", "pooling", "input_shape", "alpha", "depth_multiplier",
                  "minimalistic", "include_preprocessing", "classifier_activation")


def convert(
    name: str,
    *,
    inputs: Mapping[str, Any] | Iterable[str] | None = None,
    args: Mapping[str, Any] | Iterable[str] | None = None,
    opset: int | None = None,
    nchw: bool = False,
    force: bool = False,
    trust_model_code: bool = False,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Artifact:
    """Convert a cataloged model to a verified ONNX file and register it as its "onnx" artifact.

    The file goes to ``<cache>/onnx/<name>/<name>.onnx``. The converted model is compared with
    its source framework on the same inputs; outputs beyond tolerance raise VerificationError
    unless `force`, which keeps the model marked unverified. `nchw` asks TensorFlow conversions
    for channels-first inputs. The returned artifact's ``meta["reused"]`` says whether an
    up-to-date conversion was found, ``meta["model"]`` the model's name (``meta["added"]`` is
    True when `name` was a path registered here).

    `inputs` and `args` describe a TorchScript ``forward`` the file cannot describe itself
    (see `zoo.input_specs`): ``inputs={"x": "Nx512", "ids": "Nx128:int64"}``, ``args={"sr": 16000}``.
    Once a conversion with them succeeds they are recorded on the model: later calls need not repeat them.

    TensorFlow and TorchScript models are converted in a child process that can write only in a
    scratch folder (``converters.isolation``; ``meta["sandbox"]`` says what was enforced), after
    every op they would run is checked (``converters.model_code``): a file, process or network op
    is refused unless `trust_model_code`. That choice is never recorded, so it covers this call only.

    Args:
        name: a cataloged model, or a model file's path (added first).
        inputs, args: what a TorchScript ``forward`` takes.
        opset: upgrade the ONNX opset to this one.
        nchw: channels-first inputs for TensorFlow models.
        force: keep a conversion beyond tolerance, marked unverified.
        trust_model_code: convert even when the model's ops would be refused (this call only).
        catalog: a path, a SQLAlchemy URL or a `Catalog`.
        cache_dir: the cache folder.

    Returns:
        The "onnx" artifact, with the conversion report in ``meta["report"]`` and what confined
        the conversion in ``meta["sandbox"]``.

    Raises:
        ConversionError (UnsupportedLayerError, VerificationError, UnsafeModelError): it cannot be
            converted, differs from its source beyond tolerance, or its graph holds a file, process
            or network op.
        FetchError: its files cannot be fetched. MissingDependencyError: the framework is missing.

    >>> art = convert("bvlc_alexnet")          # doctest: +SKIP
    >>> art.meta["report"]["verified"]         # doctest: +SKIP
    True
    >>> art = convert("vad.pt", inputs={"x": "1x512"}, args={"sr": 16000})  # doctest: +SKIP
    """
    from zoo.catalog import open_catalog
    from zoo.input_specs import arg_values, input_specs

    specs, values = input_specs(inputs), arg_values(args)
    cat = open_catalog(catalog)
    name, added = _catalog_name(cat, name, specs, values)
    try:
        artifact = _convert_cataloged(cat, name, specs, values, opset, nchw, force, cache_dir, trust_model_code)
    except BaseException:
        if added:  # a file that cannot be converted is not left behind half-adopted
            cat.remove_model(name)
        raise
    artifact.meta.update(model=name, added=added)
    return artifact


def _convert_cataloged(cat: Catalog, name: str, specs: list, values: dict, opset: int | None, nchw: bool,
                       force: bool, cache_dir: str | os.PathLike | None, trust_model_code: bool = False) -> Artifact:
    model = cat.get(name)
    name = model.name  # NAME@v2 and NAME@3fa9 are one revision: one place in the cache (NAME@<id>)
    if specs or values:
        _check_specs_apply(model)
    if _needs_fetch(model):
        from zoo.download import fetch

        fetch(name, catalog=cat, cache_dir=cache_dir)
        model = cat.get(name)
    sources = _sources(model)
    specs = specs or model.meta.get("input_specs") or []
    values = values or model.meta.get("args") or {}
    options = _options(model, opset, nchw, specs, values)
    current = _up_to_date(model, sources, options, force, cache_dir)
    if current is not None:
        current.meta["reused"] = True
        return current

    stats = {role: file_state(path) for role, path in sources.items()}  # before: a file may change meanwhile
    try:
        conversion, sandbox = _run_logged(model, sources, options, trust_model_code, cache_dir)
    except UnsafeModelError as exc:  # the override, spelled for this model
        raise UnsafeModelError(str(exc).replace("zoo convert NAME", f"zoo convert {name}")) from None
    report = conversion.report
    if trust_model_code:
        report.notes.append("its ops were not checked for file, process or network access (--trust-model-code)")
    if report.verified is False:
        from converters.onnx_model import unverified_figures

        if not force:
            raise VerificationError(
                f"{name}: the ONNX model differs from {report.reference or 'its source'} beyond "
                f"tolerance ({unverified_figures(report)}); not stored. Keep it anyway, marked "
                f"unverified, with `zoo convert {name} --force`"
            )
        report.notes.append("kept with --force although outputs differ beyond tolerance (unverified)")

    from converters.onnx_model import input_records

    # What the model really takes, for `zoo info`; a sandboxed child read it (no second onnx.load here).
    inputs = conversion.inputs if conversion.inputs is not None else input_records(conversion.model)
    dest = onnx_path(name, cache_dir)
    Store(cache_dir).ensure()  # a new cache is marked new before its first file (else it reads as a pre-store one)
    conversion.save(dest)
    source_sha256 = {role: _source_sha(report, path) for role, path in sources.items()}
    sha256 = file_sha256(dest)
    remember(dest, sha256, cache_dir)  # its users check it by size and mtime from now on
    lineage = conversion_lineage(sha256, report.to_dict(), source_sha256, options, model=name,
                                 filenames={role: os.path.basename(path) for role, path in sources.items()})
    Store(cache_dir).adopt(dest, sha256)  # one copy of identical conversions (two names, two revisions)
    artifact = Artifact(
        role="onnx",
        filename=dest.name,
        path=str(dest),
        size=dest.stat().st_size,
        sha256=sha256,
        meta={
            "report": report.to_dict(),
            "layout": report.input_layout,
            "source_sha256": source_sha256,
            "source_stat": stats,
            "options": options,
            "verified": report.verified,
            "sandbox": sandbox,
            "lineage": lineage.to_dict(),
            "revision": model.revision,  # the revision of the model the conversion came from
        },
    )
    for old in model.artifacts:  # a renamed model or an older file name: one onnx artifact
        if old.role == "onnx" and old.filename != artifact.filename:
            cat.remove_artifact(name, "onnx", old.filename)
    stored = cat.put_artifact(name, artifact)
    if (specs, values) != (model.meta.get("input_specs") or [], model.meta.get("args") or {}):
        from zoo.local import record_inputs

        record_inputs(cat, cat.get(name), specs, values)
    if inputs != model.meta.get("graph_inputs"):
        cat.update_model(name, meta={**cat.get(name).meta, "graph_inputs": inputs})
    stored.meta["reused"] = False
    return stored


def _catalog_name(cat: Catalog, name: str, specs: list, values: dict) -> tuple[str, bool]:
    """(catalog name, whether it was added here) for a model name or the path of a model file."""
    if cat.exists(name) or not os.path.lexists(os.path.expanduser(name)):
        return name, False  # an unknown name: cat.get names the closest ones
    from zoo.formats import detect_files
    from zoo.local import add, default_name

    info = detect_files([name])
    for known, _ in cat.find_by_path(str(info.path)):
        return known, False
    new = default_name(info)
    if cat.exists(new):
        raise DuplicateModelError(
            f"{name} is not in the catalog and its name {new!r} is taken by another model; "
            f"register the file under another name with `zoo add {name} --name NEW`, then `zoo convert NEW`"
        )
    return add(name, inputs=specs, args=values, catalog=cat).name, True


def _check_specs_apply(model: Model) -> None:
    if model.framework != "pytorch":
        raise ConversionError(
            f"{model.name} is a {model.framework} model: --input/--arg (inputs=/args=) describe a "
            f"TorchScript forward(); its inputs are already in the file, so leave them out"
        )


# ---------------------------------------------------------------------------------------------
# which files, which options


def _needs_fetch(model: Model) -> bool:
    """True when a file the conversion needs is not on disk but can be downloaded."""
    if not model.artifacts:
        return True  # a hub search result: fetching pins it to a commit, with its files
    for artifact in model.artifacts:
        if artifact.role in ("onnx", "labels"):
            continue  # "other" files count: a SavedModel's variables/, an ONNX model's external weights
        if (not artifact.path or not os.path.exists(artifact.path)) and artifact.urls:
            return True
    return False


def _file(model: Model, role: str) -> str | None:
    """Path of the file with `role`, looking inside an unpacked archive when it holds that role.

    A SavedModel fetched file by file has saved_model.pb as its model file: it stands for its
    folder (`zoo.formats.model_location`).
    """
    artifact = model.artifact(role)
    if artifact is not None and artifact.path:
        location = model_location(artifact.path) if role == "model" else None
        return str(location) if location is not None and location != Path(artifact.path) else artifact.path
    for archive in model.artifacts:
        members = archive.meta.get("members") or {}
        if archive.role == "archive" and archive.path and role in members:
            return os.path.join(archive.path, members[role])
    return None


def _sources(model: Model) -> dict[str, str]:
    """role -> local path of every file the conversion reads."""
    roles = ("graph", "weights", "mean") if model.framework == "caffe" else ("model", "graph", "weights")
    found = {role: path for role in roles if (path := _file(model, role))}
    if model.framework == "caffe":
        missing = [r for r in ("graph", "weights") if r not in found]
    else:
        missing = [] if ("model" in found or "weights" in found or "graph" in found) else ["model"]
    if missing:
        have = ", ".join(f"{a.role}:{a.filename}" for a in model.artifacts) or "none"
        raise ModelFormatError(
            f"{model.name} has no local {' or '.join(missing)} file to convert (its files: {have}); "
            f"run `zoo fetch {model.name}` or add the file with `zoo add`"
        )
    for role, path in found.items():
        if not os.path.exists(path):
            from zoo.download import remedy

            artifact = model.artifact(role)  # None: a member of an archive, which a fetch unpacks again
            how = remedy(model.name, artifact) if artifact else f"run `zoo fetch {model.name}` again"
            raise ModelFormatError(f"{model.name}: {role} file {path} is missing; {how}")
    return found


def _options(model: Model, opset: int | None, nchw: bool, specs: list | None = None,
             values: dict | None = None) -> dict[str, Any]:
    """Everything besides the source files that changes the converted model."""
    resolved = opset if opset is not None else (None if model.framework == "onnx" else DEFAULT_OPSET)
    keep = {k: model.meta[k] for k in ("keras_application", "architecture", "inputs", "outputs",
                                        "tag", "signature", *_KERAS_OPTIONS) if k in model.meta}
    return {"version": CONVERSION_VERSION, "framework": model.framework, "format": model.format,
            # Only tf2onnx can move inputs to channels-first; the other converters ignore --nchw.
            "opset": resolved, "nchw": bool(nchw) and model.framework in ("tensorflow", "keras", "tflite"),
            "meta": keep,
            "input_shape": None if specs else model.input.shape,  # specs supersede (and set) it
            # Only when given: adding the keys to every model would invalidate every stored conversion.
            **({"inputs": specs} if specs else {}), **({"args": values} if values else {})}


def _up_to_date(model: Model, sources: dict[str, str], options: dict, force: bool,
                cache_dir: str | os.PathLike | None = None) -> Artifact | None:
    """The stored ONNX artifact when its file exists and its sources and options are unchanged.

    One kept unverified with --force is up to date too: converting it again would only fail the
    same check again (its report and `zoo convert` keep saying UNVERIFIED).
    """
    stored = model.artifact("onnx")
    if stored is None or not stored.path or not os.path.isfile(stored.path):
        return None
    meta = stored.meta
    if meta.get("options") != options or set(meta.get("source_sha256", {})) != set(sources):
        return None
    if stored.size is not None and os.path.getsize(stored.path) != stored.size:
        return None
    if _changed_sources(meta, sources, cache_dir):
        return None
    return stored


def _changed_sources(meta: dict[str, Any], sources: dict[str, str], cache_dir: str | os.PathLike | None) -> list[str]:
    """Roles whose file is no longer the one the stored conversion was made from (see zoo.freshness)."""
    recorded = meta.get("source_sha256") or {}
    return [role for role, path in sources.items()
            if changed(path, (meta.get("source_stat") or {}).get(role), recorded.get(role), cache_dir)]


def stale_sources(model: Model, artifact: Artifact, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The source files (``"model file /path"``) that changed since `artifact` was converted from them.

    Empty when nothing changed, or when the sources are gone (the converted file then stands on
    its own). `zoo.extract` calls this before every use of a converted model.
    """
    try:
        sources = _sources(model)
    except ModelFormatError:
        return []
    recorded = artifact.meta.get("source_sha256") or {}
    sources = {role: path for role, path in sources.items() if role in recorded}
    return [f"{role} file {sources[role]}" for role in _changed_sources(artifact.meta, sources, cache_dir)]


def _source_sha(report, path: str) -> str:
    return report.source_files.get(os.fspath(path)) or file_sha256(path)


# ---------------------------------------------------------------------------------------------
# dispatch


def _run_logged(model: Model, sources: dict[str, str], options: dict, trust_model_code: bool = False,
                cache_dir: str | os.PathLike | None = None) -> tuple[Conversion, dict[str, Any]]:
    """`_run_converter` with third-party output in the log file and no traceback ever reaching the user.

    A ZooError passes unchanged; any other exception becomes one ConversionError naming the
    model, the step and the cause, its traceback written to the log file the message names.
    """
    from zoo.errors import ZooError
    from zoo.logs import captured, failure

    try:
        with captured(f"convert {model.name}"):
            return _run_converter(model, sources, options, trust_model_code, cache_dir)
    except ZooError:
        raise
    except Exception as exc:  # noqa: BLE001  every third-party failure becomes one line
        line, log = failure(f"convert {model.name}", exc, f"converting with {_converter_name(model, sources)}")
        raise ConversionError(f"{model.name}: {line}" + (f"; the traceback is in {log}" if log else "")) from None


def _converter_name(model: Model, sources: dict[str, str]) -> str:
    try:
        return _CONVERTERS[_format(model, _main_file(sources))][0]
    except Exception:  # noqa: BLE001  only for the message
        return "its converter"


def _run_converter(model: Model, sources: dict[str, str], options: dict, trust_model_code: bool = False,
                   cache_dir: str | os.PathLike | None = None) -> tuple[Conversion, dict[str, Any]]:
    """Convert with the converter `_CONVERTERS` names for the model's format; (conversion, sandbox facts).

    Converters that run model code (TensorFlow, TorchScript) run in a sandboxed child process.
    """
    import importlib

    from converters.isolation import FRAMEWORK

    path = _main_file(sources)
    fmt = _format(model, path)
    module, arguments = _CONVERTERS[fmt]
    kwargs = arguments(model, sources, options)
    if module not in FRAMEWORK:
        return importlib.import_module(module).convert(path, **kwargs), {
            "active": False, "process": "this",
            "reason": "not needed: the source is a graph of computations that runs no code of its own"}
    kwargs["trust_model_code"] = trust_model_code
    importlib.import_module(module).check_file(path, **kwargs)  # what needs no framework, here and first
    if not hasattr(os, "fork"):
        return importlib.import_module(module).convert(path, **kwargs), {
            "active": False, "process": "this", "reason": "this system cannot fork a child process"}
    from converters.isolation import convert_isolated
    from zoo.cache import root

    conversion = convert_isolated(module, path, kwargs, scratch_root=root(cache_dir) / "tmp")
    return conversion, conversion.sandbox


def _main_file(sources: dict[str, str]) -> str:
    """The file a converter's `convert(path)` takes: the model, else a pair's weights."""
    return sources.get("model") or sources.get("weights") or sources["graph"]


def _format(model: Model, path: str) -> str:
    """The model's format; without a known one, its framework's (TensorFlow's: what the file is)."""
    if model.format in _CONVERTERS:
        return model.format
    if model.framework in ("tensorflow", "keras", "tflite"):
        from converters.tensorflow import detect_format

        return detect_format(path)
    if model.framework in _FRAMEWORK_FORMAT:
        return _FRAMEWORK_FORMAT[model.framework]
    raise ConversionError(
        f"{model.name}: no converter for framework {model.framework!r}; zoo converts caffe, tensorflow, "
        f"keras, tflite, pytorch and onnx models"
    )


def _caffe_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    return {"prototxt": sources["graph"], "opset": options["opset"], "mean_file": sources.get("mean")}


def _onnx_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    return {"opset": options["opset"]}


def _torchscript_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    shape = model.input.shape if model.input.shape and len(model.input.shape) in (2, 4) else None
    return {"input_shape": shape, "inputs": options.get("inputs"), "args": options.get("args"),
            "opset": options["opset"]}


def _keras_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    from converters.tensorflow import is_weights_only

    meta = model.meta
    architecture = meta.get("keras_application") or meta.get("architecture")
    kwargs = {k: meta[k] for k in _KERAS_OPTIONS if k in meta}
    if not kwargs.get("include_top", True):
        kwargs.pop("classes", None)
    shape = model.input.shape
    if (architecture and "input_shape" not in kwargs and shape and len(shape) == 4
            and not kwargs.get("include_top", True) and all(shape[1:])):
        kwargs["input_shape"] = list(shape[1:])  # headless models take any size unless told
    if architecture and not is_weights_only(_main_file(sources)):
        architecture = None  # a full .keras/.h5 model carries its own architecture
    return {"format": "keras", "architecture": architecture, "options": kwargs, **_tf_common(options)}


def _frozen_graph_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    return {"format": "frozen_graph", "inputs": model.meta.get("inputs"), "outputs": model.meta.get("outputs"),
            **_tf_common(options)}


def _saved_model_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    from converters.tensorflow import DEFAULT_SIGNATURE, DEFAULT_TAG

    return {"format": "saved_model", "tag": model.meta.get("tag", DEFAULT_TAG),
            "signature": model.meta.get("signature", DEFAULT_SIGNATURE), **_tf_common(options)}


def _tflite_arguments(model: Model, sources: dict[str, str], options: dict) -> dict[str, Any]:
    return {"format": "tflite", **_tf_common(options)}


def _tf_common(options: dict) -> dict[str, Any]:
    return {"opset": options["opset"], "nchw": options["nchw"]}


# Model.format -> (converter module, its `convert` options for a model). Every converter module
# exposes `convert(path, **options) -> Conversion`; `path` is the model file (a Caffe pair's weights).
_CONVERTERS: dict[str, tuple[str, Callable[[Model, dict[str, str], dict], dict[str, Any]]]] = {
    "caffe": ("converters.caffe", _caffe_arguments),
    "onnx": ("converters.onnx_model", _onnx_arguments),
    "torchscript": ("converters.pytorch", _torchscript_arguments),
    "saved_model": ("converters.tensorflow", _saved_model_arguments),
    "frozen_graph": ("converters.tensorflow", _frozen_graph_arguments),
    "graphdef": ("converters.tensorflow", _frozen_graph_arguments),
    "keras": ("converters.tensorflow", _keras_arguments),
    "h5": ("converters.tensorflow", _keras_arguments),
    "h5_weights": ("converters.tensorflow", _keras_arguments),
    "tflite": ("converters.tensorflow", _tflite_arguments),
}
# The format of a model that does not say (TensorFlow's is read from the file instead).
_FRAMEWORK_FORMAT = {"caffe": "caffe", "onnx": "onnx", "pytorch": "torchscript"}


__all__ = ["convert", "onnx_path", "stale_sources"]
