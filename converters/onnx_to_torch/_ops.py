"""The ONNX op table: for each op type, a factory that turns a node's attributes into a torch function."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

OpFn = Callable[..., Any]


class Unsupported(Exception):
    """A node uses an op, attribute value or input form this converter cannot translate."""


@dataclass
class Node:
    """One ONNX node with its attributes decoded to Python values and the model's opset."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    # Inputs known at conversion time (initializers and folded constants), by input position.
    constants: dict[int, torch.Tensor] = field(default_factory=dict)


class OpFunction:
    """A node's torch function that pickles as its op type and attributes (rebuilt on load), so
    `torch.save` of a whole module works where pickling the closures the factories return would not."""

    def __init__(self, node: Node):
        # Without `constants`: the weights are pickled once, as the module's parameters.
        self.node = Node(node.name, node.op_type, list(node.inputs), list(node.outputs), dict(node.attrs),
                         node.opset)
        self.fn = OPS[node.op_type](self.node)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return OpFunction, (self.node,)


ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}

OPS: dict[str, Callable[[Node], OpFn]] = {}


def op(*names: str):
    """Register a factory under one or more ONNX op types."""

    def register(factory):
        for name in names:
            OPS[name] = factory
        return factory

    return register


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _sizes(t: torch.Tensor) -> list:
    """A shape tensor as sizes for torch: ints, or 0-d tensors while tracing so that sizes computed
    from the input's shape (tf2onnx's Shape -> Concat -> Reshape) stay dynamic in torch.onnx.export."""
    return list(t.reshape(-1)) if torch.jit.is_tracing() else _ints(t)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _fnd(name: str, n: int):
    """F.<name>{1,2,3}d for n spatial dimensions."""
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-D {name}")
    return getattr(F, f"{name}{n}d")


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """ONNX-style per-axis (begin, end) pads for the trailing axes -> F.pad's last-axis-first list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


# ---------------------------------------------------------------- element-wise
def _unary(fn):
    return lambda node: fn


for _name, _fn in {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Relu": F.relu,
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sin": torch.sin,
    "Cos": torch.cos, "Sign": torch.sign, "Not": torch.logical_not, "Softsign": F.softsign,
    "Round": torch.round, "IsNaN": torch.isnan,
}.items():
    OPS[_name] = _unary(_fn)


@op("Identity", "Dropout")
def _identity(node: Node) -> OpFn:
    # Dropout is the identity at inference; training-time dropout is handled by the module.
    if node.op_type == "Dropout" and len([o for o in node.outputs if o]) > 1:
        return lambda x, *rest: (x, torch.ones_like(x, dtype=torch.bool))
    return lambda x, *rest: x


def _legacy_broadcast(node: Node, fn):
    # Opset < 7 binary ops broadcast B from `axis` of A (Caffe2-era models).
    axis = node.attrs.get("axis")
    if node.opset >= 7 or not node.attrs.get("broadcast") or axis is None:
        return fn

    def wrapped(a, b):
        ax = _axis(axis, a.dim())
        return fn(a, b.reshape(tuple(b.shape) + (1,) * (a.dim() - ax - b.dim())))

    return wrapped


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(a, b):
    return torch.pow(a, b).to(a.dtype)


_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": _pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = functools.partial(lambda node, fn: _legacy_broadcast(node, fn), fn=_fn)


@op("Mod")
def _mod(node: Node) -> OpFn:
    return torch.fmod if node.attrs.get("fmod", 0) else torch.remainder


@op("Max", "Min", "Sum", "Mean")
def _variadic(node: Node) -> OpFn:
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[node.op_type]
    mean = node.op_type == "Mean"

    def run(*xs):
        out = functools.reduce(fn, xs)
        return out / len(xs) if mean else out

    return run


@op("LeakyRelu")
def _leaky_relu(node: Node) -> OpFn:
    slope = node.attrs.get("alpha", 0.01)
    return lambda x: F.leaky_relu(x, slope)


@op("Elu")
def _elu(node: Node) -> OpFn:
    alpha = node.attrs.get("alpha", 1.0)
    return lambda x: F.elu(x, alpha)


@op("Selu")
def _selu(node: Node) -> OpFn:
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("PRelu")
def _prelu(node: Node) -> OpFn:
    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@op("HardSigmoid")
def _hard_sigmoid(node: Node) -> OpFn:
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@op("HardSwish")
def _hard_swish(node: Node) -> OpFn:
    return F.hardswish


@op("Softplus")
def _softplus(node: Node) -> OpFn:
    return F.softplus


@op("Gelu")
def _gelu(node: Node) -> OpFn:
    approximate = node.attrs.get("approximate", "none")
    return lambda x: F.gelu(x, approximate=approximate)


@op("Clip")
def _clip(node: Node) -> OpFn:
    if node.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return lambda x: torch.clamp(x, lo, hi)

    def run(x, lo=None, hi=None):
        return torch.clamp(x, lo.to(x.dtype) if lo is not None else None,
                           hi.to(x.dtype) if hi is not None else None)

    return run


@op("Where")
def _where(node: Node) -> OpFn:
    return lambda c, a, b: torch.where(c.bool(), a, b)


@op("Cast")
def _cast(node: Node) -> OpFn:
    to = node.attrs["to"]
    if to not in ONNX_DTYPES:
        raise Unsupported(f"Cast to ONNX dtype {to}")
    dtype = ONNX_DTYPES[to]
    return lambda x: x.to(dtype)


@op("CastLike")
def _cast_like(node: Node) -> OpFn:
    return lambda x, like: x.to(like.dtype)


# ---------------------------------------------------------------- softmax family
def _softmax_family(node: Node, fn) -> OpFn:
    if node.opset < 13:
        # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the second dim.
        axis = node.attrs.get("axis", 1)

        def run(x):
            ax = _axis(axis, x.dim())
            flat = x.reshape(math.prod(x.shape[:ax]), -1)
            return fn(flat, 1).reshape(x.shape)

        return run
    axis = node.attrs.get("axis", -1)
    return lambda x: fn(x, axis)


def _hardmax(x, dim):
    return F.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim).to(x.dtype)


@op("Softmax")
def _softmax(node: Node) -> OpFn:
    return _softmax_family(node, lambda x, d: torch.softmax(x, d))


@op("LogSoftmax")
def _log_softmax(node: Node) -> OpFn:
    return _softmax_family(node, lambda x, d: torch.log_softmax(x, d))


@op("Hardmax")
def _hardmax_op(node: Node) -> OpFn:
    return _softmax_family(node, _hardmax)


# ---------------------------------------------------------------- convolution, pooling, normalisation
def _same_pads(in_size: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               upper: bool) -> tuple[list[int], list[int]]:
    begin, end = [], []
    for i, k, s, d in zip(in_size, kernel, strides, dilations):
        out = -(-i // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
        small = total // 2
        begin.append(small if upper else total - small)
        end.append(total - small if upper else small)
    return begin, end


class _Window:
    """Kernel, strides, dilations and padding of a Conv or pooling node (auto_pad resolved at run time)."""

    def __init__(self, node: Node, kernel: list[int] | None):
        a = node.attrs
        self.kernel = list(a.get("kernel_shape", kernel or []))
        n = len(self.kernel) if self.kernel else None
        self.auto_pad = a.get("auto_pad", "NOTSET")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise Unsupported(f"auto_pad={self.auto_pad!r}")
        self.strides = list(a.get("strides", [])) or None
        self.dilations = list(a.get("dilations", [])) or None
        pads = list(a.get("pads", []))
        self.pads = (pads[: len(pads) // 2], pads[len(pads) // 2:]) if pads else None
        if n is not None:
            self._fill(n)

    def _fill(self, n: int) -> None:
        self.strides = self.strides or [1] * n
        self.dilations = self.dilations or [1] * n

    def resolve(self, x: torch.Tensor, kernel: list[int]) -> tuple[list[int], list[int]]:
        """(begin, end) pads for input x."""
        n = len(kernel)
        self._fill(n)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return _same_pads(list(x.shape[2:]), kernel, self.strides, self.dilations,
                              self.auto_pad == "SAME_UPPER")
        if self.auto_pad == "VALID" or self.pads is None:
            return [0] * n, [0] * n
        return self.pads


@op("Conv")
def _conv(node: Node) -> OpFn:
    win = _Window(node, None)
    group = node.attrs.get("group", 1)

    def run(x, w, b=None):
        kernel = list(w.shape[2:])
        begin, end = win.resolve(x, kernel)
        conv = _fnd("conv", len(kernel))
        if begin != end:
            x = F.pad(x, _torch_pad(begin, end))
            begin = [0] * len(kernel)
        return conv(x, w, b, win.strides, begin, win.dilations, group)

    return run


@op("ConvTranspose")
def _conv_transpose(node: Node) -> OpFn:
    a = node.attrs
    win = _Window(node, None)
    group = a.get("group", 1)
    output_padding = list(a.get("output_padding", []))
    output_shape = list(a.get("output_shape", []))

    def run(x, w, b=None):
        kernel = list(w.shape[2:])
        n = len(kernel)
        win.resolve(x, kernel)
        strides, dil = win.strides, win.dilations
        extra = output_padding or [0] * n
        # Full-size transposed conv, then crop (pads) or grow (output_padding) each axis.
        y = _fnd("conv_transpose", n)(x, w, None, strides, 0, 0, group, dil)
        full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(x.shape[2:], strides, kernel, dil)]
        if output_shape or win.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = output_shape[-n:] if output_shape else [i * s for i, s in zip(x.shape[2:], strides)]
            total = [f + e - t for f, e, t in zip(full, extra, target)]
            upper = win.auto_pad == "SAME_UPPER"  # NOTSET with output_shape pads like SAME_LOWER
            begin = [t // 2 if upper else t - t // 2 for t in total]
            end = [t - bb for t, bb in zip(total, begin)]
        else:
            begin, end = win.resolve(x, kernel)
        end = [e - p for e, p in zip(end, extra)]
        if any(begin) or any(end):
            y = F.pad(y, _torch_pad([-v for v in begin], [-v for v in end]))
        if b is not None:
            y = y + b.reshape((1, -1) + (1,) * n)
        return y

    return run


def _pool_out_size(i: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool) -> int:
    """Output length as onnxruntime computes it (a ceil window must start inside input or left pad)."""
    span = i + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= i + pb:
        out -= 1
    return out


class _Pool:
    def __init__(self, node: Node):
        a = node.attrs
        self.win = _Window(node, None)
        self.kernel = self.win.kernel
        self.ceil = bool(a.get("ceil_mode", 0))
        self.include_pad = bool(a.get("count_include_pad", 0))
        if a.get("storage_order", 0):
            raise Unsupported("storage_order=1")
        self.n = len(self.kernel)
        if node.op_type == "AveragePool" and any(d != 1 for d in self.win.dilations or [1]):
            raise Unsupported("AveragePool with dilations")

    def layout(self, x):
        k = self.kernel
        begin, end = self.win.resolve(x, k)
        sizes = [_pool_out_size(i, kk, s, d, b, e, self.ceil) for i, kk, s, d, b, e in
                 zip(x.shape[2:], k, self.win.strides, self.win.dilations, begin, end)]
        return begin, end, sizes

    def native_ok(self, x, begin, end, sizes) -> bool:
        # torch's own padding is symmetric, at most half the kernel, with the same ceil rule.
        if begin != end or any(2 * p > kk for p, kk in zip(begin, self.kernel)):
            return False
        for i, kk, s, d, p, o in zip(x.shape[2:], self.kernel, self.win.strides, self.win.dilations,
                                     begin, sizes):
            if _pool_out_size(i, kk, s, d, p, p, self.ceil) != o:
                return False
        return True

    def explicit_end(self, x, begin, sizes) -> list[int]:
        """End pads so that a floor-mode pool over the padded input gives exactly `sizes`."""
        return [(o - 1) * s + d * (kk - 1) + 1 - i - b for i, kk, s, d, b, o in
                zip(x.shape[2:], self.kernel, self.win.strides, self.win.dilations, begin, sizes)]


@op("MaxPool")
def _max_pool(node: Node) -> OpFn:
    pool = _Pool(node)
    if len([o for o in node.outputs if o]) > 1:
        raise Unsupported("MaxPool with an Indices output")

    def run(x):
        if x.dim() == 4:
            # torch's NCHW max pooling is ~15x slower than its channels-last kernel on CPU.
            x = x.contiguous(memory_format=torch.channels_last)
        begin, end, sizes = pool.layout(x)
        fn = _fnd("max_pool", pool.n)
        if pool.native_ok(x, begin, end, sizes):
            return fn(x, pool.kernel, pool.win.strides, begin, pool.win.dilations, pool.ceil)
        xp = F.pad(x, _torch_pad(begin, pool.explicit_end(x, begin, sizes)), value=-math.inf)
        return fn(xp, pool.kernel, pool.win.strides, 0, pool.win.dilations)

    return run


@op("AveragePool")
def _avg_pool(node: Node) -> OpFn:
    pool = _Pool(node)

    def run(x):
        begin, end, sizes = pool.layout(x)
        fn = _fnd("avg_pool", pool.n)
        if pool.native_ok(x, begin, end, sizes):
            return fn(x, pool.kernel, pool.win.strides, begin, pool.ceil, pool.include_pad)
        # Sum over the window / count of the cells that count (input, plus explicit pads if included).
        grow = pool.explicit_end(x, begin, sizes)
        xp = F.pad(x, _torch_pad(begin, grow))
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        if pool.include_pad:
            ones = F.pad(ones, _torch_pad(begin, end), value=1.0)
            mask = F.pad(ones, _torch_pad([0] * pool.n, [g - e for g, e in zip(grow, end)]))
        else:
            mask = F.pad(ones, _torch_pad(begin, grow))
        return fn(xp, pool.kernel, pool.win.strides, 0) / fn(mask, pool.kernel, pool.win.strides, 0)

    return run


@op("GlobalAveragePool")
def _global_avg_pool(node: Node) -> OpFn:
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(node: Node) -> OpFn:
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("LRN")
def _lrn(node: Node) -> OpFn:
    a = node.attrs
    size, alpha, beta, bias = a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    front, back = (size - 1) // 2, size // 2  # ONNX: floor((size-1)/2) before, ceil((size-1)/2) after

    def run(x):
        sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
        sq = F.pad(sq, (0, 0, front, back))
        mean = F.avg_pool2d(sq, (size, 1), stride=1).reshape(x.shape)
        return x / (bias + alpha * mean) ** beta

    return run


@op("BatchNormalization")
def _batch_norm(node: Node) -> OpFn:
    a = node.attrs
    if node.opset < 9 and a.get("spatial", 1) == 0:
        raise Unsupported("BatchNormalization with spatial=0")
    if a.get("training_mode", 0):
        raise Unsupported("BatchNormalization with training_mode=1")
    eps = a.get("epsilon", 1e-5)
    momentum = 1.0 - a.get("momentum", 0.9)  # ONNX keeps `momentum` of the old value, torch of the new

    def run(x, scale, bias, mean, var, training: bool = False):
        return F.batch_norm(x, mean, var, scale, bias, training, momentum, eps)

    return run


@op("InstanceNormalization")
def _instance_norm(node: Node) -> OpFn:
    eps = node.attrs.get("epsilon", 1e-5)
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@op("LayerNormalization")
def _layer_norm(node: Node) -> OpFn:
    axis, eps = node.attrs.get("axis", -1), node.attrs.get("epsilon", 1e-5)
    if len([o for o in node.outputs if o]) > 1:
        raise Unsupported("LayerNormalization with Mean/InvStdDev outputs")

    def run(x, scale, bias=None):
        shape = tuple(x.shape[_axis(axis, x.dim()):])
        return F.layer_norm(x, shape, scale.reshape(shape),
                            None if bias is None else bias.reshape(shape), eps)

    return run


@op("Gemm")
def _gemm(node: Node) -> OpFn:
    a = node.attrs
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)

    def run(x, w, c=None):
        if trans_a:
            x = x.t()
        if alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
            return F.linear(x, w if trans_b else w.t(), c)
        y = x @ (w.t() if trans_b else w)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return y

    return run


@op("MatMul")
def _matmul(node: Node) -> OpFn:
    return torch.matmul


# ---------------------------------------------------------------- shapes and indexing
@op("Shape")
def _shape(node: Node) -> OpFn:
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    def run(x):
        if torch.jit.is_tracing():
            return torch._shape_as_tensor(x)[start:end]  # a traced Shape op, not a constant
        return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)

    return run


@op("Size")
def _size(node: Node) -> OpFn:
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@op("Constant")
def _constant(node: Node) -> OpFn:
    a = node.attrs
    if "value" in a:
        value = torch.from_numpy(np.array(a["value"]))
    elif "value_float" in a:
        value = torch.tensor(a["value_float"], dtype=torch.float32)
    elif "value_floats" in a:
        value = torch.tensor(a["value_floats"], dtype=torch.float32)
    elif "value_int" in a:
        value = torch.tensor(a["value_int"], dtype=torch.int64)
    elif "value_ints" in a:
        value = torch.tensor(a["value_ints"], dtype=torch.int64)
    else:
        raise Unsupported(f"Constant with attribute {sorted(a)}")
    return lambda: value


@op("ConstantOfShape")
def _constant_of_shape(node: Node) -> OpFn:
    value = node.attrs.get("value")
    fill = torch.from_numpy(np.array(value).reshape(-1)) if value is not None else torch.zeros(1)
    return lambda shape: torch.full(_sizes(shape), fill.item(), dtype=fill.dtype, device=shape.device)


@op("Reshape")
def _reshape(node: Node) -> OpFn:
    allow_zero = node.attrs.get("allowzero", 0)
    if node.opset < 5:
        fixed = list(node.attrs["shape"])
        return lambda x: _do_reshape(x, fixed, allow_zero)
    return lambda x, shape: _do_reshape(x, _sizes(shape), allow_zero)


def _do_reshape(x, shape: list, allow_zero: int):
    if not allow_zero:
        # While tracing, `s == 0` is decided at trace time: right for constant shapes, and a size
        # read from the input is never 0.
        shape = [x.shape[i] if bool(s == 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(node: Node) -> OpFn:
    axis = node.attrs.get("axis", 1)

    def run(x):
        ax = _axis(axis, x.dim())
        return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))

    return run


@op("Transpose")
def _transpose(node: Node) -> OpFn:
    perm = node.attrs.get("perm")
    return lambda x: x.permute(perm if perm is not None else list(range(x.dim()))[::-1])


@op("Squeeze")
def _squeeze(node: Node) -> OpFn:
    fixed = node.attrs.get("axes")

    def run(x, axes=None):
        dims = fixed if node.opset < 13 else (_ints(axes) if axes is not None else None)
        if not dims:
            return x.squeeze()
        # One axis at a time, highest first: torch.onnx's TorchScript exporter takes no dim tuple.
        for d in sorted((_axis(d, x.dim()) for d in dims), reverse=True):
            x = x.squeeze(d)
        return x

    return run


@op("Unsqueeze")
def _unsqueeze(node: Node) -> OpFn:
    fixed = node.attrs.get("axes")

    def run(x, axes=None):
        dims = fixed if node.opset < 13 else _ints(axes)
        rank = x.dim() + len(dims)
        for d in sorted(_axis(d, rank) for d in dims):
            x = x.unsqueeze(d)
        return x

    return run


@op("Concat")
def _concat(node: Node) -> OpFn:
    axis = node.attrs.get("axis", 1)  # opset < 4 defaulted to 1

    def run(*xs):
        xs = [x for x in xs if x is not None and (x.numel() or x.dim() > 1)] or list(xs[:1])
        if len(xs) > 1 and len({x.dtype for x in xs}) > 1:
            xs = [x.to(xs[0].dtype) for x in xs]
        return torch.cat(xs, axis)

    return run


@op("Split")
def _split(node: Node) -> OpFn:
    axis = node.attrs.get("axis", 0)
    count = len(node.outputs)
    fixed = node.attrs.get("split")
    num_outputs = node.attrs.get("num_outputs")

    def run(x, split=None):
        sizes = list(fixed) if fixed else _ints(split) if split is not None else None
        dim = x.shape[_axis(axis, x.dim())]
        if not sizes:
            n = num_outputs or count
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - i * chunk) for i in range(n)]
        return tuple(torch.split(x, sizes, axis))

    return run


@op("Slice")
def _slice(node: Node) -> OpFn:
    a = node.attrs

    def run(x, starts=None, ends=None, axes=None, steps=None):
        if node.opset < 10:
            s, e, ax, st = list(a["starts"]), list(a["ends"]), a.get("axes"), None
        else:
            s, e, ax, st = _ints(starts), _ints(ends), _ints(axes) if axes is not None else None, (
                _ints(steps) if steps is not None else None)
        ax = list(ax) if ax else list(range(len(s)))
        st = st or [1] * len(s)
        index: list[Any] = [slice(None)] * x.dim()
        flips = []
        for start, end, axis, step in zip(s, e, ax, st):
            axis = _axis(axis, x.dim())
            dim = x.shape[axis]
            if step > 0:
                index[axis] = slice(*slice(start, end, step).indices(dim))
            else:
                # torch has no negative steps: take the indices explicitly.
                start = max(0, min(dim - 1, start + dim if start < 0 else start))
                end = max(-1, min(dim - 1, end + dim if end < 0 else end))
                flips.append((axis, torch.arange(start, end, step, device=x.device)))
        y = x[tuple(index)]
        for axis, idx in flips:
            y = y.index_select(axis, idx)
        return y

    return run


@op("Gather")
def _gather(node: Node) -> OpFn:
    axis = node.attrs.get("axis", 0)

    def run(x, idx):
        ax = _axis(axis, x.dim())
        idx = idx.long()
        idx = torch.where(idx < 0, idx + x.shape[ax], idx)
        out = x.index_select(ax, idx.reshape(-1))
        return out.reshape(tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1:]))

    return run


@op("GatherElements")
def _gather_elements(node: Node) -> OpFn:
    axis = node.attrs.get("axis", 0)

    def run(x, idx):
        ax = _axis(axis, x.dim())
        idx = idx.long()
        return torch.gather(x, ax, torch.where(idx < 0, idx + x.shape[ax], idx))

    return run


@op("Expand")
def _expand(node: Node) -> OpFn:
    def run(x, shape):
        if torch.jit.is_tracing():
            # Broadcasting against zeros of the target shape expands both ways, and stays dynamic.
            zeros = torch.zeros(_sizes(shape), dtype=x.dtype, device=x.device)
            return x | zeros if x.dtype == torch.bool else x + zeros
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))

    return run


@op("Tile")
def _tile(node: Node) -> OpFn:
    return lambda x, repeats: x.repeat(_ints(repeats))


@op("Range")
def _range(node: Node) -> OpFn:
    def run(start, limit, delta):
        if torch.jit.is_tracing():
            return torch.arange(start, limit, delta, dtype=start.dtype, device=start.device)
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)

    return run


@op("Pad")
def _pad(node: Node) -> OpFn:
    a = node.attrs
    mode = a.get("mode", "constant")
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in torch_mode:
        raise Unsupported(f"Pad mode {mode!r}")

    def run(x, pads=None, value=None, axes=None):
        if node.opset < 11:
            p, v, ax = list(a.get("pads", a.get("paddings", []))), a.get("value", 0.0), None
        else:
            p = _ints(pads)
            v = value.item() if value is not None and value.numel() else 0.0
            ax = _ints(axes) if axes is not None else None
        ax = [_axis(i, x.dim()) for i in ax] if ax else list(range(x.dim()))
        n = len(ax)
        begin, end = [0] * x.dim(), [0] * x.dim()
        for i, axis in enumerate(ax):
            begin[axis], end[axis] = p[i], p[i + n]
        # F.pad lists pairs from the last axis; drop leading all-zero axes (non-constant modes need it).
        first = next((i for i in range(x.dim()) if begin[i] or end[i]), x.dim())
        spec = _torch_pad(begin[first:], end[first:])
        if not spec:
            return x
        if mode == "constant":
            return F.pad(x, spec, value=v)
        return F.pad(x, spec, mode=torch_mode[mode])

    return run


# ---------------------------------------------------------------- reductions
def _reduce(node: Node, fn) -> OpFn:
    a = node.attrs
    keep = bool(a.get("keepdims", 1))
    noop = a.get("noop_with_empty_axes", 0)
    axes_from_input = node.opset >= 18 or (node.op_type == "ReduceSum" and node.opset >= 13)
    fixed = a.get("axes")

    def run(x, axes=None):
        dims = _ints(axes) if axes_from_input and axes is not None else (
            list(fixed) if fixed is not None and not axes_from_input else [])
        if not dims:
            if noop:
                return x
            dims = list(range(x.dim()))
        return fn(x, tuple(_axis(d, x.dim()) for d in dims), keep)

    return run


_REDUCERS = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": lambda x, d, k: functools.reduce(lambda t, i: t.prod(i, keepdim=True), d, x)
    if k else functools.reduce(lambda t, i: t.prod(i, keepdim=True), d, x).squeeze(d),
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}
for _name, _fn in _REDUCERS.items():
    OPS[_name] = functools.partial(_reduce, fn=_fn)


@op("ArgMax", "ArgMin")
def _arg(node: Node) -> OpFn:
    axis, keep = node.attrs.get("axis", 0), bool(node.attrs.get("keepdims", 1))
    last = node.attrs.get("select_last_index", 0)
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin

    def run(x):
        ax = _axis(axis, x.dim())
        if last:
            return x.shape[ax] - 1 - fn(x.flip(ax), ax, keepdim=keep)
        return fn(x, ax, keepdim=keep)

    return run


# ---------------------------------------------------------------- resizing
@op("Resize", "Upsample")
def _resize(node: Node) -> OpFn:
    a = node.attrs
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize"
                  and node.opset >= 11 else "asymmetric")
    nearest_mode = a.get("nearest_mode", "round_prefer_floor")
    if node.op_type == "Resize" and node.opset < 11:
        coord = "asymmetric"
    if mode == "nearest":
        if coord == "asymmetric" and (nearest_mode == "floor" or node.opset < 11):
            torch_mode, align = "nearest", None
        elif coord == "half_pixel" and nearest_mode == "round_prefer_ceil":
            torch_mode, align = "nearest-exact", None
        else:
            raise Unsupported(f"Resize nearest with {coord} / {nearest_mode}")
    elif mode in ("linear", "bilinear"):
        if coord in ("half_pixel", "pytorch_half_pixel"):
            torch_mode, align = "linear", False
        elif coord == "align_corners":
            torch_mode, align = "linear", True
        else:
            raise Unsupported(f"Resize linear with {coord}")
    else:
        raise Unsupported(f"Resize mode {mode!r}")
    if a.get("antialias", 0) or a.get("axes") or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported("Resize with antialias, axes or keep_aspect_ratio_policy")
    fixed_scales = a.get("scales")

    def run(x, *rest):
        n = x.dim() - 2
        if node.op_type == "Upsample" and node.opset < 9:
            scales, sizes = list(fixed_scales), None
        elif node.op_type == "Upsample" or node.opset < 11:
            scales, sizes = rest[0].tolist(), None
        else:
            sc = rest[1] if len(rest) > 1 else None
            sz = rest[2] if len(rest) > 2 else None
            scales = sc.tolist() if sc is not None and sc.numel() else None
            sizes = _ints(sz) if sz is not None and sz.numel() else None
        if sizes is not None:
            out = sizes[2:]
        else:
            if scales[:2] != [1.0, 1.0]:
                raise ValueError("Resize of the batch or channel axis is not supported")
            out = [math.floor(i * s) for i, s in zip(x.shape[2:], scales[2:])]
        m = torch_mode
        if m == "linear":
            m = {1: "linear", 2: "bilinear", 3: "trilinear"}[n]
        if align is None:
            return F.interpolate(x, size=out, mode=m)
        return F.interpolate(x, size=out, mode=m, align_corners=align)

    return run


@op("DepthToSpace")
def _depth_to_space(node: Node) -> OpFn:
    b, mode = node.attrs["blocksize"], node.attrs.get("mode", "DCR")

    def run(x):
        n, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (b * b), h * b, w * b)

    return run


@op("SpaceToDepth")
def _space_to_depth(node: Node) -> OpFn:
    b = node.attrs["blocksize"]

    def run(x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)

    return run


# ---------------------------------------------------------------- less common, cheap to support
@op("Mish")
def _mish(node: Node) -> OpFn:
    return F.mish


@op("Celu")
def _celu(node: Node) -> OpFn:
    alpha = node.attrs.get("alpha", 1.0)
    return lambda x: F.celu(x, alpha)


@op("ThresholdedRelu")
def _thresholded_relu(node: Node) -> OpFn:
    alpha = node.attrs.get("alpha", 1.0)
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@op("Shrink")
def _shrink(node: Node) -> OpFn:
    bias, lambd = node.attrs.get("bias", 0.0), node.attrs.get("lambd", 0.5)
    return lambda x: torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@op("CumSum")
def _cumsum(node: Node) -> OpFn:
    exclusive, reverse = node.attrs.get("exclusive", 0), node.attrs.get("reverse", 0)

    def run(x, axis):
        ax = _axis(int(axis.item()), x.dim())
        y = x.flip(ax) if reverse else x
        out = torch.cumsum(y, ax)
        if exclusive:
            out = out - y
        return out.flip(ax) if reverse else out

    return run


@op("Einsum")
def _einsum(node: Node) -> OpFn:
    equation = node.attrs["equation"]
    return lambda *xs: torch.einsum(equation, *xs)


@op("TopK")
def _topk(node: Node) -> OpFn:
    axis, largest, ordered = node.attrs.get("axis", -1), node.attrs.get("largest", 1), node.attrs.get("sorted", 1)
    fixed_k = node.attrs.get("k")

    def run(x, k=None):
        n = fixed_k if node.opset < 10 else int(k.reshape(-1)[0])
        values, indices = torch.topk(x, n, axis, bool(largest), bool(ordered))
        return values, indices

    return run


@op("OneHot")
def _one_hot(node: Node) -> OpFn:
    axis = node.attrs.get("axis", -1)

    def run(indices, depth, values):
        d = int(depth.reshape(-1)[0])
        idx = indices.long()
        idx = torch.where(idx < 0, idx + d, idx)
        hot = F.one_hot(idx.clamp(0, d - 1), d) * ((idx >= 0) & (idx < d)).unsqueeze(-1)
        out = torch.where(hot.bool(), values[1], values[0])
        return out.movedim(-1, _axis(axis, out.dim()))

    return run


@op("NonZero")
def _non_zero(node: Node) -> OpFn:
    return lambda x: torch.nonzero(x).t().contiguous()


@op("GatherND")
def _gather_nd(node: Node) -> OpFn:
    batch_dims = node.attrs.get("batch_dims", 0)
    if batch_dims:
        raise Unsupported("GatherND with batch_dims")

    def run(x, idx):
        m = idx.shape[-1]
        flat = idx.reshape(-1, m).long()
        out = x[tuple(flat[:, i] for i in range(m))]
        return out.reshape(tuple(idx.shape[:-1]) + tuple(x.shape[m:]))

    return run


@op("ScatterND")
def _scatter_nd(node: Node) -> OpFn:
    if node.attrs.get("reduction", "none") != "none":
        raise Unsupported("ScatterND with a reduction")

    def run(x, idx, updates):
        m = idx.shape[-1]
        flat = idx.reshape(-1, m).long()
        out = x.clone()
        out[tuple(flat[:, i] for i in range(m))] = updates.reshape((flat.shape[0],) + tuple(x.shape[m:]))
        return out

    return run


@op("Trilu")
def _trilu(node: Node) -> OpFn:
    upper = node.attrs.get("upper", 1)

    def run(x, k=None):
        diagonal = int(k.item()) if k is not None else 0
        return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)

    return run


@op("IsInf")
def _is_inf(node: Node) -> OpFn:
    pos, neg = node.attrs.get("detect_positive", 1), node.attrs.get("detect_negative", 1)
    return lambda x: (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


# ---------------------------------------------------------------- recurrent layers
_RNN_ACTIVATIONS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}


class _Recurrence:
    """What RNN, GRU and LSTM share: attributes, directions, layouts and per-example sequence lengths."""

    def __init__(self, node: Node, default_activations: list[str]):
        a = node.attrs
        self.direction = a.get("direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise Unsupported(f"direction={self.direction!r}")
        dirs = 2 if self.direction == "bidirectional" else 1
        names = list(a.get("activations", [])) or default_activations * dirs
        unknown = sorted({n for n in names if n not in _RNN_ACTIVATIONS})
        if unknown or a.get("activation_alpha") or a.get("activation_beta"):
            raise Unsupported(f"activations {unknown or names} (supported: {', '.join(_RNN_ACTIVATIONS)})")
        per = len(names) // dirs
        self.activations = [[_RNN_ACTIVATIONS[n] for n in names[d * per:(d + 1) * per]] for d in range(dirs)]
        self.clip = a.get("clip")
        self.layout = a.get("layout", 0)
        if a.get("input_forget", 0):
            raise Unsupported("LSTM with input_forget=1")

    def gate(self, v):
        return v if self.clip is None else torch.clamp(v, -self.clip, self.clip)

    def run(self, cell, x, states: list, seq_lens, hidden: int):
        """Run `cell(d, x_t, states) -> states` over time for each direction; Y and the last states."""
        if self.layout:
            x = x.transpose(0, 1)
            states = [s.transpose(0, 1) if s is not None else None for s in states]
        steps, batch = x.shape[0], x.shape[1]
        lens = None if seq_lens is None else seq_lens.long().to(x.device)
        outs, finals = [], []
        for d in range(len(self.activations)):
            reverse = self.direction == "reverse" or d == 1
            xs = x
            t = torch.arange(steps, device=x.device).unsqueeze(1)  # [steps, 1]
            if reverse:
                # Each sequence reversed within its own length: index len-1-t, padding left in place.
                n = lens if lens is not None else torch.full((batch,), steps, device=x.device)
                order = torch.where(t < n, n - 1 - t, t)  # [steps, batch]
                xs = torch.gather(x, 0, order.unsqueeze(-1).expand(x.shape))
            mine = [s[d] if s is not None else None for s in states]
            ys = []
            for k in range(steps):
                new = cell(d, xs[k], mine)
                if lens is not None:
                    keep = (k < lens).unsqueeze(-1)
                    new = [torch.where(keep, v, old) for v, old in zip(new, mine)]
                    ys.append(torch.where(keep, new[0], torch.zeros_like(new[0])))
                else:
                    ys.append(new[0])
                mine = new
            y = torch.stack(ys) if ys else x.new_zeros((0, batch, hidden))
            if reverse:
                y = torch.gather(y, 0, order.unsqueeze(-1).expand(y.shape))
            outs.append(y)
            finals.append(mine)
        y = torch.stack(outs, 1)  # [steps, dirs, batch, hidden]
        last = [torch.stack([f[i] for f in finals]) for i in range(len(finals[0]))]  # [dirs, batch, hidden]
        if self.layout:
            y = y.permute(2, 0, 1, 3)
            last = [s.transpose(0, 1) for s in last]
        return (y, *last)


def _zero_state(rec: _Recurrence, x, dirs: int, hidden: int):
    """The default initial state: zeros, laid out like the node's layout."""
    if rec.layout:
        return x.new_zeros((x.shape[0], dirs, hidden))
    return x.new_zeros((dirs, x.shape[1], hidden))


