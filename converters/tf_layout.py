"""TensorFlow's tensors in a tf2onnx graph: the values their names promise, in TensorFlow's own NHWC layout.

Names: a TFLite op with a fused activation (CONV_2D with RELU6) writes the activated value to its
output tensor, but tf2onnx gives that tensor's name to the ONNX Conv and adds the activation after
it as a node of its own ("Relu6__51"). A cut at the TFLite name would then return the values
before the activation; `name_fused_activations` moves the name to the activation's output.

Layouts: which 4-D tensors are channels-first, so a cut hands them back in NHWC.

TensorFlow and TFLite compute images channels-last (NHWC); ONNX convolutions and pools are
channels-first. tf2onnx wraps each such op in Transposes, then its optimizer pushes them through
the element-wise ops between two convolutions, so the tensor that keeps a TFLite or TF name
("re_lu_16", "model/block3/add") often holds NCHW data. Its shape alone cannot always tell
(24 x 24 x 24), but the graph can: a tensor is channels-first when the path that made it, through
ops that do not care about the layout, starts at a Conv, a pool, or a Transpose to NCHW; it is
channels-last when it starts at a Transpose to NHWC or at a graph input. The result goes into the
model's ``zoo:layers`` metadata, which `zoo.graph.cut` reads to transpose a cut there back to NHWC
(as it does for Keras layers).
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# ONNX ops whose output is channels-first by definition.
_CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                   "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
                   "DepthToSpace", "SpaceToDepth", "MaxUnpool", "QLinearConv", "ConvInteger"}
# Ops whose output has the layout of their first data input (element-wise, casts, quantization, padding).
_FOLLOWS = {"Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
            "Softplus", "Softsign", "Mish", "Gelu", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum",
            "Mean", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Cast",
            "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear", "Pad", "Concat", "Slice", "Split",
            "Where", "Not", "Sign"}
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def channels_first_tensors(model: onnx.ModelProto) -> set[str]:
    """The 4-D data tensors of `model` that hold channels-first values (see the module docstring)."""
    from zoo.graph import GraphInfo

    info = GraphInfo(model)
    layout: dict[str, str | None] = {name: "NHWC" for name in info.inputs}

    def first_data(node) -> str | None:
        return next((x for x in node.input if x and x in info.data and _rank(info, x) == 4), None)

    for node in info.nodes:
        kind = node.op_type
        if kind in _CHANNELS_FIRST:
            result = "NCHW"
        elif kind == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            result = "NCHW" if perm == _TO_NCHW else "NHWC" if perm == _TO_NHWC else None
        elif kind in _FOLLOWS:
            source = first_data(node)
            result = layout.get(source) if source is not None else None
        else:
            result = None
        for out in node.output:
            if out and out in info.data and _rank(info, out) == 4:
                layout[out] = result
    return {name for name, kind in layout.items() if kind == "NCHW" and name not in info.inputs}


# Activation nodes tf2onnx adds after an op with a fused activation, named "<Op>__<n>".
_FUSED = re.compile(r"^(Clip|Relu|Relu6|LeakyRelu|Tanh|Sigmoid|Elu|HardSigmoid|HardSwish|Gelu|PRelu)__\d+$")


def name_fused_activations(model: onnx.ModelProto) -> int:
    """Give a TFLite op's tensor name to the output of the activation fused into it; how many moved."""
    from converters.onnx_model import rename_tensor

    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    moved = 0
    for node in list(model.graph.node):
        if len(node.output) != 1 or node.output[0] != node.name or node.name in outputs:
            continue
        readers = consumers.get(node.name, [])
        if len(readers) != 1 or not _FUSED.match(readers[0].name) or readers[0].input[0] != node.name:
            continue
        activation = readers[0]
        before, after = node.name, activation.output[0]
        if after in outputs:
            continue
        rename_tensor(model, before, f"{before}/before_activation")
        rename_tensor(model, after, before)
        # The nodes too: both then group into the TFLite op's layer, the activation last.
        node.name, activation.name = f"{before}/before_activation", before
        moved += 1
    return moved


def _rank(info, name: str) -> int | None:
    shape = info.shape(name)
    return None if shape is None else len(shape)


def mark_channels_first(model: onnx.ModelProto) -> int:
    """Record the channels-first tensors in ``zoo:layers`` (entries already there are kept); how many."""
    from converters.onnx_model import set_metadata

    mapping = {}
    for prop in model.metadata_props:
        if prop.key == "zoo:layers":
            mapping = json.loads(prop.value)
    found = channels_first_tensors(model)
    graph_outputs = {o.name for o in model.graph.output}
    for name in sorted(found - graph_outputs):  # a model output keeps the layout the source gives it
        mapping.setdefault(name, "NCHW")
    if found:
        set_metadata(model, "zoo:layers", json.dumps(mapping))
    return len(found)


__all__ = ["channels_first_tensors", "mark_channels_first", "name_fused_activations"]
