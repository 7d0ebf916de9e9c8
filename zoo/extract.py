"""Frozen feature extractors: list a model's layers, cut its ONNX graph at one, run it on numpy."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo.atomic import write_atomic
from zoo.cache import cuts_folder
from zoo.errors import (ConversionError, InputError, ModelFormatError, ResourceLimitError, UnknownModelError,
                        ZooError, option, spelled)
from zoo.graph import LayerInfo, value_dims
from zoo.graph import batch_axes as _batch_axes, fixed_batch as _fixed_batch  # one rule for converters too
from zoo.graph import output_batch_axis as _output_batch_axis
from zoo.hashes import file_sha256
from zoo.manifests import CUT_VERSION, CutInput, CutMetadata
from zoo.options import ExtractorOptions, accepts_options
from zoo.pooling import pool, pooled_shape
from zoo.records import InputSpec, looks_like_path

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from zoo.catalog import Catalog

__all__ = ["LayerInfo", "layers", "model_inputs", "load_extractor", "Extractor", "ExtractorTransformer"]



# --- which ONNX file ----------------------------------------------------------------------------

class _Source:
    """The ONNX file a name or path stands for, its hash and what the catalog says about its input."""

    def __init__(self, label: str, path: Path, sha256: str, spec: InputSpec, layout: str | None,
                 revision: str | None = None):
        self.label, self.path, self.sha256, self.spec, self.layout = label, path, sha256, spec, layout
        self.revision = revision  # the model revision the ONNX file came from (None for a file)


def _path_sha256(path: Path, cache_dir: Any) -> str:
    """sha256 of a file as it is now, remembered by (path, size, mtime) so a reload does not re-read it."""
    from zoo.freshness import content_sha256

    return content_sha256(path, cache_dir)


def _is_onnx(path: str | os.PathLike) -> bool:
    """True for an ONNX file (by name, else by content); other model files are converted first."""
    if os.fspath(path).endswith(".onnx"):
        return True
    from zoo.formats import detect_files

    try:
        return detect_files([path]).format == "onnx"
    except ZooError:
        if Path(path).suffix.lower() in (".prototxt", ".caffemodel", ".pt", ".pth", ".keras", ".h5", ".tflite"):
            raise  # named as a model of another format (a Caffe graph without its weights): its own error says
        return True  # not a model zoo knows: reading it as ONNX says what it is not


def _looks_like_path(value: str | os.PathLike) -> bool:
    text = os.fspath(value)
    return isinstance(value, os.PathLike) or text.endswith(".onnx") or os.sep in text


def _source(name_or_path: str | os.PathLike, catalog: Any, cache_dir: Any, create: bool = True) -> _Source:
    if _looks_like_path(name_or_path) and os.path.exists(name_or_path) and not _is_onnx(name_or_path):
        # A model file of another format (.tflite, .pt, .h5, a SavedModel folder): registered and
        # converted as `zoo convert PATH` does, then cut like any cataloged model.
        from zoo.conversion import convert

        name_or_path = convert(os.fspath(name_or_path), catalog=catalog, cache_dir=cache_dir).meta["model"]
    if _looks_like_path(name_or_path) and os.path.isfile(name_or_path):
        path = Path(name_or_path).absolute()
        return _Source(os.fspath(name_or_path), path, _path_sha256(path, cache_dir), InputSpec(), None)
    if _looks_like_path(name_or_path) and not isinstance(name_or_path, str):
        raise UnknownModelError(f"{os.fspath(name_or_path)} does not exist; pass an ONNX file or a model name")
    from zoo.catalog import open_catalog

    name = str(name_or_path)
    cat = open_catalog(catalog, create=create)  # `zoo layers` reads: it never creates a catalog
    try:
        model = cat.get(name)
    except UnknownModelError as exc:
        if looks_like_path(name) and os.path.exists(name):
            raise UnknownModelError(
                f"{name} is a file but not an ONNX model, and no model of that name is in the catalog; if "
                f"it is a model, `zoo add {name}` registers it (converted on first use)", name=name,
                closest=exc.closest,
            ) from None
        raise
    artifact = model.artifact("onnx")
    name = model.name  # NAME@v2 -> NAME@<revision id>: where that revision's files and conversion are
    if artifact and artifact.path and os.path.isfile(artifact.path):
        from zoo.conversion import stale_sources

        changed = stale_sources(model, artifact, cache_dir)
        if changed:  # overwritten in place since it was converted: never serve the old model
            artifact = _convert(name, cat, cache_dir, changed)
    else:
        own = model.artifact("model")
        if model.framework == "onnx" and own and own.path and os.path.isfile(own.path):
            artifact = own
        else:
            artifact = _convert(name, cat, cache_dir)
    path = Path(artifact.path)
    layout = artifact.meta.get("layout") or model.input.layout
    # The cuts are keyed by the file's content as it is now, not as the catalog last saw it.
    return _Source(name, path, _path_sha256(path, cache_dir), model.input, layout, model.revision)


def _convert(name: str, cat: Any, cache_dir: Any, changed: Sequence[str] = ()):
    try:
        from zoo.conversion import convert
    except ImportError as exc:
        raise ConversionError(
            f"{name} has no ONNX artifact and zoo cannot convert it here ({exc}); "
            f"add an ONNX file to the catalog, or cut an .onnx path directly"
        ) from None
    try:
        artifact = convert(name, catalog=cat, cache_dir=cache_dir)
    except ZooError as exc:  # conversion, fetch or offline errors: keep the type and fields, add the context
        if changed:
            raise exc.with_context(f"{name}'s {' and '.join(changed)} changed since it was converted, and "
                                   f"converting it again failed, so its old conversion is not used") from None
        raise exc.with_context(f"{name} has no ONNX artifact and cannot be converted") from None
    if changed:
        warnings.warn(f"{name}'s {' and '.join(changed)} changed since it was converted; converted it again",
                      stacklevel=3)
    if not artifact.path or not os.path.isfile(artifact.path):
        raise ConversionError(f"converting {name} registered no ONNX file on disk; run `zoo convert {name}`")
    return artifact


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:  # protobuf raises DecodeError, OSError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFormatError(f"{path} is not a readable ONNX model ({first}); if it is a model in another "
                               f"format, convert it first with `zoo convert {path}`") from None
    if not model.graph.node:
        raise ModelFormatError(f"{path} is not an ONNX model: it holds no graph nodes (an empty or foreign file)")
    return model


# --- layers -------------------------------------------------------------------------------------

def layers(
    name_or_onnx_path: str | os.PathLike, *, args: dict[str, Any] | None = None,
    catalog: str | os.PathLike | Catalog | None = None, cache_dir: str | os.PathLike | None = None,
) -> list[LayerInfo]:
    """A model's layers in order: original names, op types, output shapes, parameters, cut points.

    Args:
        name_or_onnx_path: a cataloged model (converted if needed), an ``.onnx`` file, or a model
            file of another format (added and converted first, as `zoo convert PATH` does).
        args: values for scalar inputs (``{"sr": 16000}``): a top-level If they decide is replaced
            by the branch it takes, whose layers are then listed (see `zoo.folding`).
        catalog: a path, a SQLAlchemy URL or a `Catalog`.
        cache_dir: the cache folder.

    Returns:
        One `LayerInfo` per layer, bottom first.

    Raises:
        UnknownModelError: neither a file nor a cataloged model.
        ModelFormatError: the ONNX file cannot be read.

    >>> [layer.name for layer in layers("light_bvlc_alexnet.onnx")][-3:]   # doctest: +SKIP
    ['n21', 'fc8', 'n23']
    """
    from zoo.graph import GraphInfo, list_layers

    source = _source(name_or_onnx_path, catalog, cache_dir, create=False)
    model = _folded(_load(source.path), args)[0]
    return list_layers(model, GraphInfo(model))


def branch_hints(
    name_or_onnx_path: str | os.PathLike, *, args: dict[str, Any] | None = None,
    catalog: str | os.PathLike | Catalog | None = None, cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The Ifs left in the top graph that scalar inputs would decide, e.g. "If 'If_0' branches on input sr"."""
    from zoo.folding import branch_hints as hints

    return hints(_folded(_load(_source(name_or_onnx_path, catalog, cache_dir, create=False).path), args)[0])


