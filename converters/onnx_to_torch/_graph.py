"""Read an ONNX graph into plain nodes: decode attributes, fold constant subgraphs, find unsupported ops."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from converters.onnx_to_torch._ops import ONNX_DTYPES, OPS, Node, OpFunction, Unsupported
from zoo.errors import ModelFormatError, UnsupportedLayerError

if TYPE_CHECKING:
    import onnx

# Ops whose output differs between runs: never fold them into constants.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


@dataclass
class Graph:
    """A topologically ordered ONNX graph with its constants evaluated."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]  # only the nodes that depend on a graph input, in topological order
    fns: list  # the torch function of each node in `nodes`
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    opset: int = 13
    input_dtypes: list[torch.dtype | None] = field(default_factory=list)  # declared, per input
    input_shapes: list[list[int | str | None] | None] = field(default_factory=list)  # None: unknown rank
    layer_names: dict[str, str] = field(default_factory=dict)  # node name -> its layer in `zoo layers`


def load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
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


def _attrs(node) -> dict:
    import onnx
    from onnx import numpy_helper

    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]  # STRINGS, e.g. an RNN's activations
        elif attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            value = "<subgraph>"
        out[attr.name] = value
    return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = array.copy(order="C")  # np.ascontiguousarray would turn a 0-d array 1-d
    return torch.from_numpy(array)


def parse(proto: onnx.ModelProto) -> Graph:
    """Decode, check and fold `proto`; raise UnsupportedLayerError naming every unsupported node."""
    from onnx import numpy_helper

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    g = proto.graph
    outputs = [o.name for o in g.output]
    # Only nodes an output depends on: a cut graph may carry dead branches with any ops.
    protos = [g.node[i] for i in _needed(g.node, outputs)]
    nodes = [Node(n.name or f"{n.op_type}_{n.output[0]}", n.op_type, list(n.input), list(n.output),
                  _attrs(n), opset) for n in protos]
    fns = _functions(nodes, [n.domain for n in protos])
    used = {name for node in nodes for name in node.inputs} | set(outputs)
    initializers = {t.name for t in g.initializer}
    constants = {t.name: _tensor(numpy_helper.to_array(t)) for t in g.initializer if t.name in used}
    inputs = [i.name for i in g.input if i.name not in initializers]
    live_nodes, live_fns = _fold(nodes, fns, constants, set(inputs))
    declared = {i.name: i.type.tensor_type for i in g.input}
    dtypes = [ONNX_DTYPES.get(declared[name].elem_type) for name in inputs]
    shapes = [[d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
               for d in declared[name].shape.dim] if declared[name].HasField("shape") else None
              for name in inputs]
    return Graph(inputs, outputs, live_nodes, live_fns, constants, opset, dtypes, shapes,
                 _layer_names(proto, protos, nodes))


def _layer_names(proto: onnx.ModelProto, protos: list, nodes: list[Node]) -> dict[str, str]:
    """Each node's layer name as `zoo layers` lists it (Caffe names for onnx-caffe2's n0, n1...)."""
    from zoo.graph import list_layers

    try:
        listed = {node: layer.name for layer in list_layers(proto) for node in layer.nodes}
    except Exception:  # noqa: BLE001 - names are cosmetic; a graph zoo.graph cannot read keeps node names
        return {}
    return {node.name: listed[p.name or p.output[0]] for p, node in zip(protos, nodes)
            if (p.name or p.output[0]) in listed}


def _functions(nodes: list[Node], domains: list[str]) -> list:
    """The torch function of every node, or UnsupportedLayerError listing all that have none."""
    problems, fns = [], []
    for node, domain in zip(nodes, domains):
        fn = None
        if domain not in ("", "ai.onnx"):
            problems.append((f"{domain}.{node.op_type}", node.name, ""))
        elif node.op_type not in OPS:
            problems.append((node.op_type, node.name, ""))
        else:
            try:
                fn = OpFunction(node)
            except (Unsupported, KeyError) as exc:
                reason = f"missing attribute {exc}" if isinstance(exc, KeyError) else str(exc)
                problems.append((node.op_type, node.name, reason))
        fns.append(fn)
    if problems:
        raise UnsupportedLayerError(_unsupported_message(problems))
    return fns


def _fold(nodes: list[Node], fns: list, constants: dict[str, torch.Tensor],
          inputs: set[str]) -> tuple[list[Node], list]:
    """Evaluate nodes whose inputs are all constants into `constants`; return the others, sorted."""
    live_nodes, live_fns = [], []
    for i in _toposort(nodes, inputs | set(constants)):
        node, fn = nodes[i], fns[i]
        if node.op_type not in _NONDETERMINISTIC and all(not n or n in constants for n in node.inputs):
            with torch.no_grad():
                out = fn(*[constants[name] if name else None for name in node.inputs])
            for name, value in zip(node.outputs, out if isinstance(out, tuple) else (out,)):
                if name:
                    constants[name] = value
            continue
        node.constants = {k: constants[name] for k, name in enumerate(node.inputs) if name in constants}
        live_nodes.append(node)
        live_fns.append(fn)
    return live_nodes, live_fns


def _toposort(nodes: list[Node], available: set[str]) -> list[int]:
    """Node indices in an order where every input is produced before use (ONNX files are usually sorted)."""
    produced = set(available)
    done: list[int] = []
    pending = list(range(len(nodes)))
    while pending:
        rest = []
        for i in pending:
            if all(not name or name in produced for name in nodes[i].inputs):
                done.append(i)
                produced.update(nodes[i].outputs)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            missing = sorted({n for i in rest for n in nodes[i].inputs if n and n not in produced})
            raise ModelFormatError(f"ONNX graph has a cycle or undefined tensors {missing[:5]}; "
                                   f"check it with onnx.checker.check_model")
        pending = rest
    return done


def _needed(nodes, outputs: list[str]) -> list[int]:
    """Indices (in file order) of the nodes some graph output depends on."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    keep: set[int] = set()
    stack = [name for name in outputs if name in producer]
    while stack:
        i = producer[stack.pop()]
        if i not in keep:
            keep.add(i)
            stack.extend(name for name in nodes[i].input if name in producer)
    return sorted(keep)


def _unsupported_message(problems: list[tuple[str, str, str]]) -> str:
    ops = sorted({op for op, _, _ in problems})
    listed = "; ".join(f"{name} ({op}{': ' + why if why else ''})" for op, name, why in problems[:20])
    more = f" and {len(problems) - 20} more" if len(problems) > 20 else ""
    return (f"ONNX op(s) {', '.join(ops)} have no PyTorch conversion; unsupported nodes: {listed}{more}. "
            f"Cut the graph below them (zoo layers lists cut points) or run this model with onnxruntime")
