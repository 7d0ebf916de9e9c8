"""TFLite custom ops that are built-in ops in disguise, rewritten as those ops so tf2onnx can convert them.

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

# Custom op name -> what it becomes.
REWRITTEN = {"Convolution2DTransposeBias": "TRANSPOSE_CONV"}
_PADDING = {1: "SAME", 2: "VALID"}  # TfLitePadding: 0 unknown, 1 same, 2 valid


def custom_ops_to_rewrite(ops: list[str]) -> list[str]:
    """The custom ops among `ops` (as the interpreter names them) that `rewrite_custom_ops` handles."""
    return [op for op in ops if op in REWRITTEN]


def rewrite_custom_ops(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write `path` to `out` with each Convolution2DTransposeBias as a TRANSPOSE_CONV; how many were rewritten."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(os.fspath(path))
    custom = {i for i, code in enumerate(model.operatorCodes) if code.customCode == b"Convolution2DTransposeBias"}
    if not custom:
        return 0
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.TRANSPOSE_CONV
    code.version = 3  # the version whose fourth input is the bias
    model.operatorCodes.append(code)
    index = len(model.operatorCodes) - 1
    count = 0
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


__all__ = ["REWRITTEN", "custom_ops_to_rewrite", "rewrite_custom_ops"]
