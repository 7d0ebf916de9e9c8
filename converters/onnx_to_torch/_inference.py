"""Frozen inference: the lowered graph specialised to the current weights, as onnxruntime does it.

While nothing trains, an OnnxModule runs a second fx graph derived from its own by named passes:
`channel_shuffle` makes ShuffleNet's Reshape/Transpose/Reshape one op, `fold_affine` folds a
BatchNorm (and a Caffe Scale's per-channel Mul/Add) into the conv before it, `fold_norm_chain`
makes a BatchNorm that follows no conv (DenseNet) and its Scale and ReLU one pass,
`fuse_activation` hands the activation after a conv to the conv kernel, `prepack` reorders conv
weights once into oneDNN's blocked layout (`torch.ops.mkldnn._convolution_pointwise` takes them
as they are, where `F.conv2d` reorders on every call), and `fuse_residual` adds a ResNet's
shortcut (and ReLU) inside the conv kernel. The derived graph is a cache: it is rebuilt when any
weight changes (in place included) and never pickled; training, hooks, tracing, scripting,
torch.compile and torch.export all see the plain graph. Each fused kernel is checked against the
plain ops it replaces on a random input when the graph is built; any difference falls back to
the plain graph.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from converters.onnx_to_torch.ops import elementwise as E
from converters.onnx_to_torch.ops.nn import BatchNormLayer
from converters.onnx_to_torch.ops.tensor import reshape_static, transpose

if TYPE_CHECKING:
    from converters.onnx_to_torch._module import OnnxModule

__all__ = ["PASSES", "channel_shuffle", "fold_affine", "frozen_graph", "fuse_activation", "fuse_residual",
           "prepack"]


_MKLDNN = torch.backends.mkldnn.is_available()


@dataclass
class _Cache:
    key: tuple
    graph: fx.GraphModule | None  # None: the plain graph is used (nothing to gain, or the check failed)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    for name in ("is_compiling", "is_exporting", "is_dynamo_compiling"):
        check = getattr(compiler, name, None)
        if check is not None and check():
            return True
    return False


def state_key(module: OnnxModule, args: list) -> tuple | None:
    """What the frozen graph depends on (each weight's version and storage, the inputs' ranks), or
    None when it would not compute exactly what the plain graph does, gradients included."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling():
        return None
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    grad = torch.is_grad_enabled()
    key: list = []
    for m in module.__dict__["_watched"]:
        if m._forward_hooks or m._forward_pre_hooks:
            return None
        for p in m._parameters.values():
            if p is None:
                continue
            if p.requires_grad or p.dtype != torch.float32 or p.device.type != "cpu":
                return None
            key.append(p._version)
            key.append(p.data_ptr())
        for b in m._buffers.values():
            if b is not None:
                key.append(b._version)
                key.append(b.data_ptr())
    for a in args:
        if isinstance(a, torch.Tensor):
            if grad and a.requires_grad:
                return None
            key.append(a.dim())
            key.append(a.dtype)
    return tuple(key)


def frozen_graph(module: OnnxModule, args: list) -> fx.GraphModule | None:
    """The frozen-inference graph for these inputs, or None to run the plain graph."""
    if not _MKLDNN:
        return None
    key = state_key(module, args)
    if key is None:
        return None
    cache = module.__dict__.get("_fast")
    if cache is None or cache.key != key:
        graph = None
        try:
            with torch.no_grad():
                graph = build(module, args)
        except Exception as exc:  # noqa: BLE001 - the plain graph is always right; say why once
            warnings.warn(f"frozen inference graph not built ({type(exc).__name__}: {exc}); running the "
                          f"plain graph", RuntimeWarning, stacklevel=3)
        cache = _Cache(key, graph)
        module.__dict__["_fast"] = cache
    return cache.graph


# ---------------------------------------------------------------- building
class _Packed(nn.Module):
    """The folded and packed tensors of the frozen graph (a cache, never saved)."""


def _worth_building(plain: fx.GraphModule) -> bool:
    """Whether any pass can change the graph: it has a 2-D conv with a weight, or a BatchNorm."""
    for node in plain.graph.nodes:
        if node.op == "call_function" and node.target in (torch.conv2d, F.conv2d):
            return True
        if node.op == "call_module" and isinstance(_attr(plain, node.target), BatchNormLayer):
            return True
    return False


