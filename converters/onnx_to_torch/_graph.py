"""Read an ONNX model once into plain nodes: decoded attributes, parsed subgraphs, constants, types."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from converters.onnx_to_torch._dtypes import ONNX_DTYPES, to_tensor
from zoo.errors import ModelFormatError

if TYPE_CHECKING:
    import onnx

_MISSING = object()


@dataclass(eq=False)
class Node:
    """One ONNX node: attributes as Python values (tensors as numpy), subgraphs parsed, the opset."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    domain: str = ""
    subgraphs: dict[str, Graph] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def n_outputs(self) -> int:
        """How many outputs the node has, counting omitted ones before the last given one."""
        return len(self.outputs)


@dataclass(eq=False)
class LayerSpec:
    """The weights of one source layer: its nodes and which constants are parameters (by role).

    `name` is the main node's ONNX name (OnnxModule.layers lists it), `layer_name` the layer
    `zoo layers` shows it under; `params` and `buffers` map a role ("weight", "bias",
    "running_mean") to the constant's name.
    """

    name: str
    layer_name: str
    op_type: str
    nodes: list[str]
    params: dict[str, str] = field(default_factory=dict)
    buffers: dict[str, str] = field(default_factory=dict)
    block: int = -1  # index into Graph.blocks


@dataclass(eq=False)
class Block:
    """A unit of fine-tuning: a conv/linear layer with its BatchNorm/Scale/activation (or a lone norm)."""

    name: str  # the zoo layer name of its main layer
    layers: list[int]  # indices into Graph.layers


@dataclass(eq=False)
class Graph:
    """A parsed ONNX graph (or subgraph). Passes (converters.onnx_to_torch._passes) rewrite it."""

    nodes: list[Node]
    inputs: list[str]  # run-time inputs: graph inputs that are not initializers
    outputs: list[str]
    constants: dict[str, torch.Tensor]  # initializers, then everything constant folding computes
    opset: int
    input_dtypes: dict[str, torch.dtype | None] = field(default_factory=dict)  # declared
    input_shapes: dict[str, list[int | str | None] | None] = field(default_factory=dict)  # declared
    kinds: dict[str, str] = field(default_factory=dict)  # input/output -> "sequence" / "optional"
    types: dict[str, tuple[int, list | None]] = field(default_factory=dict)  # inferred (elem type, dims)
    layer_names: dict[str, str] = field(default_factory=dict)  # node name -> its layer in `zoo layers`
    layer_outputs: dict[str, str] = field(default_factory=dict)  # zoo layer name -> its output tensor
    cut_points: list[str] = field(default_factory=list)  # zoo layer names that are cut points
    outer: list[str] = field(default_factory=list)  # names a subgraph reads from enclosing graphs
    layers: list[LayerSpec] = field(default_factory=list)
    weights: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)  # (node, input) -> layer, role
    blocks: list[Block] = field(default_factory=list)
    opaque: dict[str, str] = field(default_factory=dict)  # constants torch cannot hold (strings) -> why

    def dtype(self, name: str) -> torch.dtype | None:
        """The element type of tensor `name` when known (constants, declared inputs, shape inference)."""
        if name in self.constants:
            return self.constants[name].dtype
        if name in self.input_dtypes:
            return self.input_dtypes[name]
        entry = self.types.get(name)
        return ONNX_DTYPES.get(entry[0]) if entry else None

    def shape(self, name: str) -> list | None:
        if name in self.constants:
            return list(self.constants[name].shape)
        entry = self.types.get(name)
        return entry[1] if entry else None


def load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A ModelProto from a path (ModelFormatError for a missing or unreadable file) or as given."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelFormatError(f"ONNX model {str(path)!r} does not exist; pass a .onnx file path or a ModelProto")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{str(path)!r} is not a readable ONNX model ({exc}); "
                               f"check the file or re-convert it") from None


def parse(proto: onnx.ModelProto) -> Graph:
    """The main graph of `proto`, with layer names and inferred element types for the passes."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    functions = {(f.domain, f.name): f for f in proto.functions}
    graph = _parse_graph(proto.graph, opset, functions, scope=set())
    _add_layer_names(proto, graph)
    return graph


def _add_layer_names(proto: onnx.ModelProto, graph: Graph) -> None:
    """Layer names and cut points as `zoo layers` lists them, and shape inference's element types."""
    try:
        from zoo.graph import GraphInfo, list_layers

        info = GraphInfo(proto)
        listed = list_layers(proto, info)
    except Exception:  # noqa: BLE001 - names are cosmetic; a graph zoo.graph cannot read keeps node names
        return
    graph.types = dict(info.types)
    by_node = {name: layer.name for layer in listed for name in layer.nodes}
    protos = {n.name or n.output[0]: n for n in proto.graph.node}
    for node in graph.nodes:
        key = node.name if node.name in protos else node.outputs[0] if node.outputs else ""
        if key in by_node:
            graph.layer_names[node.name] = by_node[key]
    graph.layer_outputs = {layer.name: layer.output for layer in listed}
    graph.cut_points = [layer.name for layer in listed if layer.is_cut_point]


