"""The one lowering: a parsed ONNX graph -> a torch.fx graph of typed op calls (or, to fold constants, values).

Each op's lowering (converters.onnx_to_torch.ops) writes through a `Lowering`: `g.call(fn, ...)`
adds a call of a typed function with the node's attributes as literals. The same lowering runs on
an `Evaluation`, which calls the function at once: that is how constant folding computes a node.
"""
from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, List

import torch
from torch import fx, nn

from converters.onnx_to_torch import ops  # noqa: F401 - registers every op
from converters.onnx_to_torch._graph import Graph, Node
from converters.onnx_to_torch._registry import Unsupported, lowering
from converters.onnx_to_torch.ops import _common as C

__all__ = ["NONE", "Evaluation", "Lowering", "Value", "evaluate", "lower", "sanitize"]


@dataclass(eq=False)
class Value:
    """One input or output of a node while lowering.

    `node` is the fx node (a tensor or list while evaluating; None for an omitted optional input).
    `const` is the tensor when known at conversion time. `param` marks a weight or statistic: a
    lowering may read its shape and dtype but must never bake its values into the graph.
    """

    node: Any = None
    const: torch.Tensor | None = None
    param: bool = False
    dtype: torch.dtype | None = None
    shape: list | None = None
    kind: str = "tensor"  # or "sequence", "optional"

    @property
    def present(self) -> bool:
        return self.node is not None

    @property
    def static(self) -> torch.Tensor | None:
        """The value itself, when known and free to bake in (not a weight)."""
        return None if self.param else self.const

    @property
    def rank(self) -> int | None:
        if self.const is not None:
            return self.const.dim()
        return None if self.shape is None else len(self.shape)

    def type_of(self) -> torch.dtype | None:
        return self.const.dtype if self.const is not None else self.dtype


NONE = Value()


def sanitize(name: str) -> str:
    """A Python identifier for an ONNX name ("conv2/3x3" -> "conv2_3x3", "1" -> "l_1")."""
    clean = re.sub(r"\W", "_", name).strip("_") or "layer"
    if keyword.iskeyword(clean):
        return f"{clean}_"
    return f"l_{clean}" if clean[0].isdigit() else clean