@op("GRU")
def _gru(node: Node) -> OpFn:
    rec = _Recurrence(node, ["Sigmoid", "Tanh"])
    before_reset = node.attrs.get("linear_before_reset", 0)

    def run(x, w, r, b=None, seq_lens=None, h0=None):
        dirs, hidden = w.shape[0], r.shape[-1]
        h0 = h0 if h0 is not None else _zero_state(rec, x, dirs, hidden)
        b = x.new_zeros((dirs, 6 * hidden)) if b is None else b

        def cell(d, xt, states):
            h, = states
            f, g = rec.activations[d]
            gx = xt @ w[d].t() + b[d, :3 * hidden]
            wz, wr, wh = gx.split(hidden, -1)
            rz, rr, rh = r[d].split(hidden, 0)
            bz, br, bh = b[d, 3 * hidden:].split(hidden)
            z = f(rec.gate(wz + h @ rz.t() + bz))
            rt = f(rec.gate(wr + h @ rr.t() + br))
            if before_reset:
                n = g(rec.gate(wh + rt * (h @ rh.t() + bh)))
            else:
                n = g(rec.gate(wh + (rt * h) @ rh.t() + bh))
            return [(1 - z) * n + z * h]

        return rec.run(cell, x, [h0], seq_lens, hidden)

    return run


