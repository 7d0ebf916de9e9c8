"""Element-wise ops: arithmetic, comparisons, logic, bit ops, activations, casts."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._dtypes import ONNX_NAMES, torch_dtype
from converters.onnx_to_torch._registry import Unsupported, eager, op
from converters.onnx_to_torch.ops._common import axis, is_wide_unsigned, widen


# ---------------------------------------------------------------- typed run-time functions
def binary(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """ONNX binary arithmetic for any dtype: uint16/32/64 computed on a wider signed type."""
    out_dtype = a.dtype
    if is_wide_unsigned(a.dtype) or is_wide_unsigned(b.dtype):
        a, b = widen(a), widen(b)
    if kind == "Add":
        y = a + b
    elif kind == "Sub":
        y = a - b
    elif kind == "Mul":
        y = a * b
    elif kind == "Div":
        y = div(a, b)
    elif kind == "Max":
        y = torch.maximum(a, b)
    elif kind == "Min":
        y = torch.minimum(a, b)
    elif kind == "Mod":
        y = torch.remainder(a, b)
    elif kind == "Fmod":
        y = torch.fmod(a, b)
    elif kind == "BitwiseAnd":
        y = a & b
    elif kind == "BitwiseOr":
        y = a | b
    elif kind == "BitwiseXor":
        y = a ^ b
    elif kind == "LeftShift":
        y = torch.bitwise_left_shift(a, b)
    else:  # RightShift
        y = torch.bitwise_right_shift(a, b)
    return y.to(out_dtype)


def compare(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if is_wide_unsigned(a.dtype) or is_wide_unsigned(b.dtype):
        a, b = widen(a), widen(b)
    if kind == "Equal":
        return a == b
    if kind == "Less":
        return a < b
    if kind == "Greater":
        return a > b
    if kind == "LessOrEqual":
        return a <= b
    return a >= b


def div(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def pow_(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and b.is_floating_point():
        return torch.pow(a.double(), b).to(a.dtype)
    return torch.pow(a, b.to(a.dtype) if not b.is_floating_point() else b).to(a.dtype)


def legacy_broadcast(a: Tensor, b: Tensor, ax: int) -> Tensor:
    """Opset < 7 `broadcast=1, axis=k`: b lines up with a's axes from k on."""
    k = axis(ax, a.dim())
    return b.reshape(list(b.shape) + [1] * (a.dim() - k - b.dim()))


def variadic(xs: List[Tensor], kind: str) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = binary(out, x, "Add" if kind == "Sum" or kind == "Mean" else kind)
    if kind == "Mean":
        return out / len(xs)
    return out


