"""TFLite constructs tf2onnx cannot read, rewritten as ones it can: the converted copy is checked against the original.

Sparse weights: a TFLite converter may store a weight tensor sparse (a CSR-like format over its
dimensions) and expand it at run time with a DENSIFY op. tf2onnx reads every weight as dense and
fails ("cannot reshape array of size 96 into shape (16,1,1,24)"). `densify` expands the values
the way TFLite's own FormatConverter does (dense levels enumerate, sparse levels walk their
segments and indices), and the rewritten copy feeds the dense tensor straight to the ops that
read the DENSIFY's output.

Custom ops that are built-in ops in disguise:

MediaPipe's segmentation models use ``Convolution2DTransposeBias``, a custom op the TFLite
interpreter ships (so the model runs) but tf2onnx does not know. It is TRANSPOSE_CONV with its bias
fused, whose parameters sit in the custom options as a C struct (padding, stride_w, stride_h;
MediaPipe's ``TfLiteTransposeConvParams``). `rewrite_custom_ops` writes a copy of the model where
each one is the built-in TRANSPOSE_CONV (version 3, which takes a bias) with an output-shape
input; the converter converts the copy and verifies the result against the interpreter running
the original file, so a wrong rewrite cannot pass unnoticed.
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Op kinds (as the interpreter names them) `rewrite` removes.
DENSIFY = "DENSIFY"
# Custom op name -> what it becomes.
REWRITTEN = {"Convolution2DTransposeBias": "TRANSPOSE_CONV"}
_PADDING = {1: "SAME", 2: "VALID"}  # TfLitePadding: 0 unknown, 1 same, 2 valid


def custom_ops_to_rewrite(ops: list[str]) -> list[str]:
    """The op kinds among `ops` (as the interpreter names them) that `rewrite_custom_ops` handles."""
    return [op for op in ops if op in REWRITTEN or op == DENSIFY]


def densify(values, shape: list[int], traversal: list[int], levels: list[tuple]) -> "np.ndarray":
    """The dense tensor of a TFLite sparse one: `values` in storage order; `levels` per stored dimension
    (``("dense", size)`` or ``("sparse", segments, indices)``), in `traversal` order; no blocks."""
    import numpy as np

    dense = np.zeros(int(np.prod(shape)), values.dtype)
    strides = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]
    offsets = np.zeros(1, np.int64)  # the flat position each path so far has reached
    parents = np.zeros(1, np.int64)  # its position in the previous level (for the segments)
    for level, kind in enumerate(levels):
        stride = strides[traversal[level]]
        if kind[0] == "dense":
            size = kind[1]
            offsets = (offsets[:, None] + np.arange(size) * stride).reshape(-1)
            parents = (parents[:, None] * size + np.arange(size)).reshape(-1)
        else:
            segments, indices = np.asarray(kind[1], np.int64), np.asarray(kind[2], np.int64)
            counts = segments[parents + 1] - segments[parents]
            children = np.concatenate([np.arange(a, b) for a, b in zip(segments[parents], segments[parents + 1])]) \
                if len(parents) else np.zeros(0, np.int64)
            offsets = np.repeat(offsets, counts) + indices[children] * stride
            parents = children
    if len(offsets) != values.size:
        raise ValueError(f"sparse tensor holds {values.size} values for {len(offsets)} positions")
    dense[offsets] = values.reshape(-1)
    return dense.reshape(shape)


def rewrite_custom_ops(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write `path` to `out` with each Convolution2DTransposeBias as a TRANSPOSE_CONV; how many were rewritten."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(os.fspath(path))
    count = _densify_all(model)
    custom = {i for i, code in enumerate(model.operatorCodes) if code.customCode == b"Convolution2DTransposeBias"}
    if not custom:
        if count:
            flatbuffer_utils.write_model(model, os.fspath(out))
        return count
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.TRANSPOSE_CONV
    code.version = 3  # the version whose fourth input is the bias
    model.operatorCodes.append(code)
    index = len(model.operatorCodes) - 1
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.opcodeIndex not in custom:
                continue
            padding, stride_w, stride_h = struct.unpack("<iii", bytes(op.customOptions)[:12])
            if padding not in _PADDING:
                raise ValueError(f"Convolution2DTransposeBias with padding {padding}")
            shape = np.asarray(graph.tensors[op.outputs[0]].shape, np.int32)
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(shape.tobytes(), np.uint8)
            model.buffers.append(buffer)
            tensor = schema.TensorT()
            tensor.shape = np.asarray([len(shape)], np.int32)
            tensor.type = schema.TensorType.INT32
            tensor.buffer = len(model.buffers) - 1
            tensor.name = graph.tensors[op.outputs[0]].name + b"/output_shape"
            graph.tensors.append(tensor)
            options = schema.TransposeConvOptionsT()
            options.padding = getattr(schema.Padding, _PADDING[padding])
            options.strideW, options.strideH = stride_w, stride_h
            # Custom: (input, weights, bias); TRANSPOSE_CONV: (output shape, weights, input, bias).
            op.inputs = np.asarray([len(graph.tensors) - 1, op.inputs[1], op.inputs[0], op.inputs[2]], np.int32)
            op.opcodeIndex = index
            op.builtinOptionsType = schema.BuiltinOptions.TransposeConvOptions
            op.builtinOptions = options
            op.customOptions = None
            count += 1
    flatbuffer_utils.write_model(model, os.fspath(out))
    return count


_TFLITE_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}


def _densify_all(model) -> int:
    """Make every DENSIFY op's sparse input dense in place, its readers read it, the op gone; how many."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    densify_codes = {i for i, code in enumerate(model.operatorCodes)
                     if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DENSIFY}
    if not densify_codes:
        return 0
    count = 0
    for graph in model.subgraphs:
        keep = []
        for op in graph.operators:
            if op.opcodeIndex not in densify_codes:
                keep.append(op)
                continue
            source, target = int(op.inputs[0]), int(op.outputs[0])
            tensor = graph.tensors[source]
            sparsity = tensor.sparsity
            if sparsity is None or (sparsity.blockMap is not None and len(sparsity.blockMap)):
                raise ValueError("block-sparse weights")
            dtype = np.dtype(_TFLITE_DTYPES[tensor.type])
            values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype)
            levels = []
            for dim in sparsity.dimMetadata:
                if dim.format == schema.DimensionType.DENSE:
                    levels.append(("dense", int(dim.denseSize)))
                else:
                    levels.append(("sparse", list(dim.arraySegments.values), list(dim.arrayIndices.values)))
            dense = densify(values, [int(d) for d in tensor.shape], [int(t) for t in sparsity.traversalOrder], levels)
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(dense.tobytes(), np.uint8)
            model.buffers.append(buffer)
            tensor.buffer, tensor.sparsity = len(model.buffers) - 1, None
            for other in graph.operators:  # the readers of the DENSIFY's output read the dense tensor
                if other.inputs is not None:
                    other.inputs = np.asarray([source if i == target else i for i in other.inputs], np.int32)
            graph.outputs = np.asarray([source if i == target else i for i in graph.outputs], np.int32)
            count += 1
        graph.operators = keep
    return count


__all__ = ["DENSIFY", "REWRITTEN", "custom_ops_to_rewrite", "densify", "rewrite_custom_ops"]
