"""ONNX pass-through plus the ONNX-side helpers every converter shares (checks, inputs, verification)."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from converters.report import DEFAULT_RTOL, Conversion, ConversionReport, compare_outputs
from zoo.errors import ConversionError, ModelFormatError, ResourceLimitError, UnsupportedLayerError
from zoo.graph import BATCH, value_dims  # BATCH: the dim_param of the batch axis in every produced model
from zoo.hashes import file_sha256  # the catalog's hash, so reports and catalog agree

if TYPE_CHECKING:
    import numpy as np
    import onnx

# Sizes given to dynamic dimensions when the converted model is run against its source.
DEFAULT_BATCH = 2  # batch 2, not 1: a batch dimension that only works for 1 is caught here
DEFAULT_SPATIAL = 224  # height and width of an image input that leaves them open
DEFAULT_CHANNELS = 3  # channels of an image input that leaves them open
DEFAULT_DIM = 16  # any other open dimension (sequence length, features)
# Sizes tried in turn for the other open dimensions of a model that refuses the defaults: an
# audio front end needs at least its window (a 512-sample STFT), a text-line recognizer a height
# of 48. Small first, so the reference run stays fast.
FALLBACK_DIMS = (32, 48, 64, 128, 256, 512, 1024, 4096, 16000)
DEFAULT_OPSET = 17

# ONNX element type -> numpy dtype name, for the types models take as input.
_ELEM_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, or raise ModelFormatError saying what the file is not."""
    import onnx
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path} is not a file; an ONNX model is a single .onnx file")
    try:
        model = onnx.load(path)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{path} is not an ONNX model ({exc}); check the file's format") from None
    except onnx.checker.ValidationError as exc:  # external data that points outside the model's folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFormatError(f"{path}: {first}; zoo reads a model's external data only from its own folder") from None
    if not model.graph.node:
        raise ModelFormatError(f"{path} is not an ONNX model: it parses but holds no graph nodes")
    return model


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx.checker and shape inference; return the model with inferred shapes."""
    import onnx

    _refuse_duplicate_node_names(model)
    try:
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"the ONNX model fails onnx.checker: {first}") from None


def _refuse_duplicate_node_names(model: onnx.ModelProto) -> None:
    """onnxruntime refuses a graph where two nodes share a name (the checker lets it pass)."""
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name in seen:
            raise ModelFormatError(f"the ONNX graph names two nodes {node.name!r}, which onnxruntime refuses; "
                                   f"give every node its own name (re-export the model)")
        seen.add(node.name)


def opset_of(model: onnx.ModelProto) -> int | None:
    """The default-domain opset the model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Convert the model to `opset` with onnx.version_converter (downgrades are refused)."""
    from onnx import version_converter

    current = opset_of(model)
    if current == opset:
        return model
    if current is not None and opset < current:
        raise UnsupportedLayerError(
            f"cannot lower the opset from {current} to {opset}; ask for --opset {current} or higher"
        )
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 the converter raises bare RuntimeErrors from C++
        raise UnsupportedLayerError(
            f"onnx.version_converter cannot take this model from opset {current} to {opset} ({exc}); "
            f"keep its opset with no --opset"
        ) from None


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node name, op type, domain) of every node that no ONNX schema or onnxruntime domain defines."""
    import onnx

    runtime_domains = {"com.microsoft", "ai.onnx.ml", "com.microsoft.nchwc", "ai.onnx.contrib"}
    imported = {o.domain or "": o.version for o in model.opset_import}
    local = {f.name for f in model.functions}
    bad = []
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in ("", "ai.onnx"):
            version = imported.get("", imported.get("ai.onnx", DEFAULT_OPSET))
            try:
                onnx.defs.get_schema(node.op_type, version, "")
                continue
            except onnx.defs.SchemaError:
                pass
        elif domain in runtime_domains or node.op_type in local:
            continue
        bad.append((node.name, node.op_type, domain))
    return bad


def graph_inputs(model: onnx.ModelProto) -> list[Any]:
    """The graph inputs that are fed at run time (not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_specs(model: onnx.ModelProto) -> list[tuple[str, list[int | None], str]]:
    """(name, shape with None for a dynamic dim, numpy dtype name) for each fed input."""
    specs = []
    for value in graph_inputs(model):
        shape = [d if isinstance(d, int) else None for d in value_dims(value) or []]
        specs.append((value.name, shape, _ELEM_DTYPES.get(value.type.tensor_type.elem_type, "float32")))
    return specs


def input_records(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The inputs the graph is fed, as ``[{"name", "dtype", "shape"}]`` (None: a dynamic size), for the catalog."""
    return [{"name": n, "dtype": d, "shape": s} for n, s, d in input_specs(model)]