class Lowering:
    """Writes a (sub)graph's nodes into a torch.fx graph; modules and constants go on `owner`."""

    def __init__(self, graph: fx.Graph, owner: nn.Module, opset: int):
        self.graph = graph
        self.owner = owner
        self.opset = opset
        self.node: Node | None = None  # the ONNX node being lowered
        self.layers_seen = 0  # weighted layers lowered so far (dropout gates act above trainable ones)
        self._constants: dict[int, Value] = {}
        self._layer_of: dict[str, nn.Module] = {}  # ONNX node name -> the layer owning its weights
        self.scope: dict[str, Value] = {}  # the Values lowered so far (subgraphs read outer ones)
        self.source: Graph | None = None  # the parsed graph being lowered

    # ---------------------------------------------------------------- what lowerings call
    @property
    def evaluating(self) -> bool:
        """True while folding constants: calls run now and values are tensors."""
        return False

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Value:
        """A call of `fn` (a typed function or torch op) on Values and literals."""
        node = self.graph.call_function(fn, _nodes(args), _nodes(kwargs))
        self._tag(node)
        return Value(node)

    def method(self, name: str, *args: Any) -> Value:
        """`args[0].name(*args[1:])`: a tensor method."""
        node = self.graph.call_method(name, _nodes(args))
        self._tag(node)
        return Value(node)

    def unpack(self, value: Value, n: int) -> list[Value]:
        """The first `n` items of a tuple or list a call returned."""
        out = []
        for k in range(n):
            node = self.graph.call_function(operator.getitem, (value.node, k))
            self._tag(node)
            out.append(Value(node))
        return out

    def call_module(self, module: nn.Module, *args: Any, name: str = "op") -> Value:
        """Register `module` on the owner (a fresh name from `name`) and call it."""
        attr = self.add_module(module, name)
        node = self.graph.call_module(attr, _nodes(args))
        self._tag(node)
        return Value(node)

    def call_layer(self, layer: nn.Module, *args: Any) -> Value:
        """Call a weight layer created for this graph (BatchNorm's own forward)."""
        path = next(name for name, m in self.owner.named_children() if m is layer)
        node = self.graph.call_module(path, _nodes(args))
        self._tag(node)
        return Value(node)

    def add_module(self, module: nn.Module, name: str) -> str:
        """Register a run-time module (a dropout gate, a loop) under the owner's `ops`; its path."""
        holder = self.owner.get_submodule("ops")
        base = sanitize(name)
        attr, n = base, 2
        while attr in holder._modules:
            attr, n = f"{base}_{n}", n + 1
        holder.add_module(attr, module)
        return f"ops.{attr}"

    def constant(self, tensor: torch.Tensor) -> Value:
        """A conversion-time tensor the graph reads at run time (a non-persistent buffer)."""
        key = id(tensor)
        if key not in self._constants:
            holder = self.owner.get_submodule("constants")
            name = f"c{len(holder._buffers)}"
            holder.register_buffer(name, tensor, persistent=False)
            node = self.graph.get_attr(f"constants.{name}")
            self._constants[key] = Value(node, const=tensor)
        return self._constants[key]

    def ints(self, value: Value) -> list[int] | Value:
        """A 1-D integer input as a literal list when known now, else its run-time values."""
        if value.static is not None:
            return [int(v) for v in value.static.reshape(-1).tolist()]
        return self.call(C.ints, value)

    def floats(self, value: Value) -> list[float] | Value:
        if value.static is not None:
            return [float(v) for v in value.static.reshape(-1).tolist()]
        return self.call(C.floats, value)

    def layer(self) -> nn.Module | None:
        """The layer module holding the current node's weights, if it has any."""
        return self._layer_of.get(self.node.name) if self.node is not None else None

    def subgraph(self, graph: Graph, formal: Sequence[str], env: dict[str, Value]) -> tuple[nn.Module, list[Value]]:
        """Lower `graph` into a module `(inputs: List[Tensor], captured: List[Tensor]) -> List[Tensor]`.

        `inputs` are the subgraph's formal inputs in order; `captured` what the body reads from
        the enclosing graph (constants it reads are copied into the body instead). Returns the
        module and the Values of this graph it captures.
        """
        body = Subgraph()
        fx_graph = fx.Graph()
        inner = Lowering(fx_graph, body, self.opset)
        inputs_node = fx_graph.placeholder("inputs", type_expr=List[torch.Tensor])
        captured_node = fx_graph.placeholder("captured", type_expr=List[torch.Tensor])
        inner_env: dict[str, Value] = {}
        for k, name in enumerate(formal):
            node = fx_graph.call_function(operator.getitem, (inputs_node, k))
            inner_env[name] = Value(node, dtype=graph.input_dtypes.get(name), kind=graph.kinds.get(name, "tensor"))
        captured: list[Value] = []
        for name in graph.outer:
            if name in inner_env or name in graph.constants:
                continue
            outer = env.get(name)
            if outer is None and self.source is not None:
                outer = self.input_value(self.source, name, env)
            if outer is None:
                raise Unsupported(f"the subgraph reads {name!r}, which is not defined")
            if outer.static is not None:
                inner_env[name] = inner.constant(outer.static)
            else:
                node = fx_graph.call_function(operator.getitem, (captured_node, len(captured)))
                inner_env[name] = Value(node, dtype=outer.dtype, kind=outer.kind)
                captured.append(outer)
        outputs = inner.lower_nodes(graph, inner_env)
        fx_graph.output([v.node for v in outputs])
        fx_graph._tracer_cls = OnnxTracer
        return fx.GraphModule(body, fx_graph, class_name="OnnxSubgraph"), captured

    # ---------------------------------------------------------------- driving
    def _tag(self, node: fx.Node) -> None:
        if self.node is not None:
            node.meta["onnx_node"] = self.node.name
            node.meta["onnx_op"] = self.node.op_type

    def input_value(self, graph: Graph, name: str, env: dict[str, Value]) -> Value:
        if not name:
            return NONE
        if name in env:
            return env[name]
        if name in graph.constants:
            env[name] = self.constant(graph.constants[name])
            return env[name]
        if name in graph.opaque:
            raise Unsupported(f"input {name!r}: {graph.opaque[name]}")
        raise Unsupported(f"input {name!r} is not defined")

    def lower_nodes(self, graph: Graph, env: dict[str, Value], weights: dict | None = None,
                    problems: list | None = None) -> list[Value]:
        """Lower every node of `graph`; the Values of its outputs."""
        raise_now = problems is None
        problems = [] if problems is None else problems
        self.scope = env
        self.source = graph
        for node in graph.nodes:
            self.node = node
            try:
                if node.domain not in ("", "ai.onnx"):
                    raise Unsupported("")
                args = [weights[(node.name, k)] if weights and (node.name, k) in weights
                        else self.input_value(graph, name, env) for k, name in enumerate(node.inputs)]
                for k, arg in enumerate(args):
                    if arg.present and arg.dtype is None and node.inputs[k]:
                        arg.dtype = graph.dtype(node.inputs[k])
                    if arg.present and arg.shape is None and node.inputs[k]:
                        arg.shape = graph.shape(node.inputs[k])  # inferred: the batch may be the declared one
                outs = _outputs(lowering(node.op_type, node.opset)(self, node, *args), node)
            except Unsupported as exc:
                label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                problems.append((label, node.name, str(exc)))
                outs = [Value(None)] * len(node.outputs)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                # A missing attribute or a malformed input list: the node cannot be converted.
                problems.append((node.op_type, node.name, f"{type(exc).__name__}: {exc}"))
                outs = [Value(None)] * len(node.outputs)
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = value
            owner = self._layer_of.get(node.name)
            if owner is not None and getattr(owner, "onnx_name", None) == node.name:
                self.layers_seen += 1  # its main node, not the bias Add that joined it
        self.node = None
        if problems and raise_now:
            raise Unsupported(problem_list(problems))
        result = []
        for name in graph.outputs:
            if name not in env and name in graph.constants:
                env[name] = self.constant(graph.constants[name])
            result.append(env.get(name, Value(None)))
        return result