@op("LSTM")
def _lstm(node: Node) -> OpFn:
    rec = _Recurrence(node, ["Sigmoid", "Tanh", "Tanh"])

    def run(x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
        dirs, hidden = w.shape[0], r.shape[-1]
        h0 = h0 if h0 is not None else _zero_state(rec, x, dirs, hidden)
        c0 = c0 if c0 is not None else _zero_state(rec, x, dirs, hidden)
        b = x.new_zeros((dirs, 8 * hidden)) if b is None else b
        p = x.new_zeros((dirs, 3 * hidden)) if p is None else p

        def cell(d, xt, states):
            h, c = states
            f, g, act = rec.activations[d]
            gates = xt @ w[d].t() + h @ r[d].t() + b[d, :4 * hidden] + b[d, 4 * hidden:]
            gi, go, gf, gc = gates.split(hidden, -1)
            pi, po, pf = p[d].split(hidden)
            i = f(rec.gate(gi + pi * c))
            ft = f(rec.gate(gf + pf * c))
            c_new = ft * c + i * g(rec.gate(gc))
            o = f(rec.gate(go + po * c_new))
            return [o * act(c_new), c_new]

        y, h, c = rec.run(cell, x, [h0, c0], seq_lens, hidden)
        return y, h, c

    return run


@op("RNN")
def _rnn(node: Node) -> OpFn:
    rec = _Recurrence(node, ["Tanh"])

    def run(x, w, r, b=None, seq_lens=None, h0=None):
        dirs, hidden = w.shape[0], r.shape[-1]
        h0 = h0 if h0 is not None else _zero_state(rec, x, dirs, hidden)
        b = x.new_zeros((dirs, 2 * hidden)) if b is None else b

        def cell(d, xt, states):
            h, = states
            f, = rec.activations[d]
            return [f(rec.gate(xt @ w[d].t() + h @ r[d].t() + b[d, :hidden] + b[d, hidden:]))]

        return rec.run(cell, x, [h0], seq_lens, hidden)

    return run
