"""Caffe prototxt + caffemodel -> ONNX, without Caffe installed, checked against OpenCV's Caffe importer."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from zoo.atomic import atomic_open
from zoo.errors import ConversionError
from zoo.hashes import file_sha256

from .layers import SUPPORTED_LAYERS, BlobSpec, build_graph, check_supported
from .parse import Net, read_mean, read_prototxt, read_weights

if TYPE_CHECKING:
    import numpy as np

    from converters.report import Conversion

__all__ = [
    "SUPPORTED_LAYERS", "DEFAULT_OPSET", "MIN_OPSET", "convert", "input_spec", "make_random_caffemodel",
    "write_caffemodel",
]

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax with a single axis, Split sizes as an input


def convert(
    path: str | os.PathLike,
    caffemodel: str | os.PathLike | None = None,
    *,
    prototxt: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    mean_file: str | os.PathLike | None = None,
    verify: bool = True,
) -> Conversion:
    """Convert a Caffe deploy net and its weights to ONNX (NCHW input, dynamic batch axis).

    `path` is the deploy prototxt (its weights `caffemodel`) or the caffemodel (its net `prototxt`);
    the other half, when not given, is the file beside it that `zoo add` would pair it with.

    With ``verify`` and OpenCV installed, the ONNX model (run by onnxruntime) is compared with
    ``cv2.dnn.readNetFromCaffe`` on a fixed random input; ``report.verified`` says whether every net
    output is within ``report.tolerance`` x its scale. Without OpenCV, ``verified`` is None.

    ONNX tensors are named after Caffe layers, so the model can be cut at ``pool5`` or ``fc7``; the
    rule (in-place chains, several tops) is at the top of `converters/caffe/layers.py`.

    Raises UnsupportedLayerError (a layer type zoo cannot convert), ConversionError (weights that do not
    fit the prototxt, bad layer parameters), ModelFormatError (unreadable files).

    Example::

        conversion = convert("deploy.prototxt", "bvlc_alexnet.caffemodel")
        conversion.report.verified, conversion.report.max_rel
        conversion.save("bvlc_alexnet.onnx")
    """
    from converters.report import Conversion, ConversionReport

    start = time.perf_counter()
    prototxt, caffemodel = _pair(path, caffemodel, prototxt)
    _check_opset(opset)
    net = read_prototxt(prototxt)
    check_supported(net)  # before reading a caffemodel that may be hundreds of megabytes
    weights = read_weights(caffemodel)
    model, producers = build_graph(net, opset, _StoredBlobs(weights, caffemodel))
    import onnx

    onnx.checker.check_model(model)
    _check_memory(model, prototxt)
    files = [prototxt, caffemodel] + ([os.fspath(mean_file)] if mean_file is not None else [])
    report = ConversionReport(
        source_format="caffe",
        source_files={path: file_sha256(path) for path in files},
        converter="converters.caffe",
        versions=_versions(),
        opset=opset,
        input_layout=_layout(next(iter(net.inputs.values()))),
    )
    spec = _input_spec(net, mean_file)
    report.notes.append(
        f"input '{spec['name']}': shape {spec['shape']} (batch dynamic), {spec.get('channel_order', 'no')} "
        f"channel order, pixel range {spec['pixel_range']}"
        + (f", per-channel mean {[round(m, 4) for m in spec['mean']]} from {os.path.basename(files[-1])}"
           if "mean" in spec else "")
    )
    if net.v1:
        report.notes.append("prototxt uses the old V1 `layers {}` format; upgraded while reading")
    batch_stats = [layer.name for layer in net.layers
                   if layer.type == "BatchNorm" and layer.batch_norm_param.HasField("use_global_stats")
                   and not layer.batch_norm_param.use_global_stats]
    if batch_stats:
        report.notes.append(
            f"BatchNorm {', '.join(batch_stats)} set use_global_stats: false, a training setting under which "
            "Caffe normalizes each batch by its own statistics; the ONNX model uses the stored ones (as OpenCV)"
        )
    if verify:
        from .opencv_check import verify_report

        verify_report(model, producers, prototxt, caffemodel, net, report)
    report.seconds = round(time.perf_counter() - start, 3)
    return Conversion(model, report)


def _check_memory(model, prototxt: str) -> None:
    """Refuse a net whose blobs would not fit in memory (a 1x3x100000x100000 input), before OpenCV or
    onnxruntime allocate them."""
    from zoo.graph import GraphInfo
    from zoo.memory import check_shapes

    types = GraphInfo(model).types
    check_shapes(((name, *entry) for name, entry in types.items()), os.path.basename(prototxt), model, batch=1)


def _pair(path: str | os.PathLike, caffemodel: str | os.PathLike | None,
          prototxt: str | os.PathLike | None) -> tuple[str, str]:
    """(prototxt, caffemodel) from `path` and whichever half was given, or the pair found beside `path`."""
    if caffemodel is not None:
        return os.fspath(path), os.fspath(caffemodel)
    if prototxt is not None:
        return os.fspath(prototxt), os.fspath(path)
    if not os.path.exists(path):
        return os.fspath(path), ""  # reading it says the file is missing
    from zoo.errors import ModelFormatError
    from zoo.formats import detect_format

    try:
        info = detect_format(path)
    except ModelFormatError:
        info = None
    if info is None or info.format != "caffe":
        raise ConversionError(
            f"{os.fspath(path)}: converting needs the .caffemodel weights as well as the prototxt; "
            "pass caffemodel=..., or write random weights with make_random_caffemodel(prototxt, path)"
        )
    return os.fspath(info.files["graph"]), os.fspath(info.files["weights"])


def input_spec(prototxt: str | os.PathLike, mean_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """How to feed the net, as ``zoo.records.InputSpec.to_dict()``: name, shape (None = batch), dtype,
    layout, mean (per channel, from a .binaryproto mean file), channel_order "BGR", pixel_range [0, 255].
    """
    return _input_spec(read_prototxt(prototxt), mean_file)


def make_random_caffemodel(prototxt: str | os.PathLike, path: str | os.PathLike, seed: int = 0) -> None:
    """Write a .caffemodel with random weights shaped for `prototxt` (for tests and demos).

    Weights keep activations of the input's order through deep nets: He-scaled convolution and
    inner-product weights, BatchNorm variances in [0.5, 1.5] stored with a random positive scale factor, Scale
    factors in [0.3, 0.7] so residual sums do not grow block after block.
    """
    import numpy as np

    net = read_prototxt(prototxt)
    source = _RandomBlobs(np.random.default_rng(seed))
    build_graph(net, DEFAULT_OPSET, source, store_weights=False)
    write_caffemodel(path, net.name, source.layers)


def write_caffemodel(path: str | os.PathLike, name: str, layers: list[tuple[str, str, list]]) -> None:
    """Write (layer name, layer type, [float32 arrays]) as a binary NetParameter, atomically.

    The weights are streamed straight from the arrays into the file (packed floats, as Caffe writes
    them) instead of being copied into a protobuf message first.
    """
    import numpy as np

    from . import schema

    m = schema.raw_messages()
    chunks: list = [m.NetParameter(name=name).SerializeToString()]
    for layer_name, layer_type, arrays in layers:
        parts: list = [m.LayerParameter(name=layer_name, type=layer_type).SerializeToString()]
        for array in arrays:
            data = np.ascontiguousarray(array, dtype="<f4")
            shape = m.BlobProto(shape=m.BlobShape(dim=[int(d) for d in data.shape])).SerializeToString()
            blob = [shape, _key(5), _varint(data.nbytes), memoryview(data).cast("B")]
            parts += [_key(7), _varint(sum(len(c) for c in blob)), *blob]
        chunks += [_key(100), _varint(sum(len(c) for c in parts)), *parts]
    _write_atomic(path, chunks)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint(number << 3 | 2)  # a length-delimited field


def _write_atomic(path: str | os.PathLike, chunks: list) -> None:
    with atomic_open(os.path.abspath(path)) as handle:
        for chunk in chunks:
            handle.write(chunk)


class _StoredBlobs:
    """Weights from a caffemodel, checked against the shapes the prototxt implies."""

    def __init__(self, weights: dict, path: str) -> None:
        self.weights = weights
        self.path = path

    def __call__(self, layer, specs: list[BlobSpec]) -> list[np.ndarray]:
        import numpy as np

        from .parse import blob_array

        file = os.path.basename(self.path)
        wanted = ", ".join(f"{s.role} {s.shape}" for s in specs)
        blobs = self.weights.get(layer.name)
        if blobs is None and len(layer.blobs):  # weights written inline in the prototxt
            blobs = [blob_array(b, f"layer '{layer.name}'") for b in layer.blobs]
        if blobs is None:
            raise ConversionError(
                f"layer '{layer.name}' ({layer.type}) has no weights in {file}; the prototxt needs {wanted}. "
                "Is this the caffemodel of this prototxt?"
            )
        if len(blobs) != len(specs):
            raise ConversionError(
                f"layer '{layer.name}' ({layer.type}) has {len(blobs)} blobs in {file} of shapes "
                f"{[list(b.shape) for b in blobs]}; the prototxt needs {len(specs)}: {wanted}"
            )
        arrays = []
        for i, (blob, spec) in enumerate(zip(blobs, specs)):
            got = list(blob.shape)
            if not _same_shape(got, spec.shape):
                raise ConversionError(
                    f"layer '{layer.name}' ({layer.type}) blob {i} ({spec.role}) has shape {got} in {file}; "
                    f"the prototxt needs {spec.shape}"
                )
            arrays.append(np.asarray(blob, dtype=np.float32).reshape(spec.shape))
        return arrays


def _same_shape(got: list[int], want: list[int]) -> bool:
    # Caffe's legacy 4-D blobs index from the end ((1, 1, M, N) for an M x N matrix) and Caffe compares
    # them without leading ones (Blob::ShapeEquals). zoo does so for every blob: third-party writers
    # also store (1, C, 1, 1) where Caffe would write (C,), and the values are laid out the same.
    def strip(shape: list[int]) -> list[int]:
        shape = list(shape)
        while shape and shape[0] == 1:
            shape.pop(0)
        return shape

    return got == want or strip(got) == strip(want)


class _RandomBlobs:
    """Random weights for any layer, recorded so they can be written as a caffemodel."""

    def __init__(self, rng) -> None:
        self.rng = rng
        self.layers: list[tuple[str, str, list]] = []
        self._factor = 1.0

    def __call__(self, layer, specs: list[BlobSpec]) -> list[np.ndarray]:
        arrays = [self._make(spec).astype("float32", copy=False) for spec in specs]
        self.layers.append((layer.name, layer.type, arrays))
        return arrays

    def _make(self, spec: BlobSpec):
        import numpy as np

        rng, shape = self.rng, spec.shape
        if spec.role == "weights":
            # He scaling: uniform on [-a, a] with variance 2 / fan_in (uniform draws are 3x faster than
            # normal ones, which matters for AlexNet's 60M weights).
            bound = np.float32(np.sqrt(3.0 * 2.0 / max(spec.fan_in, 1.0)))
            weights = rng.random(shape, dtype=np.float32)
            weights *= 2 * bound
            weights -= bound
            return weights
        if spec.role == "bias":
            return rng.standard_normal(shape) * 0.1
        if spec.role == "mean":
            # BatchNorm blobs are [mean, variance, factor] with the statistics multiplied by the factor.
            self._factor = float(rng.uniform(0.5, 2.0))
            return rng.standard_normal(shape) * 0.1 * self._factor
        if spec.role == "variance":
            return rng.uniform(0.5, 1.5, shape) * self._factor
        if spec.role == "scale_factor":
            return np.full(shape, self._factor)
        if spec.role == "scale":
            return rng.uniform(0.3, 0.7, shape)
        if spec.role == "slope":
            return rng.uniform(0.05, 0.5, shape)
        return rng.standard_normal(shape) * 0.1


def _input_spec(net: Net, mean_file: str | os.PathLike | None) -> dict[str, Any]:
    from zoo.records import InputSpec

    name, shape = next(iter(net.inputs.items()))
    spec = InputSpec(
        name=name,
        shape=[None, *shape[1:]],
        dtype="float32",
        layout=_layout(shape),
        channel_order="BGR" if len(shape) == 4 and shape[1] == 3 else None,
        pixel_range=[0, 255],
    )
    if mean_file is not None:
        mean = read_mean(mean_file)
        if len(shape) > 1 and mean.shape[0] != shape[1]:
            raise ConversionError(
                f"mean file {os.path.basename(os.fspath(mean_file))} has {mean.shape[0]} channels; "
                f"input '{name}' has {shape[1]} (shape {shape}). Is it the mean file of this model?"
            )
        spec.mean = [float(v) for v in mean.reshape(mean.shape[0], -1).mean(axis=1)]
    return spec.to_dict()


def _layout(shape: list[int]) -> str:
    return {4: "NCHW", 2: "NC"}.get(len(shape), "other")


def _check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConversionError(
            f"opset {opset!r} is not supported; choose {MIN_OPSET}..{newest} (default {DEFAULT_OPSET})"
        )


def _versions() -> dict[str, str]:
    import google.protobuf
    import numpy
    import onnx

    return {"onnx": onnx.__version__, "protobuf": google.protobuf.__version__, "numpy": numpy.__version__}