class Evaluation(Lowering):
    """Runs a node's lowering at once on tensors: constant folding through the same op table."""

    def __init__(self, opset: int):
        super().__init__(fx.Graph(), nn.Module(), opset)

    @property
    def evaluating(self) -> bool:
        return True

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Value:
        return _evaluated(fn(*_nodes(args), **_nodes(kwargs)))

    def method(self, name: str, *args: Any) -> Value:
        values = _nodes(args)
        return _evaluated(getattr(values[0], name)(*values[1:]))

    def unpack(self, value: Value, n: int) -> list[Value]:
        return [_evaluated(value.node[k]) for k in range(n)]

    def call_module(self, module: nn.Module, *args: Any, name: str = "op") -> Value:
        return _evaluated(module.eval()(*_nodes(args)))

    def call_layer(self, layer: nn.Module, *args: Any) -> Value:
        return _evaluated(layer(*_nodes(args)))

    def constant(self, tensor: torch.Tensor) -> Value:
        return Value(tensor, const=tensor)

    def ints(self, value: Value) -> list[int]:
        return [int(v) for v in value.const.reshape(-1).tolist()]

    def floats(self, value: Value) -> list[float]:
        return [float(v) for v in value.const.reshape(-1).tolist()]


class Subgraph(nn.Module):
    """The root of a lowered subgraph (an If branch, a Loop or Scan body): its constants and modules."""

    def __init__(self):
        super().__init__()
        self.constants = nn.Module()
        self.ops = nn.Module()


class OnnxTracer(fx.Tracer):
    """Rebuilds a lowered graph from its code (torch.load of a GraphModule re-traces it): the typed op
    functions are recorded as calls, not traced into."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autowrap_functions", typed_functions())
        super().__init__(*args, **kwargs)


def typed_functions() -> tuple:
    """Every run-time function the op families define (what lowered graphs call)."""
    import inspect

    found = []
    for family in vars(ops).values():
        if inspect.ismodule(family) and family.__name__.startswith(ops.__name__):
            found += [fn for fn in vars(family).values()
                      if inspect.isfunction(fn) and fn.__module__ == family.__name__]
    return tuple(found)


def evaluate(node: Node, inputs: list[torch.Tensor | None]) -> list[Any]:
    """The outputs of `node` on conversion-time inputs (constant folding)."""
    g = Evaluation(node.opset)
    g.node = node
    args = [Value(t, const=t) if isinstance(t, torch.Tensor) else Value(t) if t is not None else NONE
            for t in inputs]
    with torch.no_grad():
        outs = _outputs(lowering(node.op_type, node.opset)(g, node, *args), node)
    return [v.node for v in outs]


def _evaluated(result: Any) -> Value:
    return Value(result, const=result if isinstance(result, torch.Tensor) else None)


def _nodes(args: Any) -> Any:
    """Values replaced by their fx nodes (or tensors), through lists, tuples and dicts."""
    if isinstance(args, Value):
        return args.node
    if isinstance(args, tuple):
        return tuple(_nodes(a) for a in args)
    if isinstance(args, list):
        return [_nodes(a) for a in args]
    if isinstance(args, dict):
        return {k: _nodes(v) for k, v in args.items()}
    return args


def _outputs(result: Any, node: Node) -> list[Value]:
    if isinstance(result, Value):
        return [result]
    return list(result)


def problem_list(problems: list[tuple[str, str, str]]) -> str:
    return "; ".join(f"{name} ({op}{': ' + why if why else ''})" for op, name, why in problems[:20])


def lower(graph: Graph, owner: nn.Module, layers: dict[str, nn.Module], input_names: list[str],
          weights: dict[tuple[str, int], Value]) -> tuple[fx.Graph, Lowering, list]:
    """The main graph as a torch.fx graph whose placeholders are `input_names` (sanitized).

    `layers` maps ONNX node names to the modules holding their weights and `weights` the
    (node, input index) pairs that read a weight to its get_attr Value. Returns the graph, the
    lowering (its bookkeeping) and the problems: (op, node, why) for every node that failed.
    """
    fx_graph = fx.Graph()
    g = Lowering(fx_graph, owner, graph.opset)
    g._layer_of = dict(layers)
    env: dict[str, Value] = {}
    for name in input_names:
        env[name] = Value(fx_graph.placeholder(sanitize(name)), dtype=graph.input_dtypes.get(name),
                          shape=graph.input_shapes.get(name), kind=graph.kinds.get(name, "tensor"))
    for value in weights.values():
        value.node = fx_graph.get_attr(value.node) if isinstance(value.node, str) else value.node
    problems: list = []
    outputs = g.lower_nodes(graph, env, weights, problems)
    if not problems:
        result = [v.node for v in outputs]
        fx_graph.output(result[0] if len(result) == 1 else tuple(result))
    fx_graph._tracer_cls = OnnxTracer
    return fx_graph, g, problems
