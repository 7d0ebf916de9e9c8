"""OnnxModule: an ONNX graph lowered once to torch.fx; frozen weights grouped per layer, fine-tuned by block."""
from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
import torch
from torch import fx, nn

from converters.onnx_to_torch._dtypes import to_tensor
from converters.onnx_to_torch._graph import Graph
from converters.onnx_to_torch._inference import frozen_graph
from converters.onnx_to_torch._layers import DropoutGate, OnnxLayer
from converters.onnx_to_torch._lower import Value, problem_list, lower, sanitize
from converters.onnx_to_torch._registry import LAYER_CLASSES
from zoo.errors import InputError, UnknownLayerError, UnsupportedLayerError


@dataclass(frozen=True)
class FineTuneBlock:
    """A unit of fine-tuning: a conv/linear layer with its BatchNorm/Scale/activation."""

    name: str  # the layer `zoo layers` lists its main layer under
    layers: tuple[str, ...]  # ONNX node names of its weight layers (keys of OnnxModule.layers)


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: frozen weights, `unfreeze(k)` to train the top k blocks.

    The graph is lowered once into `graph_module`, a `torch.fx.GraphModule` of typed op calls
    that this module runs; `torch.jit.script(module)` compiles that same graph and
    `torch.export` / `torch.compile` take the module. `layers` lists (ONNX node name, submodule)
    for every node with weights, in graph order; the submodules are attributes named after the
    layer `zoo layers` lists the node under (sanitized: `conv1`, `inception_3a_1x1`, a second node
    of one layer `gru_2`), so `named_parameters()` reads like the layers list. `blocks` groups
    them for fine-tuning. Dropout acts only in train mode and only below a trainable layer (it
    regularises what is trained), so a fully frozen module is deterministic in either mode.
    """

    def __init__(self, graph: Graph, *, preprocess: nn.Module | None = None, pooling: nn.Module | None = None,
                 preprocess_input: str | None = None):
        super().__init__()
        self.__dict__["graph_module"] = None  # reserved: set below, never a layer's name
        self.input_names: list[str] = list(graph.inputs)
        self.output_names: list[str] = list(graph.outputs)
        self.opset = graph.opset
        self._input_dtypes = [graph.input_dtypes.get(name) for name in graph.inputs]
        self.input_shapes = [graph.input_shapes.get(name) for name in graph.inputs]  # as declared
        self._input_kinds = [graph.kinds.get(name, "tensor") for name in graph.inputs]
        self.layer_outputs = dict(graph.layer_outputs)  # zoo layer name -> its output tensor
        self.cut_points = list(graph.cut_points)
        self._edges = [(node.name, [n for n in node.inputs if n], [n for n in node.outputs if n])
                       for node in graph.nodes]
        self.layers: list[tuple[str, OnnxLayer]] = []
        self.constants = nn.Module()  # run-time constants (shapes, indices, scalars) as buffers
        self.ops = nn.Module()  # run-time modules: dropout gates, loops, branches
        # The input the preprocessing module takes raw pixels for (the first one unless named).
        self._raw_input = -1 if preprocess is None else self.input_names.index(
            preprocess_input if preprocess_input in self.input_names else self.input_names[0])
        if preprocess is not None:
            self.preprocess = preprocess
        if pooling is not None:
            self.pool = pooling
        owners, weights = self._make_layers(graph)  # after the names above: a layer "pool" becomes pool_2
        self.blocks = [FineTuneBlock(b.name, tuple(graph.layers[i].name for i in b.layers)) for b in graph.blocks]
        fx_graph, _, problems = lower(graph, self, owners, self.input_names, weights)
        if problems:
            raise UnsupportedLayerError(_unsupported_message(problems))
        self._gates = [m for m in self.modules() if isinstance(m, DropoutGate)]
        _add_transforms(fx_graph, self._raw_input, pooling is not None)
        for node in fx_graph.nodes:
            if node.op == "placeholder":
                kind = self._input_kinds[self.input_names.index(_unsanitize(node.target, self.input_names))]
                node.type = {"sequence": List[torch.Tensor], "optional": Optional[torch.Tensor],
                             "optional sequence": Optional[List[torch.Tensor]]}.get(kind, torch.Tensor)
        self.__dict__["graph_module"] = fx.GraphModule(self, fx_graph, class_name="OnnxGraphModule")
        self._share_children()

    # ---------------------------------------------------------------- construction
    def _make_layers(self, graph: Graph) -> tuple[dict[str, nn.Module], dict[tuple[str, int], Value]]:
        """One submodule per LayerSpec holding its parameters; the get_attr Values lowering reads them by."""
        nodes = {node.name: node for node in graph.nodes}
        shared: dict[str, nn.Parameter] = {}
        owners: dict[str, nn.Module] = {}
        paths: list[str] = []
        for spec in graph.layers:
            cls = LAYER_CLASSES.get(spec.op_type, OnnxLayer)
            if hasattr(cls, "accepts") and not cls.accepts(spec):
                cls = OnnxLayer
            layer = cls(spec, nodes[spec.name])
            for role, name in spec.params.items():
                if name not in shared:
                    shared[name] = nn.Parameter(graph.constants[name].detach(), requires_grad=False)
                layer.register_parameter(role, shared[name])
            for role, name in spec.buffers.items():
                layer.register_buffer(role, graph.constants[name].detach().clone())
            attr, n = sanitize(spec.layer_name), 2
            base = attr
            while attr in self._modules or hasattr(self, attr):
                attr, n = f"{base}_{n}", n + 1
            self.add_module(attr, layer)
            self.layers.append((spec.name, layer))
            owners.update((name, layer) for name in spec.nodes)
            paths.append(attr)
        weights = {}
        for (node, k), (i, role) in graph.weights.items():
            tensor = getattr(self._modules[paths[i]], role)
            weights[(node, k)] = Value(f"{paths[i]}.{role}", const=tensor, param=True, dtype=tensor.dtype,
                                       shape=list(tensor.shape))
        return owners, weights

    def _share_children(self) -> None:
        """The graph module reads this module's own submodules (not copies), so .to(), .double(),
        load_state_dict and training-mode changes reach the graph."""
        gm = self.__dict__["graph_module"]
        for name, child in self.named_children():
            setattr(gm, name, child)
        # What the frozen-inference graph watches: the weight layers and the run-time modules.
        self.__dict__["_watched"] = [layer for _, layer in self.layers] + list(self.ops.modules())

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "graph_module" in self.__dict__:
            self._share_children()
        self.__dict__["_fast"] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fast"] = None  # the frozen-inference graph and its packed weights are a cache
        return state

    # ---------------------------------------------------------------- freezing
    def freeze(self) -> OnnxModule:
        """Make every parameter non-trainable (the state right after conversion)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def unfreeze(self, blocks: int | str | None = None, *, layers: Iterable[str] | None = None,
                 top: int | None = None, verbose: bool = True) -> OnnxModule:
        """Train the top `blocks` blocks (an int), or every block above a cut point (a layer name).

        A block is a conv/linear layer with its BatchNorm, Scale and activation (`net.blocks`),
        so `unfreeze(1)` on a Caffe ResNet trains fc1000 and `unfreeze("res4f")` the res5 stage
        and fc1000. `layers=[...]` picks layers instead (ONNX node names or `zoo layers` names).
        Everything else is frozen. Prints how many parameters train (`verbose=False`: quiet).

        >>> net.unfreeze(2).trainable_layers()  # doctest: +SKIP
        """
        if top is not None:
            blocks = top
        if layers is not None:
            chosen = self._named_layers(layers)
        elif isinstance(blocks, str):
            chosen = self.layers_above(blocks)
        else:
            count = 1 if blocks is None else int(blocks)
            if not 0 <= count <= len(self.blocks):
                raise UnknownLayerError(
                    f"unfreeze({count}): this module has {len(self.blocks)} blocks (a conv/linear layer with "
                    f"its BatchNorm/Scale/activation; see .blocks); choose between 0 and {len(self.blocks)}")
            chosen = [name for block in self.blocks[len(self.blocks) - count:] for name in block.layers]
        self.freeze()
        wanted = set(chosen)
        for name, layer in self.layers:
            if name in wanted:
                for p in layer.parameters():
                    p.requires_grad_(True)
        if verbose:
            print(self.parameter_summary(), file=sys.stderr)
        return self

    def _named_layers(self, layers: Iterable[str]) -> list[str]:
        names = [name for name, _ in self.layers]
        chosen: list[str] = []
        for wanted in layers:
            by_layer = [name for name, layer in self.layers if layer.layer_name == wanted]
            chosen += by_layer if wanted not in names and by_layer else [wanted]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise UnknownLayerError(
                f"layer(s) {unknown} have no weights in this module; layers with weights: "
                f"{', '.join(names[-8:])}{' ...' if len(names) > 8 else ''} (see .layers)")
        return chosen

    def layers_above(self, cut: str) -> list[str]:
        """The weight layers computed from the output of layer `cut` (a `zoo layers` name or ONNX tensor)."""
        tensor = self.layer_outputs.get(cut, cut)
        produced = {out for _, _, outs in self._edges for out in outs}
        if tensor not in produced and tensor not in self.input_names:
            close = difflib.get_close_matches(cut, list(self.layer_outputs), n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UnknownLayerError(f"unfreeze({cut!r}): no layer {cut!r} in this module{hint}. Cut points: "
                                    f"{', '.join(self.cut_points[-8:]) or 'none'}")
        above, reached = set(), {tensor}
        for name, ins, outs in self._edges:
            if any(i in reached for i in ins):
                above.add(name)
                reached.update(outs)
        chosen = [name for name, layer in self.layers if name in above]
        if not chosen:
            raise UnknownLayerError(f"unfreeze({cut!r}): no layer with weights comes after {cut!r}; "
                                    f"pick a lower cut point ({', '.join(self.cut_points[-8:])})")
        return chosen

    def trainable_layers(self) -> list[str]:
        """ONNX names of the layers whose parameters currently train."""
        return [name for name, layer in self.layers if layer.trainable]

    def trainable_parameters(self) -> int:
        """How many parameters (numbers, not tensors) currently train."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_summary(self) -> str:
        """One line: how many blocks and parameters train, of how many."""
        total = sum(p.numel() for p in self.parameters())
        trained = self.trainable_parameters()
        live = set(self.trainable_layers())
        names = [b.name for b in self.blocks if any(n in live for n in b.layers)]
        where = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        share = f" ({100.0 * trained / total:.1f}%)" if total else ""
        return (f"{len(names)} of {len(self.blocks)} blocks train{where}: {trained:,} of {total:,} "
                f"parameters{share}")

    # ---------------------------------------------------------------- running
    def _as_input(self, k: int, x: Any) -> Any:
        kind = self._input_kinds[k]
        if kind.startswith("optional") and x is None:
            return None
        if kind.endswith("sequence"):
            return [self._tensor(k, item) for item in x]
        x = self._tensor(k, x)
        shape = self.input_shapes[k]
        if k == self._raw_input:
            return x  # raw pixels: the preprocessing checks them
        if shape is not None and x.dim() != len(shape):
            # Only the rank is checked: the batch and, in convolutional nets, the spatial sizes may
            # differ from the declared ones; a wrong size fails in the op that cannot take it.
            dims = ["N", *(str(d) if d is not None else "?" for d in shape[1:])] if shape else []
            raise InputError(f"input {self.input_names[k]!r} must have {len(shape)} dimensions "
                             f"[{', '.join(dims)}], got shape {tuple(x.shape)}")
        if x.dim() == 4 and x.is_floating_point():
            # torch's CPU convolutions and pooling run 1.2-15x faster on channels-last (NHWC-strided)
            # 4-D tensors; the layout only changes strides, never values or shapes.
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _tensor(self, k: int, x: Any) -> torch.Tensor:
        dtype = self._input_dtypes[k]
        if not isinstance(x, torch.Tensor):
            try:
                x = to_tensor(np.asarray(x))
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {self.input_names[k]!r} must be a tensor or array, got "
                                 f"{type(x).__name__} ({exc})") from None
            if dtype is not None and x.dtype != dtype and k != self._raw_input:
                x = x.to(dtype)
        elif dtype is not None and x.dtype != dtype and not dtype.is_floating_point:
            if x.is_floating_point() or x.is_complex():
                raise InputError(f"input {self.input_names[k]!r} takes {str(dtype).replace('torch.', '')} "
                                 f"values (e.g. token ids), got a {str(x.dtype).replace('torch.', '')} tensor")
            x = x.to(dtype)  # int32 token ids into an int64 input
        return x

    def _bind(self, inputs: tuple, named: dict[str, Any]) -> list[Any]:
        """The inputs in graph order, from positional arguments then keywords (ONNX or sanitized name)."""
        names = self.input_names
        if len(inputs) > len(names):
            raise InputError(f"this module takes {len(names)} input(s) {names}, got {len(inputs)}")
        bound: list[Any] = list(inputs) + [None] * (len(names) - len(inputs))
        given = [True] * len(inputs) + [False] * (len(names) - len(inputs))
        by_name = {name: k for k, name in enumerate(names)}
        by_name.update({sanitize(name): k for k, name in enumerate(names) if sanitize(name) not in by_name})
        for key, value in named.items():
            k = by_name.get(key)
            if k is None:
                raise InputError(f"this module has no input {key!r}; its inputs are {names}")
            if given[k]:
                raise InputError(f"input {names[k]!r} given twice (by position and by name)")
            bound[k], given[k] = value, True
        missing = [name for name, ok, kind in zip(names, given, self._input_kinds)
                   if not ok and not kind.startswith("optional")]
        if missing:
            raise InputError(f"missing input(s) {missing}; this module takes {names}, in that order "
                             f"or by name")
        return bound

    def forward(self, *inputs, **named):
        """Run the graph on its inputs, positional in graph input order or by name.

        One graph output comes back as a tensor, several as a tuple in `output_names` order.
        """
        args = [self._as_input(k, x) for k, x in enumerate(self._bind(inputs, named))]
        if self.training and self._gates:
            self._update_gates()
        graph = frozen_graph(self, args)
        return (graph or self.__dict__["graph_module"]).forward(*args)

    def _update_gates(self) -> None:
        """A Dropout node acts while training only when a trainable layer comes after it."""
        trainable = [i for i, (_, layer) in enumerate(self.layers) if layer.trainable]
        last = trainable[-1] if trainable else -1
        for gate in self._gates:
            gate.active = gate.position <= last

    # ---------------------------------------------------------------- the graph, for its other consumers
    @property
    def graph_module(self) -> fx.GraphModule:
        """The lowered graph: an `fx.GraphModule` of typed op calls sharing this module's parameters."""
        return self.__dict__["graph_module"]

    def scriptable(self) -> fx.GraphModule:
        """The graph module `torch.jit.script` compiles (same parameters, positional or named tensor inputs).

        Input checks and casts stay with this module; a node whose op has no TorchScript form
        (see converters.onnx_to_torch.EAGER_ONLY) is named in an UnsupportedLayerError.
        """
        gm = self.graph_module
        problems = [(node.meta.get("onnx_op", "?"), node.meta.get("onnx_node", node.name), "")
                    for node in gm.graph.nodes if _eager_only(gm, node)]
        if problems:
            listed = "; ".join(f"{name} ({op})" for op, name, _ in problems[:20])
            raise UnsupportedLayerError(
                f"ONNX op(s) {', '.join(sorted({p[0] for p in problems}))} have no TorchScript form here; "
                f"nodes: {listed}. torch.jit.trace(module, example_inputs) records them instead")
        gm.input_names = list(self.input_names)
        gm.output_names = list(self.output_names)
        return gm

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script(module) calls this first: the input checks and casts are not compiled.
        return self.scriptable()

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, outputs={self.output_names}, opset={self.opset}"


def _eager_only(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A call of a function or module marked as having no TorchScript form (converters.onnx_to_torch._registry.eager)."""
    if node.op == "call_function":
        return getattr(node.target, "__zoo_eager_only__", False)
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "__zoo_eager_only__", False)
    return False


def _unsanitize(target: str, names: list[str]) -> str:
    return next((name for name in names if sanitize(name) == target), names[0])


def _add_transforms(graph: fx.Graph, raw_input: int, pooling: bool) -> None:
    """The extractor's preprocessing before input `raw_input` (-1: none), its pooling after every output."""
    if raw_input >= 0:
        placeholder = [node for node in graph.nodes if node.op == "placeholder"][raw_input]
        with graph.inserting_after(placeholder):
            new = graph.call_module("preprocess", (placeholder,))
        placeholder.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    if pooling:
        output = next(node for node in graph.nodes if node.op == "output")
        results = output.args[0]
        items = list(results) if isinstance(results, tuple) else [results]
        with graph.inserting_before(output):
            pooled = [graph.call_module("pool", (item,)) for item in items]
        output.args = (tuple(pooled) if isinstance(results, tuple) else pooled[0],)


def _unsupported_message(problems: list[tuple[str, str, str]]) -> str:
    ops = sorted({op for op, _, _ in problems})
    more = f" and {len(problems) - 20} more" if len(problems) > 20 else ""
    return (f"ONNX op(s) {', '.join(ops)} have no PyTorch conversion; unsupported nodes: "
            f"{problem_list(problems)}{more}. "
            f"Cut the graph below them (zoo layers lists cut points) or run this model with onnxruntime")
