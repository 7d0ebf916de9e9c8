"""OnnxModule: an ONNX graph run by torch ops, its weights as frozen nn.Parameters grouped per layer."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters.onnx_to_torch._graph import Graph
from converters.onnx_to_torch._ops import Node
from zoo.errors import InputError, UnknownLayerError

# Which constant inputs of a node are trainable weights, and the attribute name each gets.
_PARAMETERS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "weight"},
    "Gather": {0: "weight"},  # a float table indexed by token ids: an embedding
    # Recurrent layers: W (input-hidden), R (hidden-hidden), B, and LSTM's peepholes P.
    "GRU": {1: "weight_ih", 2: "weight_hh", 3: "bias"},
    "RNN": {1: "weight_ih", 2: "weight_hh", 3: "bias"},
    "LSTM": {1: "weight_ih", 2: "weight_hh", 3: "bias", 7: "peephole"},
    # A per-channel constant added or multiplied in is a layer's bias or scale (Caffe Scale, Keras
    # Dense bias after MatMul); a scalar constant is arithmetic, not a weight.
    "Add": {0: "bias", 1: "bias"},
    "Sub": {0: "bias", 1: "bias"},
    "Mul": {0: "weight", 1: "weight"},
}
_ELEMENTWISE = {"Add", "Sub", "Mul"}
# torch's CPU convolutions and pooling run 1.2-15x faster on channels-last (NHWC-strided) 4-D
# tensors; the layout only changes strides, never values or shapes.
_CHANNELS_LAST = {"Conv", "ConvTranspose"}
# Layers whose output, when it feeds only an Add/Sub of a per-channel constant, take that constant
# as their own `bias`: one layer per source layer (Keras Dense, Caffe Scale), trained together.
_BIAS_HOSTS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Mul"}
# Constant inputs that belong to a layer but are statistics, not trained by gradient.
_STATISTICS: dict[str, dict[int, str]] = {"BatchNormalization": {3: "running_mean", 4: "running_var"}}


class OnnxLayer(nn.Module):
    """One parameterised ONNX node (and the bias Add/Sub that only follows it, if any).

    `onnx_name` is the node's name in the source graph, `layer_name` the layer `zoo layers` lists it
    under, `onnx_nodes` every node it runs and `onnx_inputs` maps each parameter or buffer to the
    ONNX tensor it was read from.
    """

    def __init__(self, node: Node, fn: Callable, slots: list[str | None], onnx_inputs: dict[str, str],
                 layer_name: str | None = None):
        super().__init__()
        self.onnx_name = node.name
        self.layer_name = layer_name or node.name  # as `zoo layers` names the layer this node belongs to
        self.op_type = node.op_type
        self.onnx_inputs = onnx_inputs  # attribute name -> ONNX tensor name it came from
        self.onnx_nodes = [node.name]  # the node, and the bias Add/Sub folded in after it if any
        self._fn = fn
        self._slots = slots  # per ONNX input: own attribute name, or None for a run-time input
        self._bias_fn: Callable | None = None
        self._bias_first = False

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def _inputs(self, xs: tuple) -> list:
        it = iter(xs)
        return [getattr(self, slot) if slot else next(it) for slot in self._slots]

    def forward(self, *xs):
        y = self._fn(*self._inputs(xs))
        if self._bias_fn is not None:
            y = self._bias_fn(self.bias, y) if self._bias_first else self._bias_fn(y, self.bias)
        return y

    def extra_repr(self) -> str:
        return f"{self.op_type} {' + '.join(map(repr, self.onnx_nodes))}"


class BatchNormLayer(OnnxLayer):
    """BatchNormalization: running statistics while frozen, batch statistics when trainable in train mode."""

    def forward(self, *xs):
        return self._fn(*self._inputs(xs), training=self.training and self.trainable)


class _ConvBatchNorm:
    """A Conv and the BatchNormalization reading only its output: one conv with folded weights
    while both are frozen and unhooked (onnxruntime fuses them too), else the two layers in turn."""

    def __init__(self, conv: OnnxLayer, bn: BatchNormLayer, eps: float):
        self.conv, self.bn, self.eps = conv, bn, eps
        self._key: tuple | None = None
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        # The folded weights are a cache: torch.save must not store a second copy of the conv.
        return {**self.__dict__, "_key": None, "_folded": None}

    def _tensors(self) -> list[torch.Tensor]:
        conv, bn = self.conv, self.bn
        extra = [conv.bias] if "bias" in conv._parameters else []
        return [conv.weight, *extra, bn.weight, bn.bias, bn.running_mean, bn.running_var]

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_tracing():
            # A trace must record the folding from the parameters, not a cached result.
            return self._fold()
        tensors = self._tensors()
        # Recompute when any tensor changed in place (_version), moved, or was cast.
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
        if key != self._key:
            with torch.no_grad():
                self._folded = self._fold()
            self._key = key
        return self._folded

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + self.eps)
        weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
        bias = conv.bias if "bias" in conv._parameters else torch.zeros_like(bn.bias)
        return weight, (bias - bn.running_mean) * scale + bn.bias

    def __call__(self, x):
        conv, bn = self.conv, self.bn
        if (conv.trainable or bn.trainable or conv._forward_hooks or bn._forward_hooks
                or conv._forward_pre_hooks or bn._forward_pre_hooks):
            return bn(conv(x))
        return conv._fn(x, *self._weights())


@dataclass
class _Step:
    call: Callable
    args: list[str]
    outputs: list[str]
    free: list[str]  # tensors no later step needs
    layer: int = -1  # index into OnnxModule.layers, or -1
    dropout: float | None = None  # ratio, for Dropout nodes


def _sanitize(name: str) -> str:
    clean = re.sub(r"\W", "_", name).strip("_") or "layer"
    return f"l_{clean}" if clean[0].isdigit() else clean


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: frozen weights, `unfreeze(top=k)` to train the top k layers.

    `layers` lists (ONNX node name, submodule) for every node with weights, in graph order; the
    submodules are attributes named after the layer `zoo layers` lists the node under (sanitized:
    `conv1`, `inception_3a_1x1`, a second node of one layer `gru_2`), so `named_parameters()` and
    `get_submodule()` read like the layers list. Dropout nodes act only in train mode and only when
    a trainable layer comes after them in graph order (they regularise what is being trained), so a
    fully frozen module is deterministic in either mode.
    """

    def __init__(self, graph: Graph):
        super().__init__()
        self.input_names: list[str] = list(graph.inputs)
        self.output_names: list[str] = list(graph.outputs)
        self.opset = graph.opset
        self._input_dtypes = graph.input_dtypes or [None] * len(graph.inputs)
        self.input_shapes = graph.input_shapes or [None] * len(graph.inputs)  # as declared in the graph
        self.layers: list[tuple[str, OnnxLayer]] = []
        self._layer_names = dict(graph.layer_names)
        self.constants = nn.Module()  # run-time constants (shapes, indices, scalars) as buffers
        self._constant_names: dict[str, str] = {}
        shared: dict[str, nn.Parameter] = {}
        steps: list[_Step] = []
        uses = Counter(name for node in graph.nodes for name in node.inputs if name)
        uses.update(graph.outputs)
        producer: dict[str, _Step] = {}
        for node, fn in zip(graph.nodes, graph.fns):
            host = self._bias_host(node, producer, uses)
            if host is not None:
                self._attach_bias(host, node, fn, shared)
                continue
            layer = self._make_layer(node, fn, shared)
            conv_step = self._conv_before(node, layer, producer, uses)
            if conv_step is not None:
                conv = self.layers[conv_step.layer][1]
                conv_step.call = _ConvBatchNorm(conv, layer, node.attrs.get("epsilon", 1e-5))
                conv_step.outputs = node.outputs
                conv_step.layer = len(self.layers)
                self.layers.append((node.name, layer))
                producer.update((name, conv_step) for name in node.outputs if name)
                continue
            args = []
            for k, name in enumerate(node.inputs):
                if layer is not None and layer._slots[k]:
                    continue
                if name and k in node.constants:
                    self._constant(name, node.constants[k])
                args.append(name)
            step = _Step(layer if layer is not None else fn, args, node.outputs, [])
            if layer is not None:
                step.layer = len(self.layers)
                self.layers.append((node.name, layer))
            if node.op_type == "Dropout":
                step.dropout = self._dropout_ratio(node)
            steps.append(step)
            producer.update((name, step) for name in node.outputs if name)
        for name in graph.outputs:
            if name in graph.constants and name not in graph.inputs:
                self._constant(name, graph.constants[name])
        self._steps = self._plan_frees(steps)

    # ---------------------------------------------------------------- construction
    def _bias_host(self, node: Node, producer: dict[str, _Step], uses: Counter) -> _Step | None:
        """The step of the layer this Add/Sub is the bias of (Keras Dense = MatMul + Add), if any."""
        if node.op_type not in ("Add", "Sub") or len(node.constants) != 1 or len(node.inputs) != 2:
            return None
        (k, value), = node.constants.items()
        x = node.inputs[1 - k]
        step = producer.get(x)
        if (step is None or step.layer < 0 or not value.is_floating_point() or value.numel() <= 1
                or uses[x] != 1 or node.op_type == "Sub" and k == 0):
            return None
        layer = self.layers[step.layer][1]
        if layer.op_type not in _BIAS_HOSTS or "bias" in layer._parameters or layer._bias_fn is not None:
            return None
        return step

    def _conv_before(self, node: Node, layer: OnnxLayer | None, producer: dict[str, _Step],
                     uses: Counter) -> _Step | None:
        """The step of the Conv whose output only this BatchNormalization reads, if any."""
        if not isinstance(layer, BatchNormLayer) or None in layer._slots[1:] or len(layer._slots) != 5:
            return None
        step = producer.get(node.inputs[0])
        if step is None or step.layer < 0 or uses[node.inputs[0]] != 1 or len(node.outputs) != 1:
            return None
        conv = self.layers[step.layer][1]
        if conv.op_type != "Conv" or conv._bias_fn is not None or not isinstance(step.call, OnnxLayer):
            return None
        return step

    def _attach_bias(self, step: _Step, node: Node, fn: Callable, shared: dict[str, nn.Parameter]) -> None:
        (k, value), = node.constants.items()
        layer = self.layers[step.layer][1]
        name = node.inputs[k]
        if name not in shared:
            shared[name] = nn.Parameter(value.detach(), requires_grad=False)
        layer.register_parameter("bias", shared[name])
        layer.onnx_inputs["bias"] = name
        layer.onnx_nodes.append(node.name)
        layer._bias_fn, layer._bias_first = fn, k == 0
        step.outputs = node.outputs  # the host's output fed only this node

    def _make_layer(self, node: Node, fn: Callable, shared: dict[str, nn.Parameter]) -> OnnxLayer | None:
        roles = _PARAMETERS.get(node.op_type, {})
        weights = {k: role for k, role in roles.items()
                   if k in node.constants and node.constants[k].is_floating_point()}
        if node.op_type in _ELEMENTWISE:
            # Only a per-channel (not scalar) constant against a run-time tensor is a layer's weight.
            weights = {k: r for k, r in weights.items() if node.constants[k].numel() > 1
                       and len(node.constants) == 1}
        if not weights:
            return None
        stats = {k: r for k, r in _STATISTICS.get(node.op_type, {}).items() if k in node.constants}
        slots: list[str | None] = [weights.get(k) or stats.get(k) for k in range(len(node.inputs))]
        onnx_inputs = {slots[k]: node.inputs[k] for k in range(len(node.inputs)) if slots[k]}
        cls = BatchNormLayer if node.op_type == "BatchNormalization" else OnnxLayer
        layer = cls(node, fn, slots, onnx_inputs, self._layer_names.get(node.name))
        for k, role in weights.items():
            name = node.inputs[k]
            if name not in shared:
                value = node.constants[k].detach()
                if node.op_type in _CHANNELS_LAST and value.dim() == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
                shared[name] = nn.Parameter(value, requires_grad=False)
            layer.register_parameter(role, shared[name])
        for k, role in stats.items():
            layer.register_buffer(role, node.constants[k].detach().clone())
        attr = _sanitize(layer.layer_name)
        base, n = attr, 2
        while hasattr(self, attr) or attr in self._modules:
            attr, n = f"{base}_{n}", n + 1
        self.add_module(attr, layer)
        return layer

    def _constant(self, name: str, value: torch.Tensor) -> None:
        if name not in self._constant_names:
            key = f"c{len(self._constant_names)}"
            self._constant_names[name] = key
            # Not persistent: they are part of the graph, not weights a checkpoint needs.
            self.constants.register_buffer(key, value.detach().clone(), persistent=False)

    @staticmethod
    def _dropout_ratio(node: Node) -> float:
        if len(node.inputs) > 1 and 1 in node.constants:
            return float(node.constants[1])
        return float(node.attrs.get("ratio", 0.5))

    def _plan_frees(self, steps: list[_Step]) -> list[_Step]:
        keep = set(self.output_names)
        seen: set[str] = set()
        for step in reversed(steps):
            step.free = [n for n in dict.fromkeys(step.args) if n and n not in seen and n not in keep
                         and n not in self._constant_names]
            seen.update(step.args)
        return steps

    # ---------------------------------------------------------------- freezing
    def freeze(self) -> OnnxModule:
        """Make every parameter non-trainable (the state right after conversion)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def unfreeze(self, top: int = 1, layers: Iterable[str] | None = None) -> OnnxModule:
        """Make exactly the top `top` parameterised layers trainable (counted from the output).

        Or, with `layers`, exactly the named layers (ONNX node names, or layer names as `zoo layers`
        shows them). Every other layer is frozen.
        """
        names = [name for name, _ in self.layers]
        if layers is not None:
            chosen = []
            for wanted_name in layers:
                by_layer = [name for name, layer in self.layers if layer.layer_name == wanted_name]
                chosen += by_layer if wanted_name not in names and by_layer else [wanted_name]
            unknown = [n for n in chosen if n not in names]
            if unknown:
                raise UnknownLayerError(
                    f"layer(s) {unknown} have no weights in this module; layers with weights: "
                    f"{', '.join(names[-8:])}{' ...' if len(names) > 8 else ''} (see .layers)")
        else:
            if not 0 <= top <= len(names):
                raise UnknownLayerError(
                    f"unfreeze(top={top}): this module has {len(names)} layers with weights; "
                    f"choose top between 0 and {len(names)}")
            chosen = names[len(names) - top:] if top else []
        self.freeze()
        wanted = set(chosen)
        for name, layer in self.layers:
            if name in wanted:
                for p in layer.parameters():
                    p.requires_grad_(True)
        return self

    def trainable_layers(self) -> list[str]:
        """ONNX names of the layers whose parameters currently train."""
        return [name for name, layer in self.layers if layer.trainable]

    # ---------------------------------------------------------------- running
    def _as_input(self, k: int, x: Any) -> torch.Tensor:
        dtype = self._input_dtypes[k]
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as exc:
                raise InputError(f"input {self.input_names[k]!r} must be a tensor or array, got "
                                 f"{type(x).__name__} ({exc})") from None
            if dtype is not None and x.dtype != dtype:
                x = x.to(dtype)
        elif dtype is not None and x.dtype != dtype and not dtype.is_floating_point:
            if x.is_floating_point() or x.is_complex():
                raise InputError(f"input {self.input_names[k]!r} takes {str(dtype).replace('torch.', '')} "
                                 f"values (e.g. token ids), got a {str(x.dtype).replace('torch.', '')} tensor")
            x = x.to(dtype)  # int32 token ids into an int64 input
        shape = self.input_shapes[k]
        if shape is not None and x.dim() != len(shape):
            # Only the rank is checked: the batch and, in convolutional nets, the spatial sizes may
            # differ from the declared ones; a wrong size fails in the op that cannot take it.
            dims = ["N", *(str(d) if d is not None else "?" for d in shape[1:])] if shape else []
            expected = ", ".join(dims)
            raise InputError(f"input {self.input_names[k]!r} must have {len(shape)} dimensions "
                             f"[{expected}], got shape {tuple(x.shape)}")
        if x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)  # see _CHANNELS_LAST
        return x

    def _bind(self, inputs: tuple, named: dict[str, Any]) -> list[Any]:
        """The inputs in graph order, from positional arguments then keywords (ONNX or sanitized name)."""
        names = self.input_names
        if len(inputs) > len(names):
            raise InputError(f"this module takes {len(names)} input(s) {names}, got {len(inputs)}")
        bound: list[Any] = list(inputs) + [None] * (len(names) - len(inputs))
        given = [True] * len(inputs) + [False] * (len(names) - len(inputs))
        by_name = {name: k for k, name in enumerate(names)}
        by_name.update({_sanitize(name): k for k, name in enumerate(names) if _sanitize(name) not in by_name})
        for key, value in named.items():
            k = by_name.get(key)
            if k is None:
                raise InputError(f"this module has no input {key!r}; its inputs are {names}")
            if given[k]:
                raise InputError(f"input {names[k]!r} given twice (by position and by name)")
            bound[k], given[k] = value, True
        missing = [name for name, ok in zip(names, given) if not ok]
        if missing:
            raise InputError(f"missing input(s) {missing}; this module takes {names}, in that order "
                             f"or by name")
        return bound

    def forward(self, *inputs, **named):
        """Run the graph on its inputs, positional in graph input order or by name.

        One graph output comes back as a tensor, several as a tuple in `output_names` order.
        """
        env: dict[str, Any] = {name: getattr(self.constants, key) for name, key in self._constant_names.items()}
        for k, (name, x) in enumerate(zip(self.input_names, self._bind(inputs, named))):
            env[name] = self._as_input(k, x)
        last_trainable = -1
        if self.training:
            last_trainable = max((i for i, (_, layer) in enumerate(self.layers) if layer.trainable),
                                 default=-1)
        layer_seen = -1
        for step in self._steps:
            args = [env[n] if n else None for n in step.args]
            if step.dropout is not None:
                out = F.dropout(args[0], step.dropout, True) if layer_seen < last_trainable else args[0]
                out = (out, torch.ones_like(out, dtype=torch.bool)) if len(step.outputs) > 1 else out
            else:
                out = step.call(*args)
            if step.layer >= 0:
                layer_seen = step.layer
            if isinstance(out, tuple):
                for name, value in zip(step.outputs, out):
                    env[name] = value
            else:
                env[step.outputs[0]] = out
            for name in step.free:
                env.pop(name, None)
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    # ---------------------------------------------------------------- TorchScript
    def scriptable(self) -> nn.Module:
        """The inference graph as an `fx.GraphModule` that `torch.jit.script` compiles (same parameters).

        Its forward takes the inputs as tensors, positional or by (sanitized) input name; input
        checks and casts, and dropout / batch statistics while training, stay with this module.
        """
        from converters.onnx_to_torch._script import scriptable

        return scriptable(self)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script(module) calls this first: the interpreted forward cannot be compiled.
        return self.scriptable()

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, outputs={self.output_names}, opset={self.opset}"