def _folded(model: onnx.ModelProto, args: dict[str, Any] | None) -> tuple[onnx.ModelProto, list[str]]:
    """The model with `args` baked in and the top-level Ifs they (or constants) decide folded."""
    from zoo.folding import fold_ifs

    return fold_ifs(model, args)


def model_inputs(
    name_or_onnx_path: str | os.PathLike, *, args: dict[str, Any] | None = None,
    catalog: str | os.PathLike | Catalog | None = None, cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """A model's inputs in graph order: name, dtype, shape and batch axis (None: fed whole).

    Inputs given a value in `args` are baked in (see `layers`) and not listed.

    >>> [i["name"] for i in model_inputs("text_encoder.onnx")]             # doctest: +SKIP
    ['input_ids', 'attention_mask']
    """
    from zoo.graph import GraphInfo, batch_dim

    source = _source(name_or_onnx_path, catalog, cache_dir, create=False)
    model = _folded(_load(source.path), args)[0]
    wanted = set(GraphInfo(model).inputs)
    found = [i for i in model.graph.input if i.name in wanted]
    shapes = {i.name: value_dims(i) for i in found}
    axes = _batch_axes(shapes, _fixed_batch(model, batch_dim(model)))
    return [
        {"name": i.name, "dtype": _np_dtype(i.type.tensor_type.elem_type), "shape": shapes[i.name],
         "batch_axis": axes[i.name]}
        for i in found
    ]


# --- the cut cache --------------------------------------------------------------------------------

def _spec_key(layer: Any, args: dict[str, Any] | None = None) -> str:
    """File name for a layer spec: readable prefix + hash (a spec resolves the same way every time)."""
    spec = layer if isinstance(layer, (str, int)) else list(layer)
    text = json.dumps({"layer": spec, "v": CUT_VERSION, **({"args": _plain(args)} if args else {})}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", json.dumps(spec)).strip("_")[:40] or "layer"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _plain(args: dict[str, Any] | None) -> dict[str, Any]:
    """`args` as JSON values (numpy scalars to numbers)."""
    import numpy as np

    return {k: np.asarray(v).tolist() for k, v in (args or {}).items()}


def _make_cut(source: _Source, layer: Any, onnx_path: Path, meta_path: Path,
              args: dict[str, Any] | None = None) -> CutMetadata:
    """Cut the source at `layer`, try a dynamic batch, write the cut and its metadata."""
    from zoo.graph import GraphInfo, batch_dim, list_layers, make_batch_dynamic, resolve
    from zoo.graph import cut as cut_graph

    model = _load(source.path)
    names = [n.name for n in model.graph.node if n.name]
    if len(names) != len(set(names)):
        twice = next(n for n in names if names.count(n) > 1)
        raise ModelFormatError(f"{source.label}: the ONNX graph names two nodes {twice!r}, which onnxruntime refuses; "
                               f"give every node its own name (re-export the model)")
    model, folded = _folded(model, args)
    info = GraphInfo(model)
    all_layers = list_layers(model, info)
    chosen = resolve(all_layers, layer, source.label, info)
    outputs = [c.output for c in chosen]
    sub = cut_graph(model, outputs, info)
    from zoo.memory import check_shapes

    # A constant of terabytes in the cut is refused here, not by onnxruntime when it runs.
    kept = [o for node in sub.graph.node for o in node.output if o in info.types]
    check_shapes(((name, *info.types[name]) for name in kept), source.label, sub)
    fixed = _fixed_batch(sub, batch_dim(sub))
    if isinstance(fixed, int):
        dynamic = make_batch_dynamic(sub)
        if dynamic is not None:
            sub, fixed = dynamic, None
    sub_info = GraphInfo(sub)
    data_inputs = [i for i in sub.graph.input if i.name in sub_info.inputs]
    # Constants were refused when resolving, so a cut depends on at least one input.
    shapes = {i.name: value_dims(i) for i in data_inputs}
    batch_axes = _batch_axes(shapes, fixed)
    output_shapes = [value_dims(o) for o in sub.graph.output]
    meta = CutMetadata(
        source_sha256=source.sha256,
        model=source.label,
        spec=layer if isinstance(layer, (str, int)) else list(layer),
        layers=[c.name for c in chosen],
        outputs=outputs,
        output_shapes=output_shapes,
        output_batch_axes=[_output_batch_axis(s, shapes, batch_axes, fixed) for s in output_shapes],
        inputs=[CutInput(i.name, shapes[i.name], _np_dtype(i.type.tensor_type.elem_type), batch_axes[i.name])
                for i in data_inputs],  # every input the cut depends on, in graph order
        source_inputs=list(info.inputs),
        constants=_plain(args),  # inputs baked in (their Ifs folded): passed again, they must agree
        folded=folded,
        fixed_batch=fixed if isinstance(fixed, int) else None,
        # Said again on every load, not only when the cut is first made.
        # A model output (one of several, like a recurrent state) has no layers above it to miss.
        not_cut_point=chosen[0].name
        if len(chosen) == 1 and not chosen[0].is_cut_point and chosen[0].output not in info.outputs else None,
    )
    content = sub.SerializeToString()
    meta = replace(meta, lineage=_cut_lineage(hashlib.sha256(content).hexdigest(), meta))
    # Metadata first, model last: the .onnx file's presence means the pair is complete.
    meta.write(meta_path)
    write_atomic(onnx_path, content)
    return meta


def _cut_lineage(sha256: str, meta: CutMetadata) -> dict[str, Any]:
    from zoo.lineage import cut_lineage

    return cut_lineage(sha256, meta.source_sha256, meta.model, meta.layers, meta.outputs, meta.spec,
                       meta.fixed_batch).to_dict()


def _with_lineage(meta: CutMetadata, onnx_path: Path, meta_path: Path) -> CutMetadata:
    """A cut made before lineage was recorded gets its record now (its file hashed once)."""
    if meta.lineage:
        return meta
    meta = replace(meta, lineage=_cut_lineage(file_sha256(onnx_path), meta))
    try:
        meta.write(meta_path)
    except OSError:
        pass  # a read-only cache: the record lives in this extractor only
    return meta


def _np_dtype(elem_type: int) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(elem_type))


# --- the extractor ----------------------------------------------------------------------------------

@accepts_options(options=ExtractorOptions)
def load_extractor(
    name_or_path: str | os.PathLike,
    layer: str | int | Sequence[str | int] | None = None,
    options: ExtractorOptions | None = None,
    *,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
    args: dict[str, Any] | None = None,
) -> Extractor:
    """A frozen feature extractor: the model cut at `layer`, run by onnxruntime.

    Args:
        name_or_path: a cataloged model, or an ``.onnx`` file.
        layer: a layer name (see `zoo layers NAME`), an ONNX tensor name, a position (-1 the
            last layer, -2 drops the top layer) or a list of those (the extractor then returns a
            dict); None takes ``options.layer`` (-2 by default).
        options: batch size, threads, device, preprocessing and pooling (`zoo.ExtractorOptions`);
            each field may be passed as a keyword instead: ``load_extractor(name, "fc7", pooling="avg")``.
        catalog: the catalog (path, URL or `Catalog`; default ``$ZOO_CATALOG``).
        cache_dir: the cache folder, where cuts are kept.
        args: values baked in for scalar inputs (``{"sr": 16000}``); the top-level Ifs they decide
            fold, so the layers of the branch taken can be cut at (`zoo layers NAME --arg sr=16000`
            lists them). They need not be passed again, and when they are they must agree.

    Returns:
        The `Extractor`: call it on a batch (or on image files) for features.

    Raises:
        UnknownModelError: the name is neither a file nor a cataloged model.
        UnknownLayerError: the layer is not in the model (the message names the closest).
        ConversionError: the model has no ONNX form and cannot be converted here.
        InputError: the device is not available in this onnxruntime.

    The cut graph is cached under ``<cache>/cuts/<sha256 of the model>/``, so loading again only
    starts a session; a model with no ONNX artifact yet is converted first (`zoo.convert`).
    A graph exported with a fixed batch (Caffe prototxts, old exports) is given a dynamic batch
    axis when shape inference shows that is safe; otherwise it is fed in full, padded batches.

    The extractor also takes image files: a path, a list of paths or a flat folder. They are
    decoded, resized and centre-cropped to the net's input, then given the model's InputSpec
    (channel order, ``x * scale``, ``- mean``, ``/ std`` per channel, layout; see ``zoo.images``)
    unless ``preprocess=False``. Arrays are taken as model-ready unless ``preprocess=True``: then
    they are raw pixels (uint8 or float, on the scale the catalog's mean/scale refer to, usually
    0-255) in RGB order, as (N, H, W, C) or in the model's own layout, and get the InputSpec too.

    ``pooling="avg"`` or ``"max"`` pools a 4-D cut output over its spatial axes (as Keras's
    ``pooling=``), giving (N, C) in either layout; 2-D outputs pass unchanged. ``device`` picks
    onnxruntime's execution providers: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a providers list.
    These are fields of `options`: ``load_extractor(name, "fc7", ExtractorOptions(pooling="avg"))``,
    or keywords: ``load_extractor(name, "fc7", pooling="avg")``.

    A cut that depends on several inputs (a text encoder's ``input_ids`` and ``attention_mask``)
    takes them by name; inputs of the model it does not depend on are not needed. See `Extractor`.

    >>> extractor = load_extractor("bvlc_alexnet", layer="fc7")           # doctest: +SKIP
    >>> extractor(images).shape                                        # doctest: +SKIP
    (32, 4096)
    """
    options = options or ExtractorOptions()
    if layer is not None:
        options = options.replace(layer=layer)
    layer = options.layer
    providers = execution_providers(options.device, options.providers)  # fails before cutting
    source = _source(name_or_path, catalog, cache_dir)
    folder = cuts_folder(source.sha256, cache_dir)
    key = _spec_key(layer, args)
    onnx_path, meta_path = folder / f"{key}.onnx", folder / f"{key}.json"
    meta = CutMetadata.read(meta_path) if onnx_path.is_file() else None
    if meta is None:
        meta = _make_cut(source, layer, onnx_path, meta_path, args)
    meta = _with_lineage(meta, onnx_path, meta_path)
    if meta.not_cut_point:
        warnings.warn(
            f"layer {meta.not_cut_point!r} of {source.label} is not a cut point: other paths (a "
            "residual or parallel branch) bypass it, so its output does not carry everything the "
            f"layers above use; cut points are marked in `zoo layers {source.label}`",
            stacklevel=2,
        )
    extractor = Extractor(onnx_path, meta, source=source.label, spec=source.spec, layout=source.layout,
                          options=options, providers=providers)
    extractor.revision = source.revision  # recorded by the feature cache entries it fills
    return extractor


# Short device names for onnxruntime's execution providers.
_DEVICES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def execution_providers(
    device: str | Sequence[Any] | None, providers: Sequence[Any] | None = None
) -> list[Any] | None:
    """onnxruntime providers for a device ("cpu", "cuda", "cuda:1" or a providers list), checked to exist here."""
    if device is None:
        return list(providers) if providers else None
    if providers:
        raise InputError("give device= or providers=, not both (device='cuda:1' stands for the CUDA provider list)")
    if isinstance(device, str):
        kind, _, index = device.strip().lower().partition(":")
        if kind not in _DEVICES or (index and not index.isdigit()):
            raise InputError(
                f"device {device!r} is not one of {', '.join(sorted(_DEVICES))} (with :N for a device "
                "number, e.g. cuda:1), nor a list of onnxruntime providers"
            )
        name = _DEVICES[kind]
        chosen: list[Any] = [(name, {"device_id": int(index)}) if index else name]
        if name != "CPUExecutionProvider":
            chosen.append("CPUExecutionProvider")  # for the few ops the device has no kernel for
    else:
        chosen = list(device)
    import onnxruntime as ort

    available = ort.get_available_providers()
    for provider in chosen:
        name = provider[0] if isinstance(provider, (tuple, list)) else provider
        if name not in available:
            raise InputError(
                f"device {device!r} needs onnxruntime's {name}, which this onnxruntime does not have "
                f"(available: {', '.join(available)}); install the onnxruntime build for it "
                "(e.g. onnxruntime-gpu for CUDA) or use device='cpu'"
            )
    return chosen


class Extractor:
    """A cut ONNX graph with an onnxruntime session: call it on a numpy batch to get features.

    Attributes: ``layer`` (a name, or a list for several), ``input_spec``, ``output_shape`` (batch
    axis None; a dict for several layers), ``model_path`` (the cut .onnx) and ``fingerprint``
    (changes whenever the outputs would: model file, cut, preprocessing).

    A cut that depends on several inputs (token ids and an attention mask; audio, a recurrent
    state and a sample rate) lists them in ``input_names``, each with an ``input_specs`` entry
    and a ``batch_axes`` entry (None for an input fed whole with every batch, like a scalar
    ``sr``). ``input_spec`` is the one the catalog's preprocessing applies to.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        meta: CutMetadata,
        *,
        source: str = "",
        spec: InputSpec | None = None,
        layout: str | None = None,
        options: ExtractorOptions | None = None,
        providers: Sequence[Any] | None = None,
    ) -> None:
        options = options or ExtractorOptions()
        self.model_path = Path(model_path)
        self.meta = meta
        self.source = source
        self.options = options
        self.batch_size = options.batch_size
        self.threads = options.threads
        # `providers`: the options' device already resolved (load_extractor checks it exists here).
        if providers is None:
            providers = execution_providers(options.device, options.providers)
        self.providers = list(providers) if providers else None
        # None: image files get the InputSpec, arrays are model-ready; True: arrays are raw pixels too.
        self.preprocess = None if options.preprocess is None else bool(options.preprocess)
        self.pooling = options.pooling
        inputs = meta.inputs
        self.input_names: list[str] = [i.name for i in inputs]
        self.batch_axes: dict[str, int | None] = {i.name: i.batch_axis for i in inputs}
        # The catalog's InputSpec (mean, std, layout) describes one input: the one it names, else the first.
        primary = spec.name if spec is not None and spec.name in self.batch_axes else self.input_names[0]
        self.input_specs: dict[str, InputSpec] = {}
        for inp in inputs:
            shape = None if inp.shape is None else list(inp.shape)
            if shape and inp.batch_axis is not None:
                shape[inp.batch_axis] = None
            if inp.name != primary:
                self.input_specs[inp.name] = InputSpec(name=inp.name, shape=shape, dtype=inp.dtype)
                continue
            if layout is None and shape and len(shape) == 4:
                layout = "NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None
            self.input_specs[inp.name] = replace(
                spec or InputSpec(), name=inp.name, shape=shape, dtype=inp.dtype, layout=layout
            )
        self.input_spec = self.input_specs[primary]
        names = meta.layers
        axes = meta.output_batch_axes or [0] * len(names)
        self.output_batch_axes: dict[str, int] = dict(zip(names, axes))
        shapes = [None if s is None else tuple(None if k == a else d for k, d in enumerate(s))
                  for s, a in zip(meta.output_shapes, axes)]
        self.layer: str | list[str] = names[0] if len(names) == 1 else list(names)
        if self.pooling:
            shapes = [pooled_shape(s, layout, n) for s, n in zip(shapes, names)]
        self.output_shape = shapes[0] if len(names) == 1 else dict(zip(names, shapes))
        payload = {
            "source": meta.source_sha256,
            "outputs": meta.outputs,
            "preprocess": self.input_spec.to_dict() if self.preprocess else None,
        }
        if self.pooling:  # only when set, so extractors without pooling keep their fingerprints
            payload["pooling"] = [self.pooling, self.input_spec.layout]
        if meta.constants:  # baked-in inputs (args=) change the features like an input would
            payload["constants"] = meta.constants
        self.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self.revision: str | None = None  # the catalog model's revision, when loaded by name
        self._session = None

    def __repr__(self) -> str:
        return f"Extractor({self.source!r}, layer={self.layer!r}, output_shape={self.output_shape})"

    # The session holds native state; a copy in another process builds its own on first call.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict) -> Extractor:
        new = copy.copy(self)
        new.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        return new

    @property
    def session(self):
        """The onnxruntime session, started on first use."""
        if self._session is None:
            self.open_session()
        return self._session

    def open_session(self, model: bytes | None = None) -> None:
        """Start the onnxruntime session now: from the cut file, or from `model`, the file's bytes
        (a copy of this extractor on a machine that does not have the file, like a Ray node).

        Raises:
            ModelFormatError: the cut file is gone and no bytes were given.
        """
        import onnxruntime as ort

        if model is None and not self.model_path.is_file():
            raise ModelFormatError(
                f"the cut model {self.model_path} is gone (cache cleared?); load the extractor again"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        from zoo.logs import onnxruntime_severity

        options.log_severity_level = onnxruntime_severity()
        try:
            self._session = ort.InferenceSession(
                model if model is not None else os.fspath(self.model_path), options,
                providers=self.providers or ["CPUExecutionProvider"],
            )
        except Exception as exc:  # noqa: BLE001  onnxruntime's InvalidGraph/Fail/NotImplemented
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFormatError(f"onnxruntime cannot load the cut of {self.source} at {self.layer!r} "
                                   f"({first[:300]})") from None

    @property
    def cut_model(self) -> onnx.ModelProto:
        """The cut graph as an ONNX ModelProto."""
        return _load(self.model_path)

    def to_torch(self, *, preprocess: bool = False, compile: bool | dict = False):
        """The cut graph as a frozen ``torch.nn.Module`` that gives what this extractor gives.

        The extractor's ``pooling`` is applied to the outputs; ``preprocess=True`` puts its input
        preprocessing first, so the module takes raw pixels (N, H, W, C) RGB at the net's size.
        ``.unfreeze(k)`` trains the top k blocks, ``.unfreeze("res4f")`` everything above a cut
        point. A multi-input cut's module takes its inputs in ``input_names`` order or by name.
        """
        from zoo.errors import require

        require("torch", "torch")
        from converters.onnx_to_torch import to_torch

        pool = None
        if self.pooling:
            from zoo.pooling import pool_module

            pool = pool_module(self.pooling, self.input_spec.layout)
        first = None
        if preprocess:
            from zoo.images import preprocess_module

            first = preprocess_module(self.input_spec)
        return to_torch(self.cut_model, pooling=pool, preprocess=first, preprocess_input=self.input_spec.name,
                        compile=compile)

    # --- running ---------------------------------------------------------------------------------

    def load_images(self, images: str | os.PathLike | Sequence[str | os.PathLike]) -> np.ndarray:
        """The model's input for image files (a path, a flat folder or a list): decoded, resized,
        centre-cropped to the net's size, then the InputSpec (unless ``preprocess=False``).

        An image that cannot be read follows the one rule (`zoo.images`): left out with a
        `zoo.errors.SkippedInputsWarning` naming it, or with ``on_error="raise"`` an InputError.
        """
        import warnings

        from zoo import images as _images
        from zoo.errors import SkippedInputsWarning

        files = _images.image_files(images)
        geometry = _images.geometry(self.input_spec)
        decoded, skipped = _images.read_images(files, geometry, self.options.on_error)
        if skipped:
            if not decoded:
                raise InputError(f"none of the {len(files)} images could be read: {_images.describe_skipped(skipped)}")
            warnings.warn(SkippedInputsWarning(
                f"left out {len(skipped)} of {len(files)} images that cannot be read (the rows are the other "
                f"images, in order): {_images.describe_skipped(skipped)}", skipped), stacklevel=3)
        pixels = _images.to_pixel_range(_images.stack_images(decoded), self.input_spec)
        if self.preprocess is False:
            return _images.to_layout(pixels, self.input_spec.layout)
        from zoo.preprocessing import warn_if_missing

        warn_if_missing(self.input_spec, self.source)
        return _images.preprocess(pixels, self.input_spec)

    def _check(self, x: Any, name: str | None = None, raw: bool | None = None) -> np.ndarray:
        import numpy as np

        raw = self.preprocess is True if raw is None else raw
        x = np.asarray(x)
        spec = self.input_specs[name] if name else self.input_spec
        axis = self.batch_axes.get(spec.name, 0)
        what = "input" if len(self.input_names) == 1 else f"input {spec.name!r}"
        expected = [d if isinstance(d, int) else None for d in (spec.shape or [])]
        shown = _shown(spec.shape, axis)
        if x.dtype.kind not in "fiub":
            raise InputError(
                f"{what} has dtype {x.dtype}; {self.source} expects numbers ({spec.dtype}) of shape {shown}"
            )
        if raw and spec is self.input_spec:
            x = self._preprocess(x)
        want = np.dtype(spec.dtype)
        if x.dtype != want:
            # Any float precision is accepted and cast; integers only with preprocess (pixels).
            if want.kind == "f" and x.dtype.kind != "f":
                raise InputError(
                    f"{what} has dtype {x.dtype}; {self.source} expects {spec.dtype} values of shape "
                    f"{shown}; " + spelled(f"convert with x.astype('{spec.dtype}')", f"save the array as {spec.dtype}")
                    + f" (or {option('preprocess', True)} for 0-255 pixels)"
                )
            # Integer inputs (token ids, masks, a sample rate) take any integers, never rounded floats.
            if want.kind in "iub" and x.dtype.kind == "f":
                raise InputError(
                    f"{what} has dtype {x.dtype}; {self.source} expects integers ({spec.dtype}) of shape "
                    f"{shown}; " + spelled(f"convert with x.astype('{spec.dtype}')", f"save the array as {spec.dtype}")
                )
            x = x.astype(want)
        if spec.shape is not None and not expected and x.ndim and x.size == 1:
            x = x.reshape(())  # a scalar input (a sample rate) given as [16000]
        if spec.shape is not None:
            if x.ndim != len(expected) or any(
                d is not None and d != n for k, (d, n) in enumerate(zip(expected, x.shape)) if k != axis
            ):
                hint = " (add a batch axis: x[None])" if axis == 0 and x.ndim == len(expected) - 1 else ""
                raise InputError(
                    f"{what} has shape {tuple(x.shape)}; {self.source} expects {shown} in {spec.layout or 'its'} "
                    f"layout{hint}"
                )
        return np.ascontiguousarray(x)

    def _feed(self, x: Any, named: dict[str, Any], raw: bool | None = None) -> dict[str, np.ndarray]:
        """The checked inputs of one call: a positional array, a dict, a record array or keywords."""
        from collections.abc import Mapping

        import numpy as np

        if isinstance(x, Mapping) or (isinstance(x, np.ndarray) and x.dtype.names):
            if named:
                raise InputError(
                    "pass the inputs either as one dict (or record array) or as keyword arguments, not both"
                )
            named, x = (dict(x) if isinstance(x, Mapping) else self._from_records(x)), None
        primary = self.input_spec.name
        if x is not None:
            if primary in named:
                raise InputError(f"input {primary!r} is given twice: positionally and by name; pass it once")
            named = {primary: x, **named}
        named = self._without_constants(named)
        known = set(self.meta.source_inputs or self.input_names)
        unknown = [k for k in named if k not in known]
        if unknown:
            raise InputError(
                f"{self.source} has no input named {', '.join(map(repr, unknown))}; it takes "
                f"{self.describe_inputs()} (see `zoo layers {self.source}`)"
            )
        missing = [k for k in self.input_names if k not in named]
        if missing:
            raise InputError(
                f"missing input(s) {', '.join(missing)}: the cut at {self.layer!r} of {self.source} needs "
                f"{self.describe_inputs()}; "
                + spelled(f"pass a dict {{name: array}} or keyword arguments, e.g. "
                          f"extractor({', '.join(f'{k}=...' for k in self.input_names)})",
                          "give each as " + " ".join(f"-i {k}=FILE.npy" for k in self.input_names))
            )
        # Inputs of the whole model that this cut does not depend on are accepted and left out.
        feed = {k: self._check(named[k], k, raw) for k in self.input_names}
        self._check_shared_axes(feed)
        return feed

    def _without_constants(self, named: dict[str, Any]) -> dict[str, Any]:
        """The inputs minus those baked into the cut (``args``), which must agree with their value."""
        import numpy as np

        constants = self.meta.constants or {}
        for name in set(named) & set(constants):
            given = np.asarray(named[name])
            if given.size != 1 or given.reshape(-1)[0] != np.asarray(constants[name]).reshape(-1)[0]:
                raise InputError(
                    f"{name} is baked into this extractor of {self.source} as {constants[name]!r} (args=), but "
                    f"{given.tolist()!r} was passed; load another extractor with args={{{name!r}: ...}}")
        return {k: v for k, v in named.items() if k not in constants}

    def _check_shared_axes(self, feed: dict[str, np.ndarray]) -> None:
        """Axes the graph names alike (token ids' and mask's `seq`) must have one size."""
        seen: dict[str, tuple[str, int]] = {}
        for name, x in feed.items():
            shape, axis = self.input_specs[name].shape or [], self.batch_axes.get(name)
            for k, d in enumerate(shape):
                if not isinstance(d, str) or k == axis or k >= x.ndim:
                    continue
                if d in seen and seen[d][1] != x.shape[k]:
                    other, size = seen[d]
                    raise InputError(
                        f"input {name!r} has {x.shape[k]} along its {d!r} axis but {other!r} has {size}; "
                        f"{self.source} needs them equal (pad both to one length)"
                    )
                seen.setdefault(d, (name, x.shape[k]))

    def _from_records(self, records: np.ndarray) -> dict[str, Any]:
        """A record array (one field per input, one row per sample) as named batches."""
        import numpy as np

        named: dict[str, Any] = {}
        for name in records.dtype.names:
            value = records[name]
            axis = self.batch_axes.get(name, 0)
            if axis is None:  # fed whole: every row must carry the same value
                if len(value) and not (value == value[:1]).all():
                    raise InputError(
                        f"field {name!r} varies between rows, but {self.source} takes one {name} for "
                        f"the whole batch; split the rows by {name}"
                    )
                value = value[0] if len(value) else value
            elif axis:
                value = np.moveaxis(value, 0, axis)  # rows -> the batch axis the model wants
            named[name] = value
        return named

    def describe_inputs(self) -> str:
        """The inputs the cut needs, as 'input_ids int64 (N, seq), attention_mask int64 (N, seq)'."""
        return ", ".join(
            f"{name} {spec.dtype} {_shown(spec.shape, self.batch_axes.get(name))}"
            for name, spec in self.input_specs.items()
        )

    def _preprocess(self, x: np.ndarray) -> np.ndarray:
        """Raw RGB pixels -> the model's input: size, channel order, scale, mean, std, layout."""
        from zoo.images import preprocess

        return preprocess(x, self.input_spec)

    def __call__(self, x: Any = None, /, **inputs: Any) -> np.ndarray | dict[str, np.ndarray]:
        """Features of a batch (or of image files): an array, or a dict layer -> array when cut at several layers.

        A cut that depends on several inputs takes them by name, as a dict, a record array (one
        field per input) or keyword arguments: ``extractor(input_ids=ids, attention_mask=mask)``;
        a positional array is ``input_spec.name``'s. Batches are split along the batch axis every
        batched input shares; inputs without one (a scalar ``sr``) go whole with every batch.
        """
        import numpy as np

        from zoo.images import is_image_input

        if x is not None and is_image_input(x):  # files: decoded, sized and given the InputSpec here
            feed = self._feed(self.load_images(x), inputs, raw=False)
        else:
            feed = self._feed(x, inputs)
        fixed = self.meta.fixed_batch
        step = fixed or self.batch_size
        batched = {k: a for k, a in self.batch_axes.items() if a is not None and feed[k].ndim > a}
        sizes = {k: feed[k].shape[a] for k, a in batched.items()}
        if len(set(sizes.values())) > 1:
            raise InputError(
                "the inputs disagree on the batch size: "
                + ", ".join(f"{k} has {n} (axis {batched[k]})" for k, n in sizes.items())
                + "; give every input the same number of samples"
            )
        n = next(iter(sizes.values()), None)
        out_axes = [self.output_batch_axes.get(name, 0) for name in self.meta.layers]
        if n is None or n == step or (fixed is None and n <= step):
            results = self._run(feed)
        else:
            parts: list[list[np.ndarray]] = []
            for start in range(0, n, step):
                chunk = {k: _take(v, batched[k], start, start + step) if k in batched else v for k, v in feed.items()}
                rows = min(step, n - start)
                if fixed and rows < fixed:  # a fixed-batch graph takes only full batches
                    chunk = {k: _pad(v, batched[k], fixed) if k in batched else v for k, v in chunk.items()}
                    got = [_take(g, a, 0, rows) for g, a in zip(self._run(chunk), out_axes)]
                else:
                    got = self._run(chunk)
                parts.append(got)
            if not parts:
                results = [np.zeros(tuple(0 if k == a else (d if isinstance(d, int) else 0)
                                          for k, d in enumerate(s or [0])), np.float32)
                           for s, a in zip(self.meta.output_shapes, out_axes)]
            else:
                results = [np.concatenate([p[i] for p in parts], axis=out_axes[i]) for i in range(len(out_axes))]
        if self.pooling:
            names = self.layer if isinstance(self.layer, list) else [self.layer]
            results = [pool(r, self.pooling, self.input_spec.layout, n) for r, n in zip(results, names)]
        if len(results) == 1:
            return results[0]
        return dict(zip(self.layer, results))

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.session
        try:
            return session.run(self.meta.outputs, feed)
        except Exception as exc:  # noqa: BLE001  onnxruntime's InvalidArgument/Fail: the inputs do not fit the graph
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            shapes = ", ".join(f"{k} {list(getattr(v, 'shape', ()))}" for k, v in feed.items())
            if "Failed to allocate memory" in first:
                raise ResourceLimitError(f"{self.source}: onnxruntime ran out of memory running the cut on inputs "
                                         f"{shapes}; give a smaller --batch-size, or inputs the model's size "
                                         f"expects") from None
            raise InputError(f"onnxruntime cannot run the cut of {self.source} at {self.layer!r} on {shapes} "
                             f"({first[:300]}); the model takes {self.describe_inputs()}") from None


def _shown(shape: list | None, axis: int | None) -> str:
    """A shape as users read it: the batch axis as N, unknown axes as ? (symbols by name)."""
    if shape is None:
        return "(?)"
    return "(" + ", ".join("N" if k == axis else (str(d) if d else "?") for k, d in enumerate(shape)) + ")"


def _take(x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return x[(slice(None),) * axis + (slice(start, stop),)]


def _pad(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`x` padded with zeros along `axis` to `size` (zeros are valid ids and masks too)."""
    import numpy as np

    shape = list(x.shape)
    shape[axis] = size - x.shape[axis]
    return np.concatenate([x, np.zeros(shape, x.dtype)], axis=axis)


# --- scikit-learn ---------------------------------------------------------------------------------
# scikit-learn takes seconds to import, so the transformer class is made on first use
# (`zoo.extract.ExtractorTransformer`, through the module __getattr__ below).


class _ExtractorTransformerBody:
    """A scikit-learn transformer: `fit` does nothing, `transform` returns flattened features.

    X is an array of model inputs, or image files: a list, a numpy array or a pandas Series of
    paths. For a model with several inputs, X is a record array with one field per input (one
    row per sample: ``np.zeros(n, dtype=[("input_ids", "i8", (128,)), ("attention_mask", "i8",
    (128,))])``), which sklearn's splitters and cross-validation slice like any array; a dict of
    arrays works in `transform` too. pandas is not needed.

    Features come from the feature cache, kept per input (`zoo.features.RowCache`): cross-
    validation and a grid search over ``layer`` compute each (layer, input) once, however the
    folds slice the data (``cache=False`` computes every time). An image that cannot be read is
    an error here: a pipeline needs one row per sample.

    Parameters are the extractor's: the model, the layer, an `ExtractorOptions` and its fields
    as keywords (a field set here wins over the options object's), so ``set_params(layer=...)``
    and a grid over ``pooling`` work as for any estimator.

    >>> from sklearn.pipeline import make_pipeline                       # doctest: +SKIP
    >>> make_pipeline(ExtractorTransformer("bvlc_alexnet", layer="fc7"), LogisticRegression())  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike | Extractor = None,
        layer: str | int | Sequence[str | int] | None = None,
        options: ExtractorOptions | None = None,
        *,
        batch_size: int = 64,
        threads: int | None = None,
        device: str | None = None,
        preprocess: bool | None = None,
        pooling: str | None = None,
        cache: bool = True,
        catalog: Any = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        # scikit-learn's rule: keep the parameters as given (get_params, clone); load on first use.
        self.model = model
        self.layer = layer
        self.options = options
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.preprocess = preprocess
        self.pooling = pooling
        self.cache = cache
        self.catalog = catalog
        self.cache_dir = cache_dir

    def _options(self) -> ExtractorOptions:
        """The options object with the fields set here on top (an unreadable image stops transform)."""
        options = self.options or ExtractorOptions()
        default = ExtractorOptions()
        given = {name: getattr(self, name) for name in ("batch_size", "threads", "device", "preprocess", "pooling")
                 if getattr(self, name) != getattr(default, name)}
        return options.replace(**given, on_error="raise")

    def _extractor(self) -> Extractor:
        if isinstance(self.model, Extractor):
            return self.model
        cached = self.__dict__.get("_loaded")
        options = self._options()
        params = (os.fspath(self.model), repr(self.layer), repr(options), repr(self.catalog), repr(self.cache_dir))
        if cached is None or cached[0] != params:
            extractor = load_extractor(self.model, self.layer, options, catalog=self.catalog,
                                       cache_dir=self.cache_dir)
            self.__dict__["_loaded"] = (params, extractor)
            return extractor
        return cached[1]

    def fit(self, X: Any = None, y: Any = None):
        """Nothing to learn: the extractor is frozen."""
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Features of X (an array, or image paths), one flat row per sample (several layers side by side)."""
        import numpy as np

        from zoo.images import as_paths

        extractor = self._extractor()
        paths = as_paths(X)
        if paths is not None:
            X = paths

        def flat(rows: Any) -> np.ndarray:
            features = extractor(rows)
            if isinstance(features, dict):
                return np.concatenate([f.reshape(len(f), -1) for f in features.values()], axis=1)
            return features.reshape(len(features), -1)

        if not self.cache or isinstance(X, dict):  # a dict of named inputs has no rows to key
            return flat(X)
        from zoo.features import RowCache

        X = X if paths is not None else np.asarray(X)
        store = RowCache(extractor, self.cache_dir)
        return store.rows(X, lambda missing: flat([X[i] for i in missing] if paths is not None else X[missing]))

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _transformer_class() -> type:
    from zoo.errors import require

    base = require("sklearn.base", "transfer")
    cls = type(
        "ExtractorTransformer",
        (base.TransformerMixin, base.BaseEstimator),
        {k: v for k, v in vars(_ExtractorTransformerBody).items() if k not in ("__dict__", "__weakref__")},
    )
    cls.__module__ = __name__
    cls.__qualname__ = "ExtractorTransformer"
    return cls


def __getattr__(name: str) -> Any:
    if name == "ExtractorTransformer":
        cls = _transformer_class()
        globals()[name] = cls  # made once: pickle and isinstance see one class
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    ExtractorTransformer = _ExtractorTransformerBody