def where(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    if is_wide_unsigned(a.dtype):
        return torch.where(c.to(torch.bool), widen(a), widen(b)).to(a.dtype)
    return torch.where(c.to(torch.bool), a, b)


def clip(x: Tensor, lo: Optional[Tensor], hi: Optional[Tensor]) -> Tensor:
    dtype = x.dtype
    y = widen(x)
    if lo is not None:
        y = torch.maximum(y, widen(lo).to(y.dtype))
    if hi is not None:
        y = torch.minimum(y, widen(hi).to(y.dtype))
    return y.to(dtype)


def cast(x: Tensor, dtype: torch.dtype, saturate: bool) -> Tensor:
    """ONNX Cast: float8 targets saturate to their largest finite value unless saturate=0."""
    if x.dtype == dtype:
        return x
    big = float8_max(dtype)
    if big > 0.0 and x.is_floating_point():
        y = x.float()
        if saturate:
            y = torch.where(torch.isnan(y), y, y.clamp(-big, big))
        elif dtype != torch.float8_e5m2:  # the others have no infinity: overflow is NaN
            y = torch.where(y.abs() > big, torch.full_like(y, math.nan), y)
        return y.to(dtype)
    if float8_max(x.dtype) > 0.0:
        x = x.float()
    if is_wide_unsigned(dtype) and x.is_floating_point():
        return x.to(torch.int64).to(dtype)
    return x.to(dtype)


def float8_max(dtype: torch.dtype) -> float:
    """The largest finite value of a float8 dtype; 0 for any other dtype."""
    if dtype == torch.float8_e4m3fn:
        return 448.0
    if dtype == torch.float8_e4m3fnuz:
        return 240.0
    if dtype == torch.float8_e5m2 or dtype == torch.float8_e5m2fnuz:
        return 57344.0
    return 0.0


@eager
def cast_e8m0(x: Tensor, saturate: bool, round_mode: str) -> Tensor:
    """Float -> FLOAT8E8M0 (a power of two, its exponent byte) with ONNX's rounding of the exponent."""
    bits = x.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    mantissa = bits & 0x7FFFFF
    if round_mode == "up":
        bump = mantissa > 0
    elif round_mode == "nearest":
        guard, rest = (bits & 0x400000) > 0, (bits & 0x3FFFFF) > 0
        bump = guard & (rest | (exponent > 0))
    else:
        bump = torch.zeros_like(special)
    if saturate:
        bump = bump & (exponent != 0xFE)
    exponent = torch.where(special, torch.full_like(exponent, 0xFF), (exponent + bump.long()).clamp(max=0xFF))
    return exponent.to(torch.uint8).view(torch.float8_e8m0fnu)


def cast_like(x: Tensor, like: Tensor, saturate: bool) -> Tensor:
    return cast(x, like.dtype, saturate)


def leaky_relu(x: Tensor, slope: float) -> Tensor:
    return F.leaky_relu(x, slope)


def elu(x: Tensor, alpha: float) -> Tensor:
    return F.elu(x, alpha)


def celu(x: Tensor, alpha: float) -> Tensor:
    return F.celu(x, alpha)


def selu(x: Tensor, alpha: float, gamma: float) -> Tensor:
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def prelu(x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x >= 0, x, x * slope)


def hard_sigmoid(x: Tensor, alpha: float, beta: float) -> Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def gelu(x: Tensor, approximate: str) -> Tensor:
    return F.gelu(x, approximate=approximate)


def thresholded_relu(x: Tensor, alpha: float) -> Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


def shrink(x: Tensor, bias: float, lambd: float) -> Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


def swish(x: Tensor, alpha: float) -> Tensor:
    return x * torch.sigmoid(alpha * x)


def softplus(x: Tensor) -> Tensor:
    return torch.where(x > 20.0, x, torch.log1p(torch.exp(x)))


def is_inf(x: Tensor, positive: bool, negative: bool) -> Tensor:
    out = torch.zeros_like(x, dtype=torch.bool)
    if positive:
        out = out | torch.isposinf(x)
    if negative:
        out = out | torch.isneginf(x)
    return out


def bitwise_not(x: Tensor) -> Tensor:
    if is_wide_unsigned(x.dtype):
        return (~widen(x)).to(x.dtype)
    return ~x


def abs_(x: Tensor) -> Tensor:
    if is_wide_unsigned(x.dtype) or x.dtype == torch.uint8:
        return x
    return torch.abs(x)


def sign(x: Tensor) -> Tensor:
    if is_wide_unsigned(x.dtype):
        return (widen(x) > 0).to(x.dtype)
    return torch.sign(x)


@eager
def bit_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.view(dtype)


# ---------------------------------------------------------------- lowerings
_UNARY = {
    "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Not": torch.logical_not, "Softsign": F.softsign,
    "Round": torch.round, "IsNaN": torch.isnan, "HardSwish": F.hardswish, "Softplus": softplus,
    "Mish": F.mish, "Abs": abs_, "Sign": sign, "BitwiseNot": bitwise_not,
}


def _unary(fn):
    return lambda g, node, x: g.call(fn, x)


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))

_ARITHMETIC = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": div}
_COMPARE = {"Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
            "GreaterOrEqual": torch.ge}
_LOGIC = {"And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}
_BITWISE = {"BitwiseAnd": "BitwiseAnd", "BitwiseOr": "BitwiseOr", "BitwiseXor": "BitwiseXor"}


def _unsigned(*values) -> bool:
    return any(v.present and v.type_of() is not None and is_wide_unsigned(v.type_of()) for v in values)


def _broadcast_legacy(g, node, a, b):
    if node.attr("broadcast") and node.attr("axis") is not None:
        b = g.call(legacy_broadcast, a, b, int(node.attr("axis")))
    return b


@op(*_ARITHMETIC, *_COMPARE, *_LOGIC, "Pow")
def _binary_v1(g, node, a, b):
    """Opsets 1-6: `broadcast=1` (and `axis`) instead of numpy broadcasting."""
    return _binary_v7(g, node, a, _broadcast_legacy(g, node, a, b))


@op(*_ARITHMETIC, *_COMPARE, *_LOGIC, "Pow", since=7)
def _binary_v7(g, node, a, b):
    kind = node.op_type
    if kind == "Pow":
        return g.call(pow_, a, b)
    if kind in _LOGIC:
        return g.call(_LOGIC[kind], a, b)
    if _unsigned(a, b):
        return g.call(compare if kind in _COMPARE else binary, a, b, kind)
    return g.call(_COMPARE.get(kind) or _ARITHMETIC[kind], a, b)


@op(*_BITWISE, since=18)
def _bitwise(g, node, a, b):
    return g.call(binary, a, b, node.op_type)


@op("BitShift", since=11)
def _bit_shift(g, node, a, b):
    direction = node.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise Unsupported(f"direction={direction!r}")
    return g.call(binary, a, b, "LeftShift" if direction == "LEFT" else "RightShift")


@op("Mod", since=10)
def _mod(g, node, a, b):
    return g.call(binary, a, b, "Fmod" if node.attr("fmod", 0) else "Mod")


@op("Max", "Min", "Sum", "Mean")
def _variadic(g, node, *xs):
    present = [x for x in xs if x.present]
    if len(present) == 1 and node.op_type != "Mean":
        return present[0]
    if len(present) == 2 and node.op_type in ("Sum", "Max", "Min") and not _unsigned(*present):
        fn = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum}[node.op_type]
        return g.call(fn, *present)
    return g.call(variadic, list(present), node.op_type)