def build(module: OnnxModule, args: list) -> fx.GraphModule | None:
    plain = module.graph_module
    if not _worth_building(plain):
        return None
    graph = fx.Graph()
    values: dict = {}
    out = graph.graph_copy(plain.graph, values)
    graph.output(out)
    root = nn.Module()
    for name, child in module.named_children():
        root.add_module(name, child)
    packed = _Packed()
    root.add_module("_packed", packed)
    sizes = _input_sizes(plain, args)
    changed = False
    for rewrite in PASSES:
        changed |= rewrite(graph, root, packed, sizes)
    if not changed:
        return None
    fast = fx.GraphModule(root, graph, class_name="OnnxFrozenGraph")
    fast.graph.eliminate_dead_code()
    fast.recompile()
    for node in fast.graph.nodes:
        check = node.meta.get("check")
        if check is not None and not check.holds(node, fast):
            warnings.warn(f"frozen inference kernel for {check.name} differs from the plain ops; running the "
                          f"plain graph", RuntimeWarning, stacklevel=4)
            return None
    return fast


@dataclass
class _Check:
    """A fused conv and the plain ops it replaces, compared on a random input of the conv's size."""

    name: str
    size: list[int]
    reference: list  # callables applied in turn: the plain conv, then what was folded or fused

    def holds(self, node: fx.Node, fast: fx.GraphModule) -> bool:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn([1, *self.size[1:]], generator=gen).contiguous(memory_format=torch.channels_last)
        want = x
        for step in self.reference:
            want = step(want)
        args = [x if a is node.args[0] else _attr(fast, a.target) if isinstance(a, fx.Node) else a
                for a in node.args]
        got = node.target(*args)
        scale = max(1.0, float(want.abs().max()))
        return got.shape == want.shape and float((got - want).abs().max()) <= 1e-4 * scale


def _input_sizes(plain: fx.GraphModule, args: list) -> dict[str, list[int]]:
    """The input shape of every conv call, from one run of the plain graph (oneDNN packs for a size)."""
    sizes: dict[str, list[int]] = {}

    class Recorder(fx.Interpreter):
        def call_function(self, target, fargs, kwargs):
            if target is torch.conv2d or target is F.conv2d:
                sizes[self._current] = list(fargs[0].shape)
            return super().call_function(target, fargs, kwargs)

        def run_node(self, n):
            self._current = n.name
            return super().run_node(n)

    Recorder(plain).run(*args)
    return sizes