def concrete_shape(shape: Sequence[int | None], layout: str | None = None, batch_axis: int | None = 0,
                   other: int | None = None) -> list[int]:
    """Fill the dynamic dims of `shape` with the documented defaults (see DEFAULT_*).

    The dynamic dim at `batch_axis` (None: the input has no batch axis, like a scalar `sr` or a
    fixed state) gets DEFAULT_BATCH; `other`, when given, every other dynamic dim (see
    FALLBACK_DIMS), else image-like and DEFAULT_DIM sizes.
    """
    dims = list(shape)
    out = []
    for axis, dim in enumerate(dims):
        if dim is not None and dim > 0:
            out.append(int(dim))
        elif axis == batch_axis:
            out.append(DEFAULT_BATCH)
        elif other is not None:
            out.append(other)
        elif len(dims) == 4 and layout == "NCHW":
            out.append(DEFAULT_CHANNELS if axis == 1 else DEFAULT_SPATIAL)
        elif len(dims) == 4:  # NHWC, TensorFlow's default
            out.append(DEFAULT_CHANNELS if axis == 3 else DEFAULT_SPATIAL)
        else:
            out.append(DEFAULT_DIM)
    return out


def sample_inputs(
    specs: Sequence[tuple[str, Sequence[int | None], str]], layout: str | None = None, seed: int = 0,
    batch_axes: dict[str, int | None] | None = None, other: int | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic inputs for each (name, shape, dtype): normal floats, small non-negative ints.

    `batch_axes` (input name -> axis, None for an input without one) says where each input's
    batch is (axis 0 when not given); `other` sizes the other dynamic dims (see concrete_shape).
    """
    import numpy as np

    from zoo.memory import check_tensor

    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in specs:
        axis = (batch_axes or {}).get(name, 0)
        dims = concrete_shape(shape, layout, axis, other)
        check_tensor(name, dims, np.dtype(dtype).itemsize, "input",
                     "the model declares an input size it cannot be run at here")
        if np.issubdtype(np.dtype(dtype), np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        elif np.dtype(dtype) == np.bool_:
            feeds[name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[name] = rng.integers(0, 10, dims).astype(dtype)
    return feeds


def session(model: onnx.ModelProto, optimize: bool = True):
    """An onnxruntime CPU session on an in-memory model.

    ``optimize=False`` runs the graph as written: onnxruntime's fusions would otherwise turn a
    dequantized-weight MatMul into one that quantizes its input on the fly.
    """
    import onnxruntime as ort

    from zoo.logs import onnxruntime_severity

    options = ort.SessionOptions()
    options.log_severity_level = onnxruntime_severity()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = True
        ) -> tuple[list[str], list[np.ndarray]]:
    """Output names and values of the model under onnxruntime, once its shapes are known to fit in memory."""
    from zoo.memory import check_onnx

    sizes = [v.shape[0] for v in feeds.values() if getattr(v, "ndim", 0)]
    check_onnx(model, "the ONNX model", batch=sizes[0] if sizes else None, feeds=feeds)
    sess = session(model, optimize)
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds)


def layout_of(shape: Sequence[int | None], default: str | None) -> str | None:
    """Guess an input's layout: channels (1, 3 or 4) in the last or the second axis of a 4-d input."""
    if len(shape) != 4:
        return "NC" if len(shape) == 2 else None
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW"
    return default


def make_batch_dynamic(model: onnx.ModelProto) -> list[str]:
    """Make dim 0 of every input and output the symbolic `batch` in place; return notes on what changed.

    A fixed batch (often 1, baked into Reshape targets too) is rewritten by
    `zoo.graph.make_batch_dynamic`: proven by shape inference when it can be, else unproven,
    and the converter's verification on batch 2 proves it. A symbolic one is renamed `batch`.
    """
    from zoo.graph import make_batch_dynamic as rewrite

    notes: list[str] = []
    new = rewrite(model, notes=notes)
    if new is None:
        notes = []
        new = rewrite(model, check=False, notes=notes)
    if new is not None:
        model.CopyFrom(new)
        return notes
    for value in [*graph_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH
    return notes


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears (node inputs and outputs, graph outputs, value_info)."""
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in [*model.graph.output, *model.graph.value_info, *model.graph.input]:
        if value.name == old:
            value.name = new


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) one metadata_props entry."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def verify(
    report: ConversionReport,
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    reference: Sequence[np.ndarray],
    reference_name: str,
    tolerance: float = DEFAULT_RTOL,
) -> None:
    """Run `model` on `feeds` under onnxruntime and record how far each output is from `reference`."""
    import onnxruntime

    try:
        names, got = run(model, feeds)
    except ResourceLimitError:
        raise
    except Exception as exc:  # noqa: BLE001 onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionError(
            f"onnxruntime cannot run the converted model on inputs "
            f"{ {k: list(v.shape) for k, v in feeds.items()} } ({first})"
        ) from None
    if len(got) != len(reference):
        raise UnsupportedLayerError(
            f"the converted model has {len(got)} outputs ({', '.join(names)}) but its source has "
            f"{len(reference)}; the conversion dropped or added outputs"
        )
    report.outputs = compare_outputs(names, list(reference), got)
    report.reference = reference_name  # the converted side is always onnxruntime (see versions)
    report.tolerance = tolerance
    report.verified = all(o.max_rel <= tolerance for o in report.outputs)
    report.versions.setdefault("onnxruntime", onnxruntime.__version__)


def unverified_figures(report: ConversionReport) -> str:
    """One line naming every output beyond tolerance with its figures, or why it cannot agree."""
    return report.describe_unverified()


class SampleRun:
    """Inputs a model accepts and its outputs on them (how a converted model is checked).

    `axes` maps each input to its batch axis (None: fed whole), `output_axes` each output to
    its own; `fixed` is the batch size the graph fixes (None when dynamic), in which case the
    model was run one batch of `fixed` at a time and the outputs concatenated.
    """

    def __init__(self, feeds, outputs, names, axes, output_axes, fixed, note=None):
        self.feeds, self.outputs, self.names = feeds, outputs, names
        self.axes, self.output_axes, self.fixed, self.note = axes, output_axes, fixed, note

    def first_batch(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The feeds and outputs of the first `fixed` samples (for a model kept at its fixed batch)."""
        size = self.fixed if isinstance(self.fixed, int) else DEFAULT_BATCH
        feeds = {k: _take(v, self.axes.get(k), 0, size) for k, v in self.feeds.items()}
        outputs = [_take(o, self.output_axes.get(n, 0), 0, size) for n, o in zip(self.names, self.outputs)]
        return feeds, outputs


def _take(x: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    if axis is None or x.ndim <= axis:
        return x
    return x[(slice(None),) * axis + (slice(start, stop),)]


def sample_run(model: onnx.ModelProto, layout: str | None = None) -> SampleRun:
    """Run `model` under onnxruntime on sample inputs it accepts; see SampleRun.

    Each input's batch axis follows `zoo.graph.batch_axes`, the rule extractors use too (a
    recurrent state (2, N, 128) is batched on axis 1, a scalar `sr` not at all). When the
    defaults do not run (a window longer than 16 samples, a fixed height), the other open
    dimensions take each of FALLBACK_DIMS in turn. A graph with a fixed batch runs one batch
    of that size at a time on inputs of twice that size. Raises ConversionError with the first
    error when no size runs.
    """
    import numpy as np

    from zoo.graph import model_batch_axes
    from zoo.memory import check_onnx

    axes, output_axes, fixed = model_batch_axes(model)
    specs = input_specs(model)
    open_dims = [(n, k) for n, shape, _ in specs for k, d in enumerate(shape) if d is None and k != axes.get(n)]
    if isinstance(fixed, int):  # a batch of twice the fixed size, run a fixed batch at a time
        specs = [(n, [None if k == axes.get(n) else d for k, d in enumerate(shape)], t) for n, shape, t in specs]
    sess = names = None
    first_error = None
    for other in [None, *FALLBACK_DIMS] if open_dims else [None]:
        feeds = sample_inputs(specs, layout, batch_axes=axes, other=other)
        if isinstance(fixed, int) and fixed > 1:
            feeds = {k: _repeat_batch(v, axes.get(k), fixed) for k, v in feeds.items()}
        if sess is None:  # what running it will allocate is known before onnxruntime allocates it
            check_onnx(model, "the ONNX model", batch=fixed if isinstance(fixed, int) else DEFAULT_BATCH,
                       feeds=None if isinstance(fixed, int) else feeds)
            sess = session(model)
            names = [o.name for o in sess.get_outputs()]
        try:
            if isinstance(fixed, int):
                step = fixed
                rows = [sess.run(names, {k: _take(v, axes.get(k), i * step, (i + 1) * step) for k, v in feeds.items()})
                        for i in range(DEFAULT_BATCH)]
                outputs = [np.concatenate([r[j] for r in rows], axis=output_axes.get(n, 0))
                           for j, n in enumerate(names)]
            else:
                outputs = sess.run(names, feeds)
        except Exception as exc:  # noqa: BLE001 onnxruntime's Fail/InvalidArgument/RuntimeException
            first_error = first_error or exc
            continue
        note = None if other is None else (
            f"sample inputs: open dimensions other than the batch set to {other} (the defaults do not run)")
        return SampleRun(feeds, outputs, names, axes, output_axes, fixed, note)
    shown = ", ".join(f"{n} {['N' if k == axes.get(n) else (d or '?') for k, d in enumerate(s)]} {t}"
                      for n, s, t in input_specs(model))
    raise ConversionError(
        f"onnxruntime cannot run the original model on sample inputs ({shown}; open dimensions tried at "
        f"{DEFAULT_DIM}/{DEFAULT_SPATIAL} and {', '.join(map(str, FALLBACK_DIMS))}): "
        f"{(str(first_error).strip().splitlines() or [type(first_error).__name__])[0][:300]}"
    )


def _repeat_batch(x: np.ndarray, axis: int | None, fixed: int) -> np.ndarray:
    """Sample inputs of DEFAULT_BATCH x `fixed` along the batch axis (built with DEFAULT_BATCH)."""
    import numpy as np

    if axis is None or x.ndim <= axis:
        return x
    return np.concatenate([x] * fixed, axis=axis) if x.shape[axis] == DEFAULT_BATCH else x


def convert(
    path: str | os.PathLike, *, opset: int | None = None, verify: bool = True
) -> Conversion:
    """Pass an ONNX model through: checker, shape inference, optional opset upgrade, dynamic batch.

    The result is compared under onnxruntime with the original model on the same inputs
    (see `sample_run`: each input batched on its own axis; the original run one fixed batch
    at a time if its batch was fixed). A fixed batch the graph's own shape logic depends on
    (a condition or a Reshape computed from it) is kept when the dynamic one does not run or
    does not agree: extractors then feed that model full, padded batches.

    >>> conversion = convert("resnet50.onnx", opset=17)   # doctest: +SKIP
    """
    import onnx

    start = time.perf_counter()
    original = load(path)
    checked = check(original)  # with inferred shapes: what running it will allocate is known first
    report = ConversionReport(
        source_format="onnx",
        source_files={os.fspath(path): file_sha256(path)},
        converter="converters.onnx_model",
        versions={"onnx": onnx.__version__},
    )
    bad = unsupported_ops(original)
    if bad:
        name, op, domain = bad[0]
        raise UnsupportedLayerError(
            f"node {name!r} uses op {op!r} (domain {domain!r}) that neither ONNX nor onnxruntime defines"
        )
    model = onnx.ModelProto()
    model.CopyFrom(original)
    if opset is not None:
        model = upgrade_opset(model, opset)
        report.notes.append(f"opset upgraded from {opset_of(original)} to {opset}")
    kept = onnx.ModelProto()
    kept.CopyFrom(model)  # the fixed-batch fallback
    dynamic_notes = make_batch_dynamic(model)
    model = check(model)
    report.opset = opset_of(model)
    specs = input_specs(original)
    if specs:
        report.input_layout = layout_of(specs[0][1], None)
    if not verify:
        report.notes += dynamic_notes
        report.seconds = time.perf_counter() - start
        return Conversion(model, report)
    sample = sample_run(checked, report.input_layout)
    if sample.note:
        report.notes.append(sample.note)
    reference_name = "onnxruntime on the original model"
    try:
        verify_outputs(report, model, sample.feeds, sample.outputs, reference_name)
        agrees = report.verified
    except ConversionError:
        if not dynamic_notes:
            raise
        agrees = False
    if dynamic_notes and not agrees:
        # The graph's own shape logic ties it to its batch (an If on a shape, a Reshape computed
        # from it): keep the batch it was exported with rather than a rewrite that does not run.
        model = check(kept)
        feeds, outputs = sample.first_batch()
        verify_outputs(report, model, feeds, outputs, reference_name)
        report.notes.append(f"batch kept fixed at {sample.fixed}: the graph does not run or agree with "
                            f"a dynamic batch (extractors feed it full, padded batches)")
    else:
        report.notes += dynamic_notes
    report.seconds = time.perf_counter() - start
    return Conversion(model, report)


verify_outputs = verify  # `convert(verify=...)` shadows the function name inside convert


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CHANNELS",
    "DEFAULT_DIM",
    "DEFAULT_OPSET",
    "DEFAULT_SPATIAL",
    "FALLBACK_DIMS",
    "SampleRun",
    "check",
    "concrete_shape",
    "convert",
    "file_sha256",
    "input_records",
    "input_specs",
    "load",
    "make_batch_dynamic",
    "opset_of",
    "rename_tensor",
    "run",
    "sample_inputs",
    "sample_run",
    "unsupported_ops",
    "unverified_figures",
    "upgrade_opset",
    "verify",
]