@op("Identity")
def _identity(g, node, x):
    return x


@op("LeakyRelu")
def _leaky_relu(g, node, x):
    return g.call(leaky_relu, x, float(node.attr("alpha", 0.01)))


@op("Elu")
def _elu(g, node, x):
    return g.call(elu, x, float(node.attr("alpha", 1.0)))


@op("Celu", since=12)
def _celu(g, node, x):
    return g.call(celu, x, float(node.attr("alpha", 1.0)))


@op("Selu")
def _selu(g, node, x):
    return g.call(selu, x, float(node.attr("alpha", 1.67326319217681884765625)),
                  float(node.attr("gamma", 1.05070102214813232421875)))


@op("PRelu")
def _prelu(g, node, x, slope):
    return g.call(prelu, x, slope)


@op("HardSigmoid")
def _hard_sigmoid(g, node, x):
    return g.call(hard_sigmoid, x, float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5)))


@op("Gelu", since=20)
def _gelu(g, node, x):
    return g.call(gelu, x, node.attr("approximate", "none"))


@op("ThresholdedRelu", since=10)
def _thresholded_relu(g, node, x):
    return g.call(thresholded_relu, x, float(node.attr("alpha", 1.0)))


@op("Shrink", since=9)
def _shrink(g, node, x):
    return g.call(shrink, x, float(node.attr("bias", 0.0)), float(node.attr("lambd", 0.5)))


@op("Swish", since=24)
def _swish(g, node, x):
    return g.call(swish, x, float(node.attr("alpha", 1.0)))


@op("IsInf", since=10)
def _is_inf(g, node, x):
    return g.call(is_inf, x, bool(node.attr("detect_positive", 1)), bool(node.attr("detect_negative", 1)))


@op("Clip")
def _clip_v1(g, node, x):
    lo, hi = node.attr("min"), node.attr("max")
    return g.call(torch.clamp, x, None if lo is None else float(lo), None if hi is None else float(hi))


@op("Clip", since=11)
def _clip(g, node, x, lo=None, hi=None):
    lo = lo if lo is not None and lo.present else None
    hi = hi if hi is not None and hi.present else None
    if lo is None and hi is None:
        return x
    if (lo is None or lo.static is not None) and (hi is None or hi.static is not None) and not _unsigned(x):
        bounds = [None if v is None else float(v.static.reshape(-1)[0]) for v in (lo, hi)]
        if x.type_of() is None or x.type_of().is_floating_point:
            return g.call(torch.clamp, x, *bounds)
    return g.call(clip, x, lo, hi)


@op("Where", since=9)
def _where(g, node, c, a, b):
    if _unsigned(a, b):
        return g.call(where, c, a, b)
    return g.call(torch.where, c if c.type_of() == torch.bool else g.method("bool", c), a, b)


def _target(code: int) -> torch.dtype:
    try:
        return torch_dtype(code)
    except KeyError:
        raise Unsupported(f"to {ONNX_NAMES.get(code, code)}, which torch has no dtype for") from None


@op("Cast")
def _cast(g, node, x):
    to = node.attr("to")
    if isinstance(to, str):  # opset 1 spelled it as a string
        to = {name: code for code, name in ONNX_NAMES.items()}.get(to.upper(), -1)
    if x.type_of() is not None and x.type_of() not in _known_dtypes():
        raise Unsupported(f"from {x.type_of()}")
    target = _target(int(to))
    if str(target) == "torch.float8_e8m0fnu":
        return g.call(cast_e8m0, x, bool(node.attr("saturate", 1)), node.attr("round_mode", "up"))
    return g.call(cast, x, target, bool(node.attr("saturate", 1)))


def _known_dtypes() -> set:
    from converters.onnx_to_torch._dtypes import ONNX_DTYPES

    return set(ONNX_DTYPES.values())


@op("CastLike", since=15)
def _cast_like(g, node, x, like):
    if like.type_of() is not None:
        return g.call(cast, x, like.type_of(), bool(node.attr("saturate", 1)))
    return g.call(cast_like, x, like, bool(node.attr("saturate", 1)))


@op("BitCast", since=26, eager_only="TorchScript resolves Tensor.view(dtype) to a reshape, not a bit cast")
def _bit_cast(g, node, x):
    dtype = _target(int(node.attr("to")))
    source = x.type_of()
    if source is not None and source.itemsize != dtype.itemsize:
        raise Unsupported(f"from {source} to {dtype}: different widths")
    return g.call(bit_cast, x, dtype)