def _attr(root: nn.Module, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _conv_nodes(graph: fx.Graph):
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (torch.conv2d, F.conv2d) and len(node.args) >= 2:
            w = node.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                yield node


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _store(graph: fx.Graph, packed: nn.Module, node: fx.Node, tensor: torch.Tensor) -> fx.Node:
    name = f"t{len(packed._buffers)}"
    packed.register_buffer(name, tensor, persistent=False)
    with graph.inserting_before(node):
        return graph.get_attr(f"_packed.{name}")


def _per_channel(value: Any, root: nn.Module, channels: int) -> torch.Tensor | None:
    """A get_attr tensor holding one value per channel of an NCHW output ((C,1,1) or (1,C,1,1)), flat."""
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        return None
    t = _attr(root, value.target)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() not in (3, 4):
        return None
    if t.shape[-3] != channels or t.numel() != channels:
        return None
    return t.reshape(-1)


def fold_affine(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """conv -> BatchNorm / per-channel Mul / per-channel Add, each the only reader: one conv, folded weights."""
    changed = False
    for conv in _conv_nodes(graph):
        weight = _attr(root, conv.args[1].target)
        bias_arg = conv.args[2] if len(conv.args) > 2 else conv.kwargs.get("bias")
        bias = _attr(root, bias_arg.target) if isinstance(bias_arg, fx.Node) else None
        w, b = weight.detach().clone(), (bias.detach().clone() if bias is not None else torch.zeros(weight.shape[0]))
        last, folded = conv, False
        steps = conv.meta.setdefault("steps", [])
        while True:
            user = _only_user(last)
            if user is None:
                break
            channels = w.shape[0]
            if user.op == "call_module" and isinstance(_attr(root, user.target), BatchNormLayer):
                bn = _attr(root, user.target)
                steps.append(bn)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = w * scale.reshape(-1, 1, 1, 1)
                b = (b - bn.running_mean) * scale + bn.bias
            elif user.op == "call_function" and user.target in (torch.mul, operator.mul) and last in user.args:
                other = user.args[1] if user.args[0] is last else user.args[0]
                s = _per_channel(other, root, channels)
                if s is None:
                    break
                steps.append(_times(_attr(root, other.target)))
                w, b = w * s.reshape(-1, 1, 1, 1), b * s
            elif user.op == "call_function" and user.target in (torch.add, operator.add) and last in user.args \
                    and len(user.args) == 2:
                other = user.args[1] if user.args[0] is last else user.args[0]
                s = _per_channel(other, root, channels)
                if s is None:
                    break
                steps.append(_plus(_attr(root, other.target)))
                b = b + s
            else:
                break
            user.replace_all_uses_with(last)
            graph.erase_node(user)
            folded = True
        if folded:
            conv.meta["original"] = (weight, bias)
            args = list(conv.args)
            args[1] = _store(graph, packed, conv, w.contiguous(memory_format=torch.channels_last))
            if len(args) > 2:
                args[2] = _store(graph, packed, conv, b)
                conv.args = tuple(args)
            else:
                conv.args = tuple(args)
                conv.kwargs = {**conv.kwargs, "bias": _store(graph, packed, conv, b)}
            changed = True
    return changed


def _times(t: torch.Tensor):
    return lambda y: y * t


def _plus(t: torch.Tensor):
    return lambda y: y + t


def _activation(node: fx.Node):
    target, rest = node.target, node.args[1:]
    return lambda y: target(y, *rest)


# activation call -> (oneDNN post-op, its scalars, algorithm)
def _post_op(node: fx.Node) -> tuple[str, list, str] | None:
    t, a = node.target, node.args
    if t in (torch.relu, F.relu) and len(a) == 1:
        return "relu", [], ""
    if t is torch.sigmoid and len(a) == 1:
        return "sigmoid", [], ""
    if t is torch.tanh and len(a) == 1:
        return "tanh", [], ""
    if t is F.hardswish and len(a) == 1:
        return "hardswish", [], ""
    if t is E.leaky_relu and len(a) == 2:
        return "leaky_relu", [float(a[1])], ""
    if t is torch.clamp and len(a) == 3 and a[1] is not None and a[2] is not None:
        return "hardtanh", [float(a[1]), float(a[2])], ""
    if t is E.gelu and len(a) == 2:
        return "gelu", [], str(a[1])
    if t is E.swish and len(a) == 2 and float(a[1]) == 1.0:
        return "swish", [], ""
    return None


def fuse_activation(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """Mark the activation that alone reads a conv's output to run inside the conv kernel."""
    changed = False
    for conv in _conv_nodes(graph):
        user = _only_user(conv)
        if user is None or user.op != "call_function" or conv.name not in sizes:
            continue
        post = _post_op(user)
        if post is None:
            continue
        conv.meta["post_op"] = post
        conv.meta.setdefault("steps", []).append(_activation(user))
        user.replace_all_uses_with(conv)
        graph.erase_node(user)
        changed = True
    return changed


def prepack(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """Every 2-D float conv as oneDNN's fused kernel on weights packed once for its input size."""
    changed = False
    for conv in _conv_nodes(graph):
        size = sizes.get(conv.name)
        args = list(conv.args) + [None] * (7 - len(conv.args))
        x, w_node, b_node, stride, padding, dilation, groups = args[:7]
        stride, padding = stride or [1, 1], padding if padding is not None else [0, 0]
        dilation, groups = dilation or [1, 1], groups or 1
        if size is None or not isinstance(padding, (list, tuple)) or any(isinstance(v, fx.Node) for v in
                                                                         [*stride, *padding, *dilation]):
            continue
        weight = _attr(root, w_node.target)
        if weight.dim() != 4 or weight.dtype != torch.float32:
            continue
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        original = conv.meta.get("original", (weight, _attr(root, b_node.target) if isinstance(b_node, fx.Node)
                                              else None))
        w = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach().contiguous(memory_format=torch.channels_last), padding, stride, dilation, int(groups), size)
        op_name, scalars, algorithm = conv.meta.get("post_op", ("none", [], ""))
        with graph.inserting_before(conv):
            w_attr = _store(graph, packed, conv, w)
            fused = graph.call_function(torch.ops.mkldnn._convolution_pointwise.default,
                                        (x, w_attr, b_node, padding, stride, dilation, int(groups), op_name,
                                         scalars or [None], algorithm or ""))
        fused.meta["check"] = _Check(conv.name, size, [_plain_conv(*original, stride, padding, dilation, int(groups)),
                                                         *conv.meta.get("steps", [])])
        conv.replace_all_uses_with(fused)
        graph.erase_node(conv)
        changed = True
    return changed


def _plain_conv(weight, bias, stride, padding, dilation, groups):
    return lambda x: F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, relu: bool) -> torch.Tensor:
    """x * scale + shift per channel in one pass (batch_norm's kernel), then an in-place ReLU."""
    zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
    y = torch.batch_norm(x, scale, shift, zeros, ones, False, 0.0, 0.0, True)
    return y.relu_() if relu else y


def fold_norm_chain(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """A frozen BatchNorm not after a conv (pre-activation nets: DenseNet), the Caffe Scale Mul/Add after
    it and the ReLU after that: one per-channel affine pass and an in-place ReLU, not four passes."""
    changed = False
    for bn_node in list(graph.nodes):
        if bn_node.op != "call_module" or not isinstance(_attr(root, bn_node.target), BatchNormLayer):
            continue
        bn = _attr(root, bn_node.target)
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        t = (bn.bias - bn.running_mean * s).detach()
        chain = [bn_node]
        while True:
            user = _only_user(chain[-1])
            if user is None or user.op != "call_function" or len(user.args) != 2 or chain[-1] not in user.args:
                break
            other = user.args[1] if user.args[0] is chain[-1] else user.args[0]
            v = _per_channel(other, root, s.numel())
            if v is None or user.target not in (torch.mul, operator.mul, torch.add, operator.add):
                break
            if user.target in (torch.mul, operator.mul):
                s, t = s * v, t * v
            else:
                t = t + v
            chain.append(user)
        user = _only_user(chain[-1])
        relu = user is not None and user.op == "call_function" and user.target in (torch.relu, F.relu)
        if relu:
            chain.append(user)
        end = chain[-1]
        with graph.inserting_before(end):
            new = graph.call_function(affine, (bn_node.args[0], _store(graph, packed, end, s),
                                               _store(graph, packed, end, t), relu))
        end.replace_all_uses_with(new)
        for node in reversed(chain):
            graph.erase_node(node)
        changed = True
    return changed


def channel_shuffle(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """ShuffleNet's Reshape [N, g, C/g, H, W] -> Transpose(0, 2, 1, 3, 4) -> Reshape [N, C, H, W] as one
    channel shuffle, which keeps the channels-last layout (the reshapes copy it twice)."""
    def is_reshape(n: fx.Node | None) -> bool:
        return n is not None and n.op == "call_function" and (
            n.target is torch.reshape or (n.target is reshape_static and not n.args[2]))

    changed = False
    for node in list(graph.nodes):
        if not is_reshape(node):
            continue
        split = node.args[1]
        t = _only_user(node)
        if t is None or t.target is not transpose or list(t.args[1]) != [0, 2, 1, 3, 4]:
            continue
        merge = _only_user(t)
        if not is_reshape(merge) or len(split) != 5:
            continue
        out = merge.args[1]
        if len(out) != 4 or out[1] != split[1] * split[2] or list(out[2:]) != list(split[3:]):
            continue
        with graph.inserting_before(merge):
            shuffled = graph.call_function(F.channel_shuffle, (node.args[0], int(split[1])))
        merge.replace_all_uses_with(shuffled)
        for dead in (merge, t, node):
            graph.erase_node(dead)
        changed = True
    return changed


def fuse_residual(graph: fx.Graph, root: nn.Module, packed: nn.Module, sizes: dict) -> bool:
    """A packed conv whose only reader adds a residual (then, optionally, a ReLU): one oneDNN kernel."""
    changed = False
    conv_op = torch.ops.mkldnn._convolution_pointwise.default
    for conv in list(graph.nodes):
        if conv.op != "call_function" or conv.target is not conv_op or conv.args[7] != "none":
            continue
        add = _only_user(conv)
        if add is None or add.target not in (torch.add, operator.add) or len(add.args) != 2 or add.kwargs:
            continue
        other = add.args[1] if add.args[0] is conv else add.args[0]
        if not isinstance(other, fx.Node) or other is conv:
            continue
        relu = _only_user(add)
        unary = "relu" if relu is not None and relu.target in (torch.relu, F.relu) else None
        last = relu if unary else add
        x, w, b, padding, stride, dilation, groups = conv.args[:7]
        with graph.inserting_before(last):
            fused = graph.call_function(torch.ops.mkldnn._convolution_pointwise.binary,
                                        (x, other, w, b, padding, stride, dilation, groups, "add", 1.0, unary, [], ""))
        check = conv.meta.get("check")
        if check is not None:
            fused.meta["check"] = _ResidualCheck(check, unary is not None)
        last.replace_all_uses_with(fused)
        for dead in ([relu] if unary else []) + [add, conv]:
            graph.erase_node(dead)
        changed = True
    return changed


@dataclass
class _ResidualCheck:
    """The conv's own check, then conv + residual (+ ReLU) on random inputs."""

    conv: _Check
    relu: bool

    @property
    def name(self) -> str:
        return self.conv.name

    def holds(self, node: fx.Node, fast: fx.GraphModule) -> bool:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn([1, *self.conv.size[1:]], generator=gen).contiguous(memory_format=torch.channels_last)
        y = x
        for step in self.conv.reference:
            y = step(y)
        other = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
        want = torch.relu(y + other) if self.relu else y + other
        args = [x if a is node.args[0] else other if a is node.args[1] else _attr(fast, a.target)
                if isinstance(a, fx.Node) else a for a in node.args]
        got = node.target(*args)
        return got.shape == want.shape and float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def _pair(value: Any) -> list[int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * 2 if len(values) == 1 else values


PASSES = [channel_shuffle, fold_affine, fold_norm_chain, fuse_activation, prepack, fuse_residual]