def _parse_graph(g: onnx.GraphProto, opset: int, functions: dict, scope: set[str]) -> Graph:
    initializers = {t.name for t in g.initializer}
    constants: dict[str, torch.Tensor] = {}
    opaque: dict[str, str] = {}
    for t in g.initializer:
        try:
            constants[t.name] = _initializer(t)
        except TypeError as exc:  # a string table: fine unless a live node reads it
            opaque[t.name] = str(exc)
    for sparse in g.sparse_initializer:
        constants[sparse.values.name] = to_tensor(_sparse_to_dense(sparse))
    inputs = [i.name for i in g.input if i.name not in initializers]
    defined = set(inputs) | set(constants) | set(opaque) | {o for n in g.node for o in n.output if o}
    nodes: list[Node] = []
    for i, proto in enumerate(g.node):
        nodes.extend(_nodes(proto, i, opset, functions, scope | defined))
    graph = Graph(nodes, inputs, [o.name for o in g.output], constants, opset, opaque=opaque)
    for value in [*g.input, *g.output]:
        kind = value.type.WhichOneof("value")
        if kind == "sequence_type":
            graph.kinds[value.name] = "sequence"
        elif kind == "optional_type":  # None, or a tensor, or a sequence
            inner = value.type.optional_type.elem_type.WhichOneof("value")
            graph.kinds[value.name] = "optional sequence" if inner == "sequence_type" else "optional"
    for value in g.input:
        if value.name in initializers or value.type.WhichOneof("value") != "tensor_type":
            continue
        tt = value.type.tensor_type
        graph.input_dtypes[value.name] = ONNX_DTYPES.get(tt.elem_type)
        graph.input_shapes[value.name] = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                           for d in tt.shape.dim] if tt.HasField("shape") else None)
    used = {name for node in nodes for name in _reads(node)} | set(graph.outputs)
    graph.outer = sorted(name for name in used if name and name not in defined)
    return graph


# Element types whose raw bytes are the tensor as torch stores it (little-endian machines).
_RAW = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
        10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _initializer(t) -> torch.Tensor:
    """An initializer as a tensor, copied once from the protobuf's bytes (weights are hundreds of MB)."""
    from onnx import numpy_helper

    if t.data_type in _RAW and t.HasField("raw_data") and sys.byteorder == "little" and not t.external_data:
        dims = [int(d) for d in t.dims]
        if len(t.raw_data) == 0:
            return torch.zeros(dims, dtype=_RAW[t.data_type])
        return torch.frombuffer(bytearray(t.raw_data), dtype=_RAW[t.data_type]).reshape(dims)
    return to_tensor(numpy_helper.to_array(t))


def _reads(node: Node) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs take from outside them."""
    return [*node.inputs, *(name for sub in node.subgraphs.values() for name in sub.outer)]


def _sparse_to_dense(sparse) -> np.ndarray:
    from onnx import numpy_helper

    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = list(sparse.dims)
    dense = np.zeros(int(np.prod(dims)) if dims else 1, dtype=values.dtype)
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, dims)
    dense[flat] = values
    return dense.reshape(dims)


def _nodes(proto, index: int, opset: int, functions: dict, scope: set[str]) -> list[Node]:
    """The node, or the body of the model-local function it calls, inlined with fresh names."""
    key = (proto.domain, proto.op_type)
    if key in functions and proto.domain not in ("", "ai.onnx"):
        return _inline(proto, functions[key], index, opset, functions, scope)
    name = proto.name or f"{proto.op_type}_{proto.output[0] if proto.output else index}"
    attrs, subgraphs = _attrs(proto, opset, functions, scope)
    return [Node(name, proto.op_type, list(proto.input), list(proto.output), attrs, opset, proto.domain,
                 subgraphs)]


def _inline(call, function, index: int, opset: int, functions: dict, scope: set[str]) -> list[Node]:
    """A call of a model-local function (torch.onnx's dynamo exporter writes them) as its body."""
    import onnx

    prefix = f"{call.name or function.name}_{index}/"
    rename = {formal: actual for formal, actual in zip(function.input, call.input)}
    rename.update({formal: actual for formal, actual in zip(function.output, call.output)})
    given = {a.name: a for a in call.attribute}
    defaults = {a.name: a for a in function.attribute_proto}
    f_opset = next((o.version for o in function.opset_import if o.domain in ("", "ai.onnx")), opset)
    nodes: list[Node] = []
    for i, inner in enumerate(function.node):
        node = onnx.NodeProto()
        node.CopyFrom(inner)
        node.name = prefix + (inner.name or f"{inner.op_type}_{i}")
        del node.input[:], node.output[:], node.attribute[:]
        node.input.extend(rename.get(x, prefix + x) if x else "" for x in inner.input)
        node.output.extend(rename.get(x, prefix + x) if x else "" for x in inner.output)
        for attr in inner.attribute:
            if attr.ref_attr_name:
                source = given.get(attr.ref_attr_name) or defaults.get(attr.ref_attr_name)
                if source is None:
                    continue  # an optional attribute the call leaves out
                copy = onnx.AttributeProto()
                copy.CopyFrom(source)
                copy.name = attr.name
                node.attribute.append(copy)
            else:
                node.attribute.append(attr)
        nodes.extend(_nodes(node, i, f_opset, functions, scope))
    return nodes


def _attrs(node, opset: int, functions: dict, scope: set[str]) -> tuple[dict, dict]:
    import onnx
    from onnx import numpy_helper

    out: dict[str, Any] = {}
    subgraphs: dict[str, Graph] = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subgraphs[attr.name] = _parse_graph(attr.g, opset, functions, scope)
            out[attr.name] = "<subgraph>"
            continue
        if attr.type == onnx.AttributeProto.GRAPHS:
            out[attr.name] = "<subgraphs>"
            continue
        if attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            out[attr.name] = _sparse_to_dense(attr.sparse_tensor)
            continue
        if attr.type == onnx.AttributeProto.TYPE_PROTO:
            out[attr.name] = attr.tp
            continue
        value = onnx.helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]  # STRINGS, e.g. an RNN's activations
        out[attr.name] = value
    return out, subgraphs
