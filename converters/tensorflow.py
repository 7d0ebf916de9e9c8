"""TensorFlow to ONNX with tf2onnx: SavedModel, Keras (.keras, .h5), frozen GraphDef (.pb), TFLite.

Every conversion runs the source in TensorFlow (or the TFLite interpreter) and the ONNX model in
onnxruntime on the same deterministic inputs (dynamic dimensions filled as documented in
``converters.onnx_model``: batch 2, image height and width 224) and records the difference of every
output in the report.

Layer names: TensorFlow op scopes survive in ONNX node names (``model_1/block4_pool_1/MaxPool2d``).
For Keras models the output tensor of each layer that survives conversion is renamed to the layer's
own name (``block4_pool``, ``conv5_block3_out``), so a graph can be cut there; the model's metadata
``zoo:layers`` maps each renamed layer to its layout in ONNX (``NCHW`` when tf2onnx moved the
feature map to channels-first, else the Keras layout). Layers that tf2onnx fuses into a neighbour
(a Conv followed by BatchNormalization) have no tensor of their own and are listed as ``fused``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from converters import onnx_model as ox
from converters.report import Conversion, ConversionReport
from zoo.errors import ConversionError, ModelFormatError, UnsupportedLayerError

if TYPE_CHECKING:
    import numpy as np
    import onnx

DEFAULT_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# what a file is


def detect_format(path: str | os.PathLike) -> str:
    """"saved_model", "keras", "frozen_graph" or "tflite", from the file's content."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
            os.path.join(path, "saved_model.pbtxt")
        ):
            return "saved_model"
        raise ModelFormatError(
            f"{path} is a folder without saved_model.pb, so it is not a TensorFlow SavedModel"
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head == _HDF5_MAGIC or head[:4] == b"PK\x03\x04":
        return "keras"
    if os.path.basename(path) == "saved_model.pb":
        return "saved_model"
    return "frozen_graph"


def _expect(path: str, condition: bool, what: str, hint: str) -> None:
    if not condition:
        raise ModelFormatError(f"{path} is not {what}; {hint}")


# ---------------------------------------------------------------------------------------------
# shared steps


def _quiet_tf() -> Any:
    """Import tensorflow with its C++ and tf2onnx chatter turned down."""
    _bind_sqlite_first()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = _require("tensorflow")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf


def _bind_sqlite_first() -> None:
    """Load Python's sqlite3 before TensorFlow.

    TensorFlow's shared library exports its own SQLite (built without FTS5); when it is loaded
    first, Python's _sqlite3 binds to it and the catalog's full-text index stops working
    ("no such module: fts5").
    """
    import sqlite3  # noqa: F401


def _require(module: str) -> Any:
    from zoo.errors import require

    return require(module, "tensorflow")


def _tf2onnx() -> Any:
    _bind_sqlite_first()
    tf2onnx = _require("tf2onnx")
    # Unconverted ops are reported by _refuse_unconverted_ops as one error, not as log lines.
    from tf2onnx import logging as tf2onnx_logging

    tf2onnx_logging.set_level(logging.CRITICAL)
    return tf2onnx


def _new_report(source_format: str, files: Sequence[str], opset: int, nchw: bool) -> ConversionReport:
    import onnx
    import tensorflow as tf
    import tf2onnx

    return ConversionReport(
        source_format=source_format,
        source_files={os.fspath(f): ox.file_sha256(f) for f in files},
        converter=f"tf2onnx {tf2onnx.__version__}",
        versions={"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__},
        opset=opset,
        input_layout="NCHW" if nchw else "NHWC",
    )


def _min_opset(op_type: str) -> int | None:
    """The lowest opset at which tf2onnx has a handler for a TensorFlow op, if any."""
    _tf2onnx()  # handlers register themselves when tf2onnx is imported
    from tf2onnx.handler import tf_op

    for version, handlers in enumerate(tf_op.get_opsets().get("", [])):
        if op_type in handlers:
            return version
    return None


def _refuse_unconverted_ops(model: onnx.ModelProto, opset: int) -> None:
    """tf2onnx leaves ops it cannot map in the graph; name the first one and what would help."""
    bad = ox.unsupported_ops(model)
    if not bad:
        return
    from tf2onnx import constants

    names = sorted({op for _, op, _ in bad})
    node, op, _ = bad[0]
    needed = _min_opset(op)
    highest = max(constants.OPSET_TO_IR_VERSION)
    if needed is not None and needed > opset:
        hint = f"tf2onnx maps it from opset {needed}: retry with --opset {min(max(needed, opset), highest)}"
    else:
        hint = (f"tf2onnx {_tf2onnx().__version__} has no ONNX mapping for it at any opset up to "
                f"{highest}; replace the op in the source model")
    raise UnsupportedLayerError(
        f"TensorFlow op {op!r} (node {node!r}) has no ONNX conversion at opset {opset}; {hint}"
        + (f" (all unconverted ops: {', '.join(names)})" if len(names) > 1 else "")
    )


def _finish(
    model: onnx.ModelProto,
    report: ConversionReport,
    start: float,
    verify: bool,
    onnx_feeds: dict[str, np.ndarray] | None,
    reference: Callable[[], list[np.ndarray]] | None,
    reference_name: str,
) -> Conversion:
    """Refuse unconverted ops, make the batch dynamic, check, compare with the source.

    A graph exported with a fixed batch whose rewrite to a dynamic one does not run or does not
    agree (its own shape logic ties it to that batch) keeps the fixed batch when that agrees.
    """
    import onnx

    _refuse_unconverted_ops(model, report.opset or ox.DEFAULT_OPSET)
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    dynamic = ox.make_batch_dynamic(model)
    report.notes += dynamic
    model = _checked_graph(model, report)
    ranks = {len(shape) for _, shape, _ in ox.input_specs(model)}
    if 4 not in ranks:  # NHWC/NCHW only describe image inputs
        report.input_layout = "NC" if ranks == {2} else None
    if verify and reference is not None and onnx_feeds is not None:
        expected = reference()
        try:
            ox.verify(report, model, onnx_feeds, expected, reference_name)
        except ConversionError:
            if not dynamic:
                raise
            report.verified = False
        if dynamic and not report.verified:
            model = _fixed_batch_fallback(model, kept, report, onnx_feeds, expected, reference_name)
    report.seconds = time.perf_counter() - start
    return Conversion(model, report)


def _checked_graph(model: onnx.ModelProto, report: ConversionReport) -> onnx.ModelProto:
    model = ox.check(model)
    report.opset = ox.opset_of(model)
    if report.input_layout != "NCHW":  # cuts hand back TensorFlow's own NHWC (see converters.tf_layout)
        from converters.tf_layout import mark_channels_first

        mark_channels_first(model)
    return model


def _fixed_batch_fallback(model, kept, report, feeds, expected, reference_name) -> onnx.ModelProto:
    """`kept` (the graph with the batch it was exported with) when it agrees where `model` did not."""
    import copy

    from zoo.graph import batch_dim

    fixed = batch_dim(kept)
    if not isinstance(fixed, int) or fixed < 1:
        return model
    first_feeds, first_expected = {k: v[:fixed] for k, v in feeds.items()}, [r[:fixed] for r in expected]
    rows = len(next(iter(feeds.values()))) if feeds else 0
    for start in range(0, rows, fixed):  # each batch of `fixed` rows alone must agree: else it is not the batch
        alone = copy.deepcopy(report)
        try:
            ox.verify(alone, model, {k: v[start:start + fixed] for k, v in feeds.items()},
                      [r[start:start + fixed] for r in expected], reference_name)
        except ConversionError:
            continue  # the rewrite does not even run on a batch of that size: the kept graph decides
        if not alone.verified:
            return model
    trial = copy.deepcopy(report)
    trial.notes = [n for n in trial.notes if "made dynamic" not in n and "batch in its target shape" not in n]
    candidate = _checked_graph(kept, trial)
    try:
        ox.verify(trial, candidate, first_feeds, first_expected, reference_name)
    except ConversionError:
        return model
    if not trial.verified:
        return model
    trial.notes.append(f"batch kept fixed at {fixed}: the graph does not run or agree with a dynamic batch "
                       f"(extractors feed it full, padded batches)")
    report.__dict__.update(trial.__dict__)
    return candidate


def fixed_rows(model: onnx.ModelProto, feeds: dict[str, np.ndarray], reference: list[np.ndarray]
               ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The feeds and reference cut to the batch a fixed-batch model takes (unchanged when it is dynamic)."""
    from zoo.graph import batch_dim

    fixed = batch_dim(model)
    if not isinstance(fixed, int) or fixed < 1:
        return feeds, reference
    return {k: v[:fixed] for k, v in feeds.items()}, [r[:fixed] for r in reference]


@contextlib.contextmanager
def _without_grappler():
    """Run TensorFlow references without grappler's graph rewrites.

    Rewriting the graph before its first run costs more than running it (0.4 s of 0.5 s on
    MobileNetV2); the reference only needs the graph's own arithmetic.
    """
    import tensorflow as tf

    previous = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


def _session_config():
    """A TF1 session config without grappler (see _without_grappler)."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def _tf_feeds(specs: Sequence[tuple[str, Sequence[int | None], str]]) -> dict[str, np.ndarray]:
    """Deterministic inputs in TensorFlow's layout."""
    return ox.sample_inputs(specs, layout="NHWC")


def _to_onnx_feeds(feeds: dict[str, np.ndarray], names: dict[str, str], nchw: bool) -> dict[str, np.ndarray]:
    """Rename TF feeds to ONNX input names, channels-first where --nchw transposed the inputs."""
    out = {}
    for key, value in feeds.items():
        out[names.get(key, key)] = value.transpose(0, 3, 1, 2) if nchw and value.ndim == 4 else value
    return out


def _convert_graph(frozen, inputs, outputs, opset, nchw, rename, name) -> onnx.ModelProto:
    """tf2onnx's common conversion of a frozen GraphDef (the path its own command line takes)."""
    import tensorflow as tf

    _tf2onnx()
    from tf2onnx.convert import _convert_common

    nchw_inputs = [i for i in inputs if nchw and _rank(frozen, i) == 4]
    with tf.device("/cpu:0"):
        model, _ = _convert_common(
            frozen, name=name, continue_on_error=True, opset=opset, input_names=list(inputs),
            output_names=list(outputs), inputs_as_nchw=nchw_inputs or None, tensors_to_rename=rename,
        )
    return model


def _rank(graph_def, tensor: str) -> int | None:
    node = tensor.split(":")[0]
    for n in graph_def.node:
        if n.name == node and "shape" in n.attr:
            shape = n.attr["shape"].shape
            return None if shape.unknown_rank else len(shape.dim)
    return None


def _shape_list(tensor_shape) -> list[int | None]:
    return [None if d.size < 0 else int(d.size) for d in tensor_shape.dim]


# ---------------------------------------------------------------------------------------------
# SavedModel


def saved_model_signatures(path: str | os.PathLike) -> dict[str, list[str]]:
    """Tag sets (comma-joined) of a SavedModel and the signatures of each, read without loading it."""
    from google.protobuf.message import DecodeError

    _quiet_tf()
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.fspath(path)
    pb = os.path.join(path, "saved_model.pb")
    _expect(path, os.path.isfile(pb), "a TensorFlow SavedModel (no saved_model.pb in it)",
            "give the folder that holds saved_model.pb and variables/")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as fh:
            proto.ParseFromString(fh.read())
    except DecodeError as exc:
        raise ModelFormatError(f"{pb} is not a SavedModel protobuf ({exc})") from None
    _expect(path, len(proto.meta_graphs) > 0, "a TensorFlow SavedModel (no MetaGraph)", "re-export it")
    return {
        ",".join(mg.meta_info_def.tags): sorted(k for k in mg.signature_def if not k.startswith("__"))
        for mg in proto.meta_graphs
    }


def _check_tag_and_signature(path: str, tags: list[str], signature: str) -> None:
    available = saved_model_signatures(path)
    match = next((sigs for key, sigs in available.items() if set(key.split(",")) - {""} == set(tags)), None)
    listing = "; ".join(f"tags [{k}]: signatures {', '.join(v) or '(none)'}" for k, v in available.items())
    if match is None:
        raise ModelFormatError(
            f"SavedModel {path} has no MetaGraph with tags {','.join(tags)!r}; it has {listing}. "
            f"Pick one with tag=..."
        )
    if signature not in match:
        raise ModelFormatError(
            f"SavedModel {path} has no signature {signature!r} under tags {','.join(tags)!r}; "
            f"it has {', '.join(match) or 'none'}. Pick one with signature=..."
        )


def convert_saved_model(
    path: str | os.PathLike,
    *,
    tag: str | Sequence[str] = DEFAULT_TAG,
    signature: str = DEFAULT_SIGNATURE,
    opset: int = ox.DEFAULT_OPSET,
    nchw: bool = False,
    verify: bool = True,
    loader: str = "auto",
    trust_model_code: bool = False,
) -> Conversion:
    """Convert a SavedModel signature to ONNX.

    `loader` is "v2" (``tf.saved_model.load``), "v1" (the TF1 session loader, then a frozen
    graph) or "auto". Auto tries v2; when v2 rejects a SavedModel written by an older release
    (the usual case: optimizer slot variables whose optimizer class no longer exists, "'_UserObject'
    object has no attribute 'add_slot'"), it loads a copy without the slots, and failing that
    uses the TF1 loader. The report's notes say which path was taken. Every op it would run is
    checked first (``converters.model_code``) unless `trust_model_code`.

    >>> conversion = convert_saved_model("export/", signature="serving_default")  # doctest: +SKIP
    """
    start = time.perf_counter()
    _quiet_tf()
    path = os.fspath(path)
    tags = [tag] if isinstance(tag, str) else list(tag)
    tags = [t for t in tags if t]
    _check_tag_and_signature(path, tags, signature)
    if not trust_model_code:
        from converters.model_code import check_saved_model

        check_saved_model(path, tags, signature)
    report = _new_report("saved_model", [path], opset, nchw)
    if loader not in ("auto", "v1", "v2"):
        raise ValueError(f"loader must be 'auto', 'v1' or 'v2', not {loader!r}")
    if loader == "v1":
        return _saved_model_v1(path, tags, signature, opset, nchw, verify, report, start)
    try:
        return _saved_model_v2(path, tags, signature, opset, nchw, verify, report, start)
    except (UnsupportedLayerError, ModelFormatError):
        raise
    except Exception as exc:  # noqa: BLE001 tf.saved_model.load's rejections: AttributeError, ValueError, KeyError...
        v2_error = _first_line(exc)
        if loader == "v2":
            raise ConversionError(f"tf.saved_model.load cannot load {path}: {v2_error}") from None
    # Training state that the current release cannot revive (optimizer slots whose optimizer class
    # is gone, e.g. Keras 2 optimizers): inference never reads it, so load a copy without it.
    stripped = _without_optimizer_slots(path)
    if stripped is not None:
        try:
            conversion = _saved_model_v2(stripped, tags, signature, opset, nchw, verify, report, start)
            conversion.report.notes.append(
                f"tf.saved_model.load rejected it ({v2_error[:200]}); loaded without its optimizer slot variables")
            return conversion
        except (UnsupportedLayerError, ModelFormatError):
            raise
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            v2_error = f"{v2_error}; without optimizer slots: {_first_line(exc)}"
        finally:
            shutil.rmtree(stripped, ignore_errors=True)
    try:
        conversion = _saved_model_v1(path, tags, signature, opset, nchw, verify, report, start)
    except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
        raise ConversionError(
            f"cannot load SavedModel {path}: tf.saved_model.load says {v2_error[:300]}; the TF1 loader says "
            f"{_first_line(exc)[:300]}"
        ) from None
    conversion.report.notes.append(f"tf.saved_model.load rejected it ({v2_error[:200]}); used the TF1 loader")
    return conversion


def _first_line(exc: BaseException) -> str:
    """The line of an error that says what went wrong.

    TensorFlow's runtime errors start "Graph execution error:", then the stack where the node was
    defined; what failed is the line before the ``[[{{node ...}}]]`` marker.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    if lines[0].endswith("execution error:"):
        said = [line for line in lines[1:] if not line.startswith(("File ", "Detected at", "[["))]
        return said[-1] if said else lines[0]
    return lines[0]


def _without_optimizer_slots(path: str) -> str | None:
    """A temporary copy of a SavedModel whose object graph no longer lists optimizer slot variables.

    Only saved_model.pb is rewritten; every other entry (variables/, assets/) is a symlink to the
    original. Returns None when the model has no slot variables.
    """
    import tempfile

    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        proto.ParseFromString(fh.read())
    nodes = [n for mg in proto.meta_graphs for n in mg.object_graph_def.nodes if n.slot_variables]
    if not nodes:
        return None
    for node in nodes:
        del node.slot_variables[:]
    folder = tempfile.mkdtemp(prefix="zoo-savedmodel-")
    with open(os.path.join(folder, "saved_model.pb"), "wb") as fh:
        fh.write(proto.SerializeToString())
    for entry in os.listdir(path):
        if entry != "saved_model.pb":
            os.symlink(os.path.abspath(os.path.join(path, entry)), os.path.join(folder, entry))
    return folder


def _saved_model_v2(path, tags, signature, opset, nchw, verify, report, start) -> Conversion:
    import tensorflow as tf

    _tf2onnx()
    from tf2onnx import tf_loader

    frozen, inputs, outputs, func, imported, _tables, rename = tf_loader.from_saved_model(
        path, None, None, tag=tags, signatures=[signature], return_concrete_func=True,
        return_initialized_tables=True, return_tensors_to_rename=True,
    )
    model = _convert_graph(frozen, inputs, outputs, opset, nchw, rename, path)
    specs = func.structured_input_signature[1]
    feeds = _tf_feeds([(key, spec.shape.as_list(), spec.dtype.as_numpy_dtype.__name__)
                       for key, spec in sorted(specs.items())])

    def reference() -> list[np.ndarray]:
        with _without_grappler():
            result = func(**{k: tf.constant(v) for k, v in feeds.items()})
        if not isinstance(result, dict):
            result = {"output_0": result}
        return _in_onnx_order(model, {k: v.numpy() for k, v in result.items()})

    report.notes.append(f"signature {signature!r}, tags {','.join(tags)}")
    del imported  # keep the restored variables alive until conversion is done
    return _finish(model, report, start, verify, _to_onnx_feeds(feeds, {}, nchw), reference,
                   f"tensorflow {tf.__version__} (SavedModel signature)")


def _in_onnx_order(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Reference values in the order of the ONNX outputs, matched by name when names agree."""
    names = [o.name for o in model.graph.output]
    if set(names) <= set(values):
        return [values[n] for n in names]
    return [values[k] for k in sorted(values)]


def _saved_model_v1(path, tags, signature, opset, nchw, verify, report, start) -> Conversion:
    """TF1 loader: restore in a session, run the reference there, freeze the signature's graph."""
    tf = _quiet_tf()
    _tf2onnx()
    from tf2onnx import tf_loader

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph, config=_session_config()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, tags, path)
        sig = meta.signature_def[signature]
        inputs = {key: info.name for key, info in sorted(sig.inputs.items())}
        outputs = {key: info.name for key, info in sorted(sig.outputs.items())}
        specs = [(key, _shape_list(info.tensor_shape), tf.as_dtype(info.dtype).as_numpy_dtype.__name__)
                 for key, info in sorted(sig.inputs.items())]
        feeds = _tf_feeds(specs)
        reference_values = sess.run(list(outputs.values()), {inputs[k]: v for k, v in feeds.items()}) \
            if verify else None
        input_names = tf_loader.inputs_without_resource(sess, list(inputs.values()))
        frozen = tf_loader.freeze_session(sess, input_names=input_names,
                                          output_names=list(outputs.values()))
    with tf.Graph().as_default():
        frozen = tf_loader.tf_optimize(input_names, list(outputs.values()), frozen)
    rename = {**{v: k for k, v in inputs.items()}, **{v: k for k, v in outputs.items()}}
    model = _convert_graph(frozen, input_names, list(outputs.values()), opset, nchw, rename, path)
    report.notes.append(f"signature {signature!r}, tags {','.join(tags)} (TF1 loader, frozen graph)")
    return _finish(model, report, start, verify, _to_onnx_feeds(feeds, {}, nchw),
                   lambda: list(reference_values), f"tensorflow {tf.__version__} (TF1 session)")


# ---------------------------------------------------------------------------------------------
# Keras


def load_keras(
    path: str | os.PathLike, architecture: str | None = None, options: dict[str, Any] | None = None
):
    """A Keras model from `.keras`/`.h5`, or a Keras Applications `architecture` + weights-only `.h5`."""
    _quiet_tf()
    keras = _require("keras")
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    is_h5, is_zip = head == _HDF5_MAGIC, head[:4] == b"PK\x03\x04"
    _expect(path, is_h5 or is_zip, "a Keras model (neither a .keras zip nor an HDF5 file)",
            "give a file written by model.save() or save_weights()")
    if architecture:
        build = getattr(keras.applications, architecture, None)
        if build is None or not callable(build):
            known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
            raise ModelFormatError(
                f"{architecture!r} is not a Keras Applications architecture; known: {', '.join(known)}"
            )
        kwargs = {k: v for k, v in (options or {}).items() if k != "architecture"}
        if "input_shape" in kwargs and kwargs["input_shape"] is not None:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        model = build(weights=None, **kwargs)
        try:
            model.load_weights(path)
        except Exception as exc:  # noqa: BLE001 ValueError on a layer mismatch, OSError on a bad file
            raise ModelFormatError(
                f"{path} does not hold {architecture} weights ({str(exc).splitlines()[0][:300]}); "
                f"check the architecture and its options {kwargs}"
            ) from None
        return model
    if is_h5 and not _h5_has_model(path):
        raise ModelFormatError(
            f"{path} holds only weights, no architecture; give the Keras Applications architecture "
            f"(model meta {{\"architecture\": \"ResNet50\"}}) or a file written by model.save()"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
        raise ModelFormatError(f"{path} is not a loadable Keras model ({str(exc)[:300]})") from None


def is_weights_only(path: str | os.PathLike) -> bool:
    """True for an HDF5 file of weights without a model config (save_weights, Keras Applications)."""
    with open(path, "rb") as fh:
        if fh.read(8) != _HDF5_MAGIC:
            return False
    return not _h5_has_model(os.fspath(path))


def _h5_has_model(path: str) -> bool:
    import h5py

    with h5py.File(path, "r") as fh:
        return "model_config" in fh.attrs


def convert_keras(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    options: dict[str, Any] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    nchw: bool = False,
    verify: bool = True,
    trust_model_code: bool = False,
) -> Conversion:
    """Convert a `.keras` / `.h5` file (or an architecture plus weights-only `.h5`) to ONNX."""
    start = time.perf_counter()
    model = load_keras(path, architecture, options)
    conversion = convert_keras_model(model, opset=opset, nchw=nchw, verify=verify,
                                     source_files=[os.fspath(path)], trust_model_code=trust_model_code)
    conversion.report.seconds = time.perf_counter() - start
    if architecture:
        conversion.report.notes.append(f"architecture keras.applications.{architecture}")
    return conversion


def convert_keras_model(
    model,
    *,
    opset: int = ox.DEFAULT_OPSET,
    nchw: bool = False,
    verify: bool = True,
    source_files: Sequence[str] = (),
    trust_model_code: bool = False,
) -> Conversion:
    """Convert an in-memory Keras model: a tf.function with a None-batch signature, then tf2onnx.

    Every layer's output tensor is traced so that it can be renamed to the layer's name in ONNX.
    The traced graph's ops are checked before it runs (``converters.model_code``) unless `trust_model_code`.
    """
    start = time.perf_counter()
    tf = _quiet_tf()
    _tf2onnx()
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed

    report = _new_report("keras", list(source_files), opset, nchw)
    keras_inputs = list(model.inputs)
    specs = [tf.TensorSpec([None, *list(t.shape)[1:]], t.dtype, name=_input_name(t, i))
             for i, t in enumerate(keras_inputs)]
    probe = _layer_probe(model)
    output_names = _output_layer_names(model)

    @tf.function(input_signature=specs)
    def traced(*args):
        outputs = probe(list(args) if len(args) > 1 else args[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {f"o{i:05d}": t for i, t in enumerate(outputs)}

    func = traced.get_concrete_function()
    if not trust_model_code:
        from converters.model_code import check_graph_def

        check_graph_def(func.graph.as_graph_def(), getattr(model, "name", None) or "the Keras model")
    flat = [t for t in func.outputs if t.dtype != tf.dtypes.resource]
    # The probe returns the model's outputs first, then one tensor per layer.
    model_tensors = [t.name for t in flat[: len(output_names)]]
    layer_tensors = {
        name: _producer(func.graph, t.name) for name, t in zip(probe.layer_outputs, flat[len(output_names):])
    }
    keras_shapes = {name: list(t.shape) for name, t in probe.layer_outputs.items()}
    input_names = [t.name for t in func.inputs if t.dtype != tf.dtypes.resource]
    rename = tensor_names_from_structed(func, input_names, model_tensors)
    rename = {k: v for k, v in rename.items() if k in input_names}
    rename.update(dict(zip(model_tensors, output_names)))
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(func, input_names, model_tensors)
    onnx_model = _convert_graph(frozen, input_names, model_tensors, opset, nchw, rename,
                                getattr(model, "name", "keras"))
    feeds = _tf_feeds([(s.name, s.shape.as_list(), s.dtype.as_numpy_dtype.__name__) for s in specs])

    def reference() -> list[np.ndarray]:
        args = [tf.constant(feeds[s.name]) for s in specs]
        out = model(args if len(args) > 1 else args[0], training=False)
        if isinstance(out, dict):
            out = [out[k] for k in sorted(out)]
        return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]

    onnx_feeds = _to_onnx_feeds(feeds, {}, nchw)
    conversion = _finish(onnx_model, report, start, verify, onnx_feeds, reference,
                         f"keras {_require('keras').__version__} ({tf.__version__})")
    _name_layers(conversion.model, layer_tensors, keras_shapes, set(output_names))
    conversion.report.seconds = time.perf_counter() - start
    return conversion


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_")


def _is_input_layer(layer) -> bool:
    return type(layer).__name__ == "InputLayer"


def _output_layer_names(model) -> list[str]:
    """The name of the layer that produces each model output (Keras names outputs after them)."""
    names = []
    for i, tensor in enumerate(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        names.append(history.operation.name if history is not None else f"output_{i}")
    return names if len(set(names)) == len(names) else [f"output_{i}" for i in range(len(names))]


def _layer_probe(model):
    """A Keras model returning the model's outputs, then the output of every single-output layer.

    The layer outputs come from the model's own graph (its nodes by depth) rather than
    ``layer.output``, which for a Sequential or a shared layer may be another call of the layer.
    Layers inside a nested model are not reachable from the outer inputs and are left out.
    """
    keras = _require("keras")
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", {}) or {}
    found: dict[str, Any] = {}
    for depth in sorted(by_depth, reverse=True):  # the deepest nodes are the inputs
        for node in by_depth[depth]:
            layer = node.operation
            if _is_input_layer(layer) or len(node.outputs) != 1 or layer.name in found:
                continue
            found[layer.name] = node.outputs[0]
    probe = keras.Model(graph.inputs, [*graph.outputs, *found.values()])
    probe.layer_outputs = found
    return probe


def _producer(graph, tensor_name: str) -> str:
    """The tensor an output Identity copies: the layer's real output inside the traced graph."""
    op = graph.get_tensor_by_name(tensor_name).op
    while op.type == "Identity" and op.inputs:
        tensor_name = op.inputs[0].name
        op = op.inputs[0].op
    return tensor_name


def _name_layers(model: onnx.ModelProto, layer_tensors: dict[str, str], keras_shapes: dict, outputs: set) -> None:
    """Rename each surviving Keras layer output tensor to the layer name; record the mapping.

    tf2onnx may give a TF tensor's name to a channels-first or not yet squeezed intermediate
    (GlobalAveragePool before its Squeeze); the helper nodes it adds after it carry the TF
    node's name as a prefix, so the search follows them to the tensor shaped like Keras's.
    """
    produced = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output]}
    mapping: dict[str, str] = {}
    taken = set(produced) | {i.name for i in model.graph.input}
    for name, tensor in layer_tensors.items():
        if name in outputs:
            mapping[name] = "output"
            continue
        if tensor not in produced or (name in taken and name != tensor):
            mapping[name] = "fused"
            continue
        keras_shape = [None, *keras_shapes[name][1:]]
        chosen, layout = _layer_tensor(tensor, keras_shape, produced, consumers, shapes)
        ox.rename_tensor(model, chosen, name)
        mapping[name] = layout
        taken.add(name)
    ox.set_metadata(model, "zoo:layers", json.dumps(mapping))


def _layer_tensor(tensor, keras_shape, produced, consumers, shapes) -> tuple[str, str]:
    """The tensor (and its layout) that best stands for a Keras layer's output."""
    prefix = tensor.rsplit(":", 1)[0]
    candidates, frontier = [tensor], [tensor]
    for _ in range(3):  # helper chains are short: Transpose, Squeeze, Reshape
        frontier = [o for t in frontier for n in consumers.get(t, []) if n.name.startswith(prefix)
                    for o in n.output]
        candidates += frontier

    def same(shape) -> bool:
        return shape is not None and len(shape) == len(keras_shape) and all(
            a is None or b is None or a == b for a, b in zip(shape[1:], keras_shape[1:]))

    for candidate in candidates:
        if same(shapes.get(candidate)):
            return candidate, "same"
    if len(keras_shape) == 4:
        nchw = [None, keras_shape[3], keras_shape[1], keras_shape[2]]
        for candidate in candidates:
            shape = shapes.get(candidate)
            if shape is not None and len(shape) == 4 and all(
                    a is None or b is None or a == b for a, b in zip(shape[1:], nchw[1:])):
                return candidate, "NCHW"
    return tensor, "other"


# ---------------------------------------------------------------------------------------------
# frozen GraphDef


def frozen_graph_io(graph_def) -> tuple[list[str], list[str]]:
    """Default inputs (Placeholders) and outputs (nodes nobody consumes) of a frozen graph, as tensors."""
    skip = {"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert", "SaveV2", "RestoreV2",
            "VarHandleOp", "VariableV2", "Assign", "AssignVariableOp"}
    consumed = {i.lstrip("^").split(":")[0] for n in graph_def.node for i in n.input}
    inputs = [f"{n.name}:0" for n in graph_def.node if n.op == "Placeholder"]
    outputs = [f"{n.name}:0" for n in graph_def.node if n.name not in consumed and n.op not in skip]
    return inputs, outputs


def _read_graph_def(path: str):
    from google.protobuf.message import DecodeError

    tf = _quiet_tf()
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as fh:
            graph_def.ParseFromString(fh.read())
    except (DecodeError, RuntimeError) as exc:
        if _is_saved_model_proto(path):
            raise ModelFormatError(
                f"{path} is the saved_model.pb of a SavedModel, not a frozen GraphDef; "
                f"give the folder instead ({os.path.dirname(path) or '.'}) to convert it as a SavedModel"
            ) from None
        raise ModelFormatError(f"{path} is not a frozen TensorFlow GraphDef ({exc})") from None
    _expect(path, len(graph_def.node) > 0 and all(n.op for n in graph_def.node),
            "a frozen TensorFlow GraphDef (no graph nodes in it)",
            "a SavedModel is a folder; give the folder instead of its saved_model.pb")
    return graph_def


def _is_saved_model_proto(path: str) -> bool:
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as fh:
            proto.ParseFromString(fh.read())
    except (DecodeError, RuntimeError):
        return False
    return len(proto.meta_graphs) > 0


def convert_frozen_graph(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    nchw: bool = False,
    verify: bool = True,
    trust_model_code: bool = False,
) -> Conversion:
    """Convert a frozen GraphDef `.pb`; inputs default to its Placeholders, outputs to its sinks.

    The ops the outputs depend on are checked before anything runs unless `trust_model_code`.
    """
    start = time.perf_counter()
    tf = _quiet_tf()
    tf2onnx = _tf2onnx()
    path = os.fspath(path)
    graph_def = _read_graph_def(path)
    found_in, found_out = frozen_graph_io(graph_def)
    inputs = [_tensor(t) for t in (inputs or found_in)]
    outputs = [_tensor(t) for t in (outputs or found_out)]
    nodes = {n.name: n for n in graph_def.node}
    for tensor in [*inputs, *outputs]:
        if tensor.split(":")[0] not in nodes:
            raise ModelFormatError(
                f"tensor {tensor!r} is not in {path}; its placeholders are {', '.join(found_in) or 'none'} "
                f"and its unconsumed outputs {', '.join(found_out) or 'none'}"
            )
    if not inputs or not outputs:
        raise ModelFormatError(f"{path} has no Placeholder inputs or no outputs; name them with inputs=/outputs=")
    if not trust_model_code:
        from converters.model_code import check_graph_def

        check_graph_def(graph_def, os.path.basename(path), outputs=outputs)
    loaded = tf.Graph()
    try:  # TensorFlow's own checks of the graph, before tf2onnx reads it with fewer
        with loaded.as_default():
            tf.import_graph_def(graph_def, name="")
    except Exception as exc:  # noqa: BLE001  ValueError, TypeError, InvalidArgumentError...
        raise ModelFormatError(f"{path}: TensorFlow cannot load this GraphDef ({_first_line(exc)[:300]}); "
                               f"the file is corrupt or was not written as a frozen graph") from None
    report = _new_report("frozen_graph", [path], opset, nchw)
    specs = []
    for tensor in inputs:
        node = nodes[tensor.split(":")[0]]
        shape = node.attr["shape"].shape if "shape" in node.attr else None
        dims = [] if shape is None or shape.unknown_rank else _shape_list(shape)
        specs.append((tensor, dims, tf.as_dtype(node.attr["dtype"].type).as_numpy_dtype.__name__))
    feeds = _tf_feeds(specs)
    rename = {t: t.split(":")[0] if t.endswith(":0") else t.replace(":", "_") for t in [*inputs, *outputs]}
    nchw_inputs = [t for t, dims, _ in specs if nchw and len(dims) == 4]
    with tf.device("/cpu:0"):
        try:
            model, _ = tf2onnx.convert.from_graph_def(
                graph_def, name=os.path.basename(path), input_names=inputs, output_names=outputs,
                opset=opset, inputs_as_nchw=nchw_inputs or None, tensors_to_rename=rename,
            )
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            raise ConversionError(f"tf2onnx cannot convert {path}: {_first_line(exc)[:300]}") from None

    def reference() -> list[np.ndarray]:
        with tf.compat.v1.Session(graph=loaded, config=_session_config()) as sess:
            try:
                return sess.run(outputs, feeds)
            except Exception as exc:  # noqa: BLE001  tf.errors.* from running a corrupt graph
                raise ConversionError(f"TensorFlow cannot run {path} on inputs "
                                      f"{ {k: list(v.shape) for k, v in feeds.items()} }: "
                                      f"{_first_line(exc)[:300]}") from None

    onnx_feeds = _to_onnx_feeds(feeds, rename, nchw)
    report.notes.append(f"inputs {', '.join(inputs)}; outputs {', '.join(outputs)}")
    return _finish(model, report, start, verify, onnx_feeds, reference, f"tensorflow {tf.__version__} (session)")


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


# ---------------------------------------------------------------------------------------------
# TFLite


def convert_tflite(
    path: str | os.PathLike, *, opset: int = ox.DEFAULT_OPSET, nchw: bool = False, verify: bool = True,
    trust_model_code: bool = False,
) -> Conversion:
    """Convert a `.tflite` flatbuffer; the reference is TensorFlow's TFLite interpreter.

    The file is untrusted: its structure is checked first and the interpreter runs in a child
    process (see ``converters.tflite_check``), so a corrupt file is an error, never a crash.
    A quantized model (dynamic-range, full-integer with float or int8 in/out) is verified within a
    tolerance measured from its own quantization rather than at float tolerance: see
    ``converters.quantization``.
    """
    import warnings

    from converters.quantization import noise, quantization_kind, verify_quantized
    from converters.tflite_check import run_interpreter
    from zoo.tflite_structure import validate_tflite

    start = time.perf_counter()
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    _expect(path, head[4:8] == b"TFL3", "a TFLite flatbuffer (no TFL3 identifier)",
            "give a file written by tf.lite.TFLiteConverter")
    validate_tflite(path)
    if not trust_model_code:
        from converters.model_code import check_tflite

        check_tflite(path)  # Flex ops carry any TensorFlow op
    probe = run_interpreter(path)  # before tf2onnx, which builds an interpreter in this process
    _refuse_unconvertible_tflite(path, probe.get("ops") or [])
    tf = _quiet_tf()
    tf2onnx = _tf2onnx()
    feeds = probe["feeds"]
    report = _new_report("tflite", [path], opset, nchw)
    nchw_inputs = [d["name"] for d in probe["inputs"] if nchw and len(d["shape"]) == 4]
    with warnings.catch_warnings(), _builtin_form(path, probe.get("ops") or [], report) as source:
        warnings.simplefilter("ignore")
        try:
            model, _ = tf2onnx.convert.from_tflite(source, opset=opset, inputs_as_nchw=nchw_inputs or None)
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            raise ConversionError(f"tf2onnx cannot convert {path}: {_first_line(exc)[:300]}") from None

    from converters.tf_layout import name_fused_activations

    moved = name_fused_activations(model)  # a TFLite tensor name stands for its activated value
    if moved:
        report.notes.append(f"{moved} TFLite tensor names moved to the output of the activation fused into their op")

    def reference() -> list[np.ndarray]:
        by_name = probe["values"]
        if set(by_name) >= {o.name for o in model.graph.output}:
            return _in_onnx_order(model, by_name)
        return [by_name[o["name"]] for o in probe["outputs"]]

    onnx_feeds = _to_onnx_feeds(feeds, {}, nchw)
    reference_name = f"tflite interpreter ({tf.__version__}, child process)"
    conversion = _finish(model, report, start, verify, onnx_feeds, reference, reference_name)
    if verify and conversion.report.verified is False and not probe["quantized"] \
            and not quantization_kind(conversion.model):
        _within_kernel_spread(conversion, path, probe, onnx_feeds, reference())
    if verify and conversion.report.outputs and quantization_kind(conversion.model):
        feeds, expected = fixed_rows(conversion.model, onnx_feeds, reference())
        _, converted = ox.run(conversion.model, feeds)
        steps = [o.get("quantization_scale") for o in probe["outputs"]]
        verify_quantized(conversion.report, expected, converted, steps, noise(conversion.model, feeds),
                         quantization_kind(conversion.model))
    conversion.report.seconds = time.perf_counter() - start
    return conversion


# A float conversion may differ from the interpreter by this many times as much as TFLite's own two
# kernel sets (XNNPACK and the reference kernels) differ from each other on the same inputs.
KERNEL_SPREAD_FACTOR = 2.0


def _within_kernel_spread(conversion: Conversion, path: str, probe: dict, feeds: dict, expected: list) -> None:
    """Judge a float model that missed the float tolerance by how far TFLite disagrees with itself.

    Deep nets (with float16 weights, many layers) accumulate rounding: TFLite's XNNPACK and
    reference kernels can differ by more than 1e-4 of the output's scale on the same input, and
    no conversion can be held closer than the source is to itself. The interpreter runs again
    with its reference kernels (a child process, as before); each output may then differ by
    KERNEL_SPREAD_FACTOR times that spread. Nothing changes when the spread cannot be measured.
    """
    import numpy as np

    from converters.tflite_check import run_interpreter

    report = conversion.report
    try:
        other = run_interpreter(path, kernels="reference")
    except ModelFormatError:  # ops only the delegate runs (MediaPipe's custom ops): no spread to measure
        return
    by_name = {o["name"]: other["values"][o["name"]] for o in other["outputs"]}
    names = [o["name"] for o in probe["outputs"]]
    if len(names) != len(report.outputs) or set(names) != set(by_name):
        return
    rows = len(next(iter(feeds.values()))) if feeds else 0
    verified, loosest, spreads = True, report.tolerance, []
    for diff, name, first in zip(report.outputs, names, expected):
        second = by_name[name][: len(first)] if rows else by_name[name]
        spread = float(np.max(np.abs(np.asarray(first, np.float64) - np.asarray(second, np.float64)))) \
            if np.size(first) else 0.0
        allowed = max(report.tolerance * diff.scale, KERNEL_SPREAD_FACTOR * spread)
        verified &= not diff.problem and diff.max_abs <= allowed
        loosest = max(loosest, allowed / diff.scale)
        spreads.append(f"{diff.name}: {diff.max_abs:.3g} of {allowed:.3g} allowed (TFLite's XNNPACK and reference "
                       f"kernels differ by {spread:.3g})")
    if verified:
        report.verified, report.tolerance = True, loosest
        report.notes.append(f"float model checked against TFLite's own kernel spread ({KERNEL_SPREAD_FACTOR:g} x the "
                            f"difference between its XNNPACK and reference kernels): " + "; ".join(spreads))


@contextlib.contextmanager
def _builtin_form(path: str, ops: Sequence[str], report: ConversionReport):
    """The file tf2onnx reads: `path`, or a temporary copy with sparse weights made dense and disguised
    built-ins made built-in again (converters.tflite_rewrite); the reference still runs the original."""
    import tempfile

    from converters.tflite_rewrite import custom_ops_to_rewrite, rewrite_custom_ops

    found = custom_ops_to_rewrite(list(ops))
    if not found:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="zoo-tflite-") as folder:
        copy = os.path.join(folder, os.path.basename(path))
        try:
            count = rewrite_custom_ops(path, copy)
        except (ValueError, KeyError) as exc:
            raise UnsupportedLayerError(
                f"{path} stores weights sparse in a form zoo cannot expand ({exc}: TFLite DENSIFY with a block "
                f"map), which tf2onnx cannot read either; convert the dense model it was made from") from None
        report.notes.append(f"{count} TFLite op(s) ({', '.join(found)}) rewritten for tf2onnx: sparse weights made "
                            f"dense, disguised built-ins made built-in (the check runs the original file)")
        yield copy


# TFLite resource-variable ops; written ones keep state between calls (a streaming model's ring
# buffers), which ONNX graphs cannot hold.
_RESOURCE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")


def _refuse_unconvertible_tflite(path: str, ops: Sequence[str]) -> None:
    """Say precisely why a model whose op kinds nothing converts is refused (a streaming model's state)."""
    stateful = [op for op in _RESOURCE_OPS if op in ops]
    if "ASSIGN_VARIABLE" in ops:  # variables only read (VAR_HANDLE, READ_VARIABLE) are constants tf2onnx takes
        raise UnsupportedLayerError(
            f"{path} keeps state between calls in TFLite resource variables ({', '.join(stateful)}): it is a "
            f"streaming model, and neither tf2onnx nor a stateless ONNX graph can hold that state; convert "
            f"the non-streaming model it was made from")


# ---------------------------------------------------------------------------------------------
# dispatch


def check_file(path: str | os.PathLike, *, format: str | None = None, **_options: Any) -> None:
    """The checks of `convert` that need no TensorFlow (a TFLite file's structure), for the caller's process.

    `zoo.convert` runs them before it starts the sandboxed converter, so a corrupt file is refused
    without paying TensorFlow's import.
    """
    if (format or detect_format(path)) == "tflite":
        from zoo.tflite_structure import validate_tflite

        with open(path, "rb") as fh:
            head = fh.read(8)
        _expect(os.fspath(path), head[4:8] == b"TFL3", "a TFLite flatbuffer (no TFL3 identifier)",
                "give a file written by tf.lite.TFLiteConverter")
        validate_tflite(path)


def convert(path: str | os.PathLike, *, format: str | None = None, **options: Any) -> Conversion:
    """Convert any TensorFlow model file; `format` is detected from the content when not given."""
    fmt = format or detect_format(path)
    converters = {
        "saved_model": convert_saved_model,
        "keras": convert_keras,
        "frozen_graph": convert_frozen_graph,
        "tflite": convert_tflite,
    }
    if fmt not in converters:
        raise ModelFormatError(f"unknown TensorFlow format {fmt!r}; one of {', '.join(converters)}")
    return converters[fmt](path, **options)


__all__ = [
    "check_file",
    "convert",
    "convert_frozen_graph",
    "convert_keras",
    "convert_keras_model",
    "convert_saved_model",
    "convert_tflite",
    "detect_format",
    "frozen_graph_io",
    "is_weights_only",
    "load_keras",
    "saved_model_signatures",
]
