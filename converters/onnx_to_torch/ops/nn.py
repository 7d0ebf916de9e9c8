"""Neural-network layers: convolution, normalisation, dense layers, softmax, attention, dropout, losses."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._layers import DropoutGate, OnnxLayer
from converters.onnx_to_torch._registry import Unsupported, layer_class, op
from converters.onnx_to_torch.ops._common import axis, same_pads, torch_pad


# ---------------------------------------------------------------- convolution
def _conv_nd(x: Tensor, w: Tensor, b: Optional[Tensor], strides: List[int], pads: List[int],
             dilations: List[int], group: int) -> Tensor:
    n = w.dim() - 2
    if n == 1:
        return F.conv1d(x, w, b, strides, pads, dilations, group)
    if n == 2:
        return F.conv2d(x, w, b, strides, pads, dilations, group)
    return F.conv3d(x, w, b, strides, pads, dilations, group)


def conv(x: Tensor, w: Tensor, b: Optional[Tensor], strides: List[int], begin: List[int], end: List[int],
         dilations: List[int], group: int, auto_pad: str) -> Tensor:
    """ONNX Conv with pads resolved at run time (auto_pad SAME with strides, or an unknown kernel rank)."""
    n = w.dim() - 2
    if len(strides) == 0:
        strides = [1] * n
    if len(dilations) == 0:
        dilations = [1] * n
    if auto_pad == "SAME_UPPER" or auto_pad == "SAME_LOWER":
        begin, end = same_pads(x.shape[2:], w.shape[2:], strides, dilations, auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID" or len(begin) == 0:
        begin, end = [0] * n, [0] * n
    if begin != end:
        x = F.pad(x, torch_pad(begin, end))
        begin = [0] * n
    return _conv_nd(x, w, b, strides, begin, dilations, group)


def conv_transpose(x: Tensor, w: Tensor, b: Optional[Tensor], strides: List[int], begin: List[int],
                   end: List[int], dilations: List[int], group: int, auto_pad: str, output_padding: List[int],
                   output_shape: List[int]) -> Tensor:
    """ONNX ConvTranspose: the full transposed conv, then cropped (pads) or grown (output_padding)."""
    kernel = w.shape[2:]
    n = len(kernel)
    if len(strides) == 0:
        strides = [1] * n
    if len(dilations) == 0:
        dilations = [1] * n
    if len(output_padding) == 0:
        output_padding = [0] * n
    zeros = [0] * n
    if n == 1:
        y = F.conv_transpose1d(x, w, None, strides, zeros, zeros, group, dilations)
    elif n == 2:
        y = F.conv_transpose2d(x, w, None, strides, zeros, zeros, group, dilations)
    else:
        y = F.conv_transpose3d(x, w, None, strides, zeros, zeros, group, dilations)
    size = x.shape[2:]
    full = [(size[j] - 1) * strides[j] + (kernel[j] - 1) * dilations[j] + 1 for j in range(n)]
    if len(output_shape) > 0 or auto_pad == "SAME_UPPER" or auto_pad == "SAME_LOWER":
        if len(output_shape) > 0:
            target = output_shape[len(output_shape) - n:]
        else:
            target = [size[j] * strides[j] for j in range(n)]
        upper = auto_pad == "SAME_UPPER"  # NOTSET with output_shape pads like SAME_LOWER
        begin = []
        end = []
        for j in range(n):
            total = full[j] + output_padding[j] - target[j]
            first = total // 2 if upper else total - total // 2
            begin.append(first)
            end.append(total - first)
    elif auto_pad == "VALID" or len(begin) == 0:
        begin, end = zeros, zeros
    end = [end[j] - output_padding[j] for j in range(n)]
    if any([v != 0 for v in begin]) or any([v != 0 for v in end]):
        y = F.pad(y, torch_pad([-v for v in begin], [-v for v in end]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_window(node, n: int) -> tuple[list[int], list[int], list[int], list[int], str]:
    """strides, dilations, begin and end pads of a Conv or pooling node, and its auto_pad."""
    strides = [int(v) for v in node.attr("strides", [])] or [1] * n
    dilations = [int(v) for v in node.attr("dilations", [])] or [1] * n
    pads = [int(v) for v in node.attr("pads", [])] or [0] * (2 * n)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    return strides, dilations, pads[:n], pads[n:], auto_pad


def static_pads(node, n: int, kernel: list[int]) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(strides, dilations, begin, end) when the pads do not depend on the input size, else None."""
    strides, dilations, begin, end, auto_pad = conv_window(node, n)
    if auto_pad == "VALID":
        return strides, dilations, [0] * n, [0] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            return None  # the pads follow the input size
        begin, end = same_pads([1] * n, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    return strides, dilations, begin, end


@op("Conv")
def _conv(g, node, x, w, b=None):
    bias = b if b is not None and b.present else None
    rank = w.rank
    group = int(node.attr("group", 1))
    if rank is None or rank - 2 not in _CONV:
        strides, dilations, begin, end, auto_pad = conv_window(node, len(node.attr("kernel_shape", [])))
        return g.call(conv, x, w, bias, strides, begin, end, dilations, group, auto_pad)
    n = rank - 2
    kernel = node.attr("kernel_shape") or (w.const.shape[2:] if w.const is not None else w.shape[2:])
    plan = static_pads(node, n, [int(k) for k in kernel])
    if plan is None:
        strides, dilations, begin, end, auto_pad = conv_window(node, n)
        return g.call(conv, x, w, bias, strides, begin, end, dilations, group, auto_pad)
    strides, dilations, begin, end = plan
    if begin != end:
        x = g.call(F.pad, x, torch_pad(begin, end))
        begin = [0] * n
    return g.call(_CONV[n], x, w, bias, strides, begin, dilations, group)


@op("ConvTranspose")
def _conv_transpose(g, node, x, w, b=None):
    bias = b if b is not None and b.present else None
    n = (w.rank or 4) - 2
    strides, dilations, begin, end, auto_pad = conv_window(node, n)
    output_padding = [int(v) for v in node.attr("output_padding", [])]
    output_shape = [int(v) for v in node.attr("output_shape", [])]
    group = int(node.attr("group", 1))
    torch_fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(n)
    padding = output_padding or [0] * n
    if (torch_fn is not None and w.rank is not None and auto_pad in ("NOTSET", "VALID") and not output_shape
            and (auto_pad == "VALID" or begin == end)
            and all(p < max(s, d) for p, s, d in zip(padding, strides, dilations))):
        pads = [0] * n if auto_pad == "VALID" else begin
        return g.call(torch_fn, x, w, bias, strides, pads, padding, group, dilations)
    return g.call(conv_transpose, x, w, bias, strides, begin, end, dilations, group, auto_pad, output_padding,
                  output_shape)


# ---------------------------------------------------------------- normalisation
def batch_norm(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    dt = x.dtype
    return F.batch_norm(x, mean.to(dt), var.to(dt), scale.to(dt), bias.to(dt), False, 0.0, eps)


def batch_norm_training(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float,
                        momentum: float) -> List[Tensor]:
    """training_mode=1: normalise with the batch statistics; also return the updated running ones."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    batch_mean = x.mean(dims)
    batch_var = x.var(dims, unbiased=False)
    y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + eps) * scale.reshape(shape) \
        + bias.reshape(shape)
    return [y, mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum)]


@layer_class("BatchNormalization")
class BatchNormLayer(OnnxLayer):
    """BatchNormalization: running statistics while frozen, batch statistics when trained in train mode."""

    def __init__(self, spec, node):
        super().__init__(spec, node)
        self.eps = float(node.attr("epsilon", 1e-5))
        # ONNX keeps `momentum` of the old value, torch keeps `momentum` of the new one.
        self.momentum = 1.0 - float(node.attr("momentum", 0.9))

    @staticmethod
    def accepts(spec) -> bool:
        return set(spec.params) == {"weight", "bias"} and set(spec.buffers) == {"running_mean", "running_var"}

    def forward(self, x: Tensor) -> Tensor:
        batch_statistics = self.training and self.weight.requires_grad
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, batch_statistics,
                            self.momentum, self.eps)


@op("BatchNormalization")
def _batch_norm_v1(g, node, x, scale, bias, mean, var):
    """Opsets 1-8: `spatial=0` (statistics per element, not per channel) existed."""
    if node.attr("spatial", 1) == 0:
        raise Unsupported("spatial=0")
    return _batch_norm(g, node, x, scale, bias, mean, var)


@op("BatchNormalization", since=9)
def _batch_norm(g, node, x, scale, bias, mean, var):
    eps = float(node.attr("epsilon", 1e-5))
    layer = g.layer()
    if isinstance(layer, BatchNormLayer):
        y = g.call_layer(layer, x)
    else:
        y = g.call(batch_norm, x, scale, bias, mean, var, eps)
    # Opsets < 14 list the statistics as outputs too; at inference they are the running ones.
    return y if len(node.outputs) == 1 else [y, mean, var, mean, var][:len(node.outputs)]


@op("BatchNormalization", since=14)
def _batch_norm_v14(g, node, x, scale, bias, mean, var):
    """Opset 14 adds training_mode=1: batch statistics, and the updated running ones as outputs."""
    if node.attr("training_mode", 0):
        outs = g.unpack(g.call(batch_norm_training, x, scale, bias, mean, var, float(node.attr("epsilon", 1e-5)),
                               float(node.attr("momentum", 0.9))), 3)
        return outs[:len(node.outputs)]
    return _batch_norm(g, node, x, scale, bias, mean, var)


def instance_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.instance_norm(x, None, None, scale, bias, True, 0.1, eps)


@op("InstanceNormalization")
def _instance_norm(g, node, x, scale, bias):
    return g.call(instance_norm, x, scale, bias, float(node.attr("epsilon", 1e-5)))


def _stash(x: Tensor, stash: bool) -> Tensor:
    if stash and (x.dtype == torch.float16 or x.dtype == torch.bfloat16):
        return x.float()
    return x


def layer_norm(x: Tensor, scale: Tensor, bias: Optional[Tensor], ax: int, eps: float, stash: bool) -> Tensor:
    """LayerNormalization over the axes from `ax` on; scale and bias broadcast to them."""
    start = axis(ax, x.dim())
    shape = x.shape[start:]
    xs = _stash(x, stash)
    if list(scale.shape) == shape and (bias is None or list(bias.shape) == shape):
        y = F.layer_norm(xs, shape, scale.to(xs.dtype), None if bias is None else bias.to(xs.dtype), eps)
        return y.to(x.dtype)
    y = F.layer_norm(xs, shape, None, None, eps) * scale.to(xs.dtype)
    if bias is not None:
        y = y + bias.to(xs.dtype)
    return y.to(x.dtype)


def layer_norm_stats(x: Tensor, scale: Tensor, bias: Optional[Tensor], ax: int, eps: float,
                     stash: bool) -> List[Tensor]:
    """LayerNormalization with its Mean and InvStdDev outputs."""
    start = axis(ax, x.dim())
    dims = list(range(start, x.dim()))
    xs = _stash(x, stash)
    mean = xs.mean(dims, keepdim=True)
    inv = torch.rsqrt((xs - mean).pow(2).mean(dims, keepdim=True) + eps)
    y = (xs - mean) * inv * scale.to(xs.dtype)
    if bias is not None:
        y = y + bias.to(xs.dtype)
    return [y.to(x.dtype), mean, inv]


@op("LayerNormalization", since=17)
def _layer_norm(g, node, x, scale, bias=None):
    bias = bias if bias is not None and bias.present else None
    args = (x, scale, bias, int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5)),
            bool(node.attr("stash_type", 1)))
    if len([o for o in node.outputs if o]) > 1:
        return g.unpack(g.call(layer_norm_stats, *args), len(node.outputs))
    return g.call(layer_norm, *args)


def rms_norm(x: Tensor, scale: Tensor, ax: int, eps: float, stash: bool) -> Tensor:
    start = axis(ax, x.dim())
    xs = _stash(x, stash)
    ms = xs.pow(2).mean(list(range(start, x.dim())), keepdim=True)
    return (xs * torch.rsqrt(ms + eps) * scale.to(xs.dtype)).to(x.dtype)


@op("RMSNormalization", since=23)
def _rms_norm(g, node, x, scale):
    return g.call(rms_norm, x, scale, int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5)),
                  bool(node.attr("stash_type", 1)))


def group_norm(x: Tensor, scale: Tensor, bias: Tensor, groups: int, eps: float, stash: bool) -> Tensor:
    channels = x.shape[1]
    if scale.numel() != channels:  # opset 18: one scale and bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    xs = _stash(x, stash)
    return F.group_norm(xs, groups, scale.to(xs.dtype), bias.to(xs.dtype), eps).to(x.dtype)


@op("GroupNormalization", since=18)
def _group_norm(g, node, x, scale, bias):
    return g.call(group_norm, x, scale, bias, int(node.attr("num_groups")), float(node.attr("epsilon", 1e-5)),
                  bool(node.attr("stash_type", 1)))


def lp_norm(x: Tensor, ax: int, p: int) -> Tensor:
    norm = torch.linalg.vector_norm(x, float(p), [ax], True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@op("LpNormalization")
def _lp_norm(g, node, x):
    p = int(node.attr("p", 2))
    if p not in (1, 2):
        raise Unsupported(f"p={p}")
    return g.call(lp_norm, x, int(node.attr("axis", -1)), p)


def mean_variance_norm(x: Tensor, axes: List[int]) -> Tensor:
    mean = x.mean(axes, keepdim=True)
    var = (x * x).mean(axes, keepdim=True) - mean * mean
    return (x - mean) / (torch.sqrt(var) + 1e-9)


@op("MeanVarianceNormalization", since=9)
def _mvn(g, node, x):
    return g.call(mean_variance_norm, x, [int(a) for a in node.attr("axes", [0, 2, 3])])


def lrn(x: Tensor, size: int, alpha: float, beta: float, bias: float) -> Tensor:
    """Across channels: floor((size-1)/2) channels before c, ceil((size-1)/2) after."""
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    sq = F.pad(sq, [0, 0, (size - 1) // 2, size // 2])
    mean = F.avg_pool2d(sq, [size, 1], [1, 1]).reshape(x.shape)
    return x / (bias + alpha * mean) ** beta


@op("LRN")
def _lrn(g, node, x):
    return g.call(lrn, x, int(node.attr("size")), float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)),
                  float(node.attr("bias", 1.0)))


# ---------------------------------------------------------------- dense layers
def gemm(x: Tensor, w: Tensor, c: Optional[Tensor], alpha: float, beta: float, trans_a: bool,
         trans_b: bool) -> Tensor:
    if trans_a:
        x = x.t()
    y = x @ (w.t() if trans_b else w)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@op("Gemm")
def _gemm(g, node, x, w, c=None):
    c = c if c is not None and c.present else None
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    if alpha == 1.0 and beta == 1.0 and (c is None or c.rank == 1) and not trans_a \
            and (x.type_of() is None or x.type_of().is_floating_point):
        return g.call(F.linear, x, w if trans_b else g.method("t", w), c)
    return g.call(gemm, x, w, c, alpha, beta, trans_a, trans_b)


@op("MatMul")
def _matmul(g, node, a, b):
    return g.call(torch.matmul, a, b)


def einsum(equation: str, xs: List[Tensor]) -> Tensor:
    return torch.einsum(equation, xs)


@op("Einsum", since=12)
def _einsum(g, node, *xs):
    equation = node.attr("equation").replace(" ", "")
    return g.call(einsum, equation, list(xs))


@op("Det", since=11)
def _det(g, node, x):
    return g.call(torch.linalg.det, x)


# ---------------------------------------------------------------- softmax family
def softmax_legacy(x: Tensor, ax: int, kind: str) -> Tensor:
    """Opsets < 13: the input is coerced to 2-D at `ax` and normalised over the second dimension."""
    shape = x.shape
    start = axis(ax, x.dim())
    lead = 1
    for s in shape[:start]:
        lead *= s
    flat = x.reshape(lead, -1)
    return softmax(flat, 1, kind).reshape(shape)


def softmax(x: Tensor, ax: int, kind: str) -> Tensor:
    if kind == "LogSoftmax":
        return torch.log_softmax(x, ax)
    if kind == "Hardmax":
        ax = axis(ax, x.dim())
        if x.numel() == 0:
            return x
        return F.one_hot(x.argmax(ax), x.shape[ax]).movedim(-1, ax).to(x.dtype)
    return torch.softmax(x, ax)


@op("Softmax", "LogSoftmax", "Hardmax")
def _softmax_v1(g, node, x):
    ax = int(node.attr("axis", 1))
    if x.rank is not None and axis(ax, x.rank) == x.rank - 1 and node.op_type != "Hardmax":
        return g.call(torch.softmax if node.op_type == "Softmax" else torch.log_softmax, x, -1)
    return g.call(softmax_legacy, x, ax, node.op_type)


@op("Softmax", "LogSoftmax", "Hardmax", since=13)
def _softmax(g, node, x):
    ax = int(node.attr("axis", -1))
    if node.op_type == "Softmax":
        return g.call(torch.softmax, x, ax)
    if node.op_type == "LogSoftmax":
        return g.call(torch.log_softmax, x, ax)
    return g.call(softmax, x, ax, node.op_type)


# ---------------------------------------------------------------- dropout
def dropout_training(x: Tensor, ratio: Tensor) -> List[Tensor]:
    """Dropout with training_mode=1 in the graph itself: a random mask, scaled by 1 / (1 - ratio)."""
    p = float(ratio.reshape(-1)[0].item())
    if p == 0.0:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    keep = torch.rand_like(x, dtype=torch.float32) >= p
    return [x * keep.to(x.dtype) / (1.0 - p), keep]


def ones_mask(x: Tensor) -> Tensor:
    return torch.ones_like(x, dtype=torch.bool)


@op("Dropout")
def _dropout(g, node, x):
    """Dropout is the identity at inference; while fine-tuning a gate module decides (see DropoutGate)."""
    return _dropout_gate(g, node, x, float(node.attr("ratio", 0.5)))


@op("Dropout", since=12)
def _dropout_v12(g, node, x, ratio=None, training=None):
    """Opset 12: the ratio and training_mode are inputs (training_mode=1 drops in the graph itself)."""
    value = 0.5  # the gate's ratio when the ratio is computed at run time
    if ratio is not None and ratio.present and ratio.static is not None:
        value = float(ratio.static.reshape(-1)[0])
    if training is not None and training.present and (training.static is None or bool(training.static)):
        if ratio is None or not ratio.present:
            ratio = g.constant(torch.tensor(0.5))
        return g.unpack(g.call(dropout_training, x, ratio), 2)[:len(node.outputs)]
    return _dropout_gate(g, node, x, value)


def _dropout_gate(g, node, x, value: float):
    if g.evaluating:
        y = x
    else:
        y = g.call_module(DropoutGate(value, g.layers_seen), x, name="dropout")
    if len([o for o in node.outputs if o]) > 1:
        return [y, g.call(ones_mask, x)]
    return y


# ---------------------------------------------------------------- attention
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], past_k: Optional[Tensor],
              past_v: Optional[Tensor], nonpad: Optional[Tensor], scale: float, causal: bool, q_heads: int,
              kv_heads: int, softcap: float, qk_mode: int, left: int, right: int) -> List[Tensor]:
    """ONNX Attention (opset 23+): [Y, present_key, present_value, qk_matmul_output]."""
    three_d = q.dim() == 3
    batch = q.shape[0]
    if three_d:
        q = q.reshape(batch, q.shape[1], q_heads, -1).transpose(1, 2)
        k = k.reshape(batch, k.shape[1], kv_heads, -1).transpose(1, 2)
        v = v.reshape(batch, v.shape[1], kv_heads, -1).transpose(1, 2)
    if scale <= 0.0:
        scale = 1.0 / math.sqrt(q.shape[3])
    root = math.sqrt(scale)
    if past_k is not None:
        k = torch.cat([past_k, k], 2)
    if past_v is not None:
        v = torch.cat([past_v, v], 2)
    present_k, present_v = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    bias = torch.zeros([q_len, kv_len], dtype=q.dtype, device=q.device)
    if mask is not None:
        pad = kv_len - mask.shape[-1]
        if mask.dtype == torch.bool:
            if pad > 0:
                mask = F.pad(mask, [0, pad], value=False)
            mask = torch.where(mask, torch.zeros([1], dtype=q.dtype), torch.full([1], -math.inf, dtype=q.dtype))
        elif pad > 0:
            mask = F.pad(mask, [0, pad], value=-math.inf)
        bias = bias + mask.to(q.dtype)
    i = torch.arange(q_len, device=q.device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=q.device).reshape(1, kv_len)
    if nonpad is not None and past_k is None:
        offset = (nonpad.reshape(-1, 1, 1, 1) - q_len).to(torch.long)
    else:
        offset = torch.full([1], past_k.shape[2] if past_k is not None else 0, dtype=torch.long)
    neg = torch.full([1], -math.inf, dtype=q.dtype)
    zero = torch.zeros([1], dtype=q.dtype)
    if causal:
        bias = bias + torch.where(j <= i + offset, zero, neg)
    if left >= 0 or right >= 0:
        diff = i + offset - j
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if left >= 0:
            allowed = allowed & (diff <= left)
        if right >= 0:
            allowed = allowed & (-diff <= right)
        bias = bias + torch.where(allowed, zero, neg)
    if nonpad is not None:
        keep = torch.arange(kv_len).reshape(1, kv_len) < nonpad.reshape(-1, 1)
        bias = bias + torch.where(keep, zero, neg).reshape(batch, 1, 1, kv_len)
    heads, kheads = q.shape[1], k.shape[1]
    if heads != kheads and heads % kheads == 0:
        k = k.repeat_interleave(heads // kheads, 1)
        v = v.repeat_interleave(heads // kheads, 1)
    scores = torch.matmul(q * root, k.transpose(-1, -2) * root)
    if softcap > 0.0:
        scores = torch.tanh(scores / softcap) * softcap
    qk_out = scores
    with_bias = scores + bias
    if qk_mode == 2:
        qk_out = with_bias
    probs = torch.softmax(with_bias.float(), -1)
    probs = torch.nan_to_num(probs, 0.0)
    masked_rows = torch.isneginf(bias.amax(-1, keepdim=True))
    probs = torch.where(masked_rows, torch.zeros_like(probs), probs)
    if qk_mode == 3:
        qk_out = probs
    y = torch.matmul(probs.to(q.dtype), v)
    if three_d:
        y = y.transpose(1, 2).reshape(batch, q_len, -1)
    return [y, present_k, present_v, qk_out.to(q.dtype)]


@op("Attention", since=23)
def _attention(g, node, q, k, v, mask=None, past_k=None, past_v=None, nonpad=None):
    def given(value):
        return value if value is not None and value.present else None

    mask, past_k, past_v, nonpad = given(mask), given(past_k), given(past_v), given(nonpad)
    scale = node.attr("scale")
    causal = bool(node.attr("is_causal", 0))
    softcap = float(node.attr("softcap", 0.0))
    qk_mode = int(node.attr("qk_matmul_output_mode", 0))
    left, right = int(node.attr("left_window_size", -1)), int(node.attr("right_window_size", -1))
    wants = len([o for o in node.outputs if o])
    if (wants == 1 and mask is None and past_k is None and nonpad is None and softcap == 0.0 and left < 0
            and right < 0 and q.rank == 4 and k.rank == 4):
        # The common case is PyTorch's fused kernel (the same top-left causal mask).
        options = {"is_causal": causal, "scale": None if scale is None else float(scale)}
        if _gqa(q, k):
            options["enable_gqa"] = True  # torch >= 2.5
        return g.call(F.scaled_dot_product_attention, q, k, v, **options)
    return g.unpack(g.call(attention, q, k, v, mask, past_k, past_v, nonpad,
                           0.0 if scale is None else float(scale), causal, int(node.attr("q_num_heads", 0)),
                           int(node.attr("kv_num_heads", 0)), softcap, qk_mode, left, right), len(node.outputs))


def _gqa(q, k) -> bool:
    if q.shape is None or k.shape is None or len(q.shape) != 4 or len(k.shape) != 4:
        return False
    return isinstance(q.shape[1], int) and isinstance(k.shape[1], int) and q.shape[1] != k.shape[1]


def rotary(x: Tensor, cos: Tensor, sin: Tensor, positions: Optional[Tensor], interleaved: bool, heads: int,
           dim: int) -> Tensor:
    """ONNX RotaryEmbedding over [batch, seq, heads, head] (or 4-D [batch, heads, seq, head], 3-D packed)."""
    shape = x.shape
    if x.dim() == 4:
        x = x.transpose(1, 2)
    else:
        x = x.reshape(shape[0], shape[1], heads, -1)
    head = x.shape[3]
    if dim == 0:
        dim = head
    rotate, keep = x[..., :dim], x[..., dim:]
    if positions is not None:
        cos = cos[positions.long()]
        sin = sin[positions.long()]
    cos = cos.unsqueeze(2)
    sin = sin.unsqueeze(2)
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., :dim // 2], rotate[..., dim // 2:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotate = torch.stack([real, imag], -1).reshape(rotate.shape)
    else:
        rotate = torch.cat([real, imag], -1)
    y = torch.cat([rotate, keep], -1)
    if len(shape) == 4:
        return y.transpose(1, 2)
    return y.reshape(shape)


@op("RotaryEmbedding", since=23)
def _rotary(g, node, x, cos, sin, positions=None):
    positions = positions if positions is not None and positions.present else None
    return g.call(rotary, x, cos, sin, positions, bool(node.attr("interleaved", 0)), int(node.attr("num_heads", 0)),
                  int(node.attr("rotary_embedding_dim", 0)))


def linear_attention(q: Tensor, k: Tensor, v: Tensor, past: Optional[Tensor], decay: Optional[Tensor],
                     beta: Optional[Tensor], q_heads: int, kv_heads: int, scale: float) -> List[Tensor]:
    """ONNX LinearAttention (opset 27): a recurrent state updated per step (linear, gated, delta rule)."""
    b, t = q.shape[0], q.shape[1]
    d_k, d_v = q.shape[2] // q_heads, v.shape[2] // kv_heads
    group = q_heads // kv_heads
    q4 = q.reshape(b, t, q_heads, d_k).transpose(1, 2).float()
    k4 = k.reshape(b, t, kv_heads, d_k).transpose(1, 2).float()
    v4 = v.reshape(b, t, kv_heads, d_v).transpose(1, 2).float()
    decay4: Optional[Tensor] = None
    if decay is not None:
        per_head = decay.shape[-1] == kv_heads
        decay4 = decay.reshape(b, t, kv_heads, 1 if per_head else d_k).transpose(1, 2).float()
    beta4: Optional[Tensor] = None
    if beta is not None:
        beta4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).float()
    state = past.float() if past is not None else torch.zeros([b, kv_heads, d_k, d_v], dtype=torch.float32)
    if scale == 0.0:
        scale = 1.0 / math.sqrt(d_k)
    outs: List[Tensor] = []
    for i in range(t):
        k_t, v_t = k4[:, :, i, :], v4[:, :, i, :]
        if decay4 is not None:
            state = state * torch.exp(decay4[:, :, i, :]).unsqueeze(-1)
        if beta4 is not None:
            retrieved = torch.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = beta4[:, :, i, :] * (v_t - retrieved)
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        read = state.repeat_interleave(group, 1) if group > 1 else state
        outs.append(scale * torch.einsum("bhd,bhdm->bhm", q4[:, :, i, :], read))
    y = torch.stack(outs, 2).transpose(1, 2).reshape(b, t, q_heads * d_v)
    return [y.to(q.dtype), state.to(past.dtype if past is not None else q.dtype)]


@op("LinearAttention", since=27)
def _linear_attention(g, node, q, k, v, past=None, decay=None, beta=None):
    rule = node.attr("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise Unsupported(f"update_rule={rule!r}")

    def given(value):
        return value if value is not None and value.present else None

    scale = node.attr("scale")
    out = g.call(linear_attention, q, k, v, given(past), given(decay), given(beta), int(node.attr("q_num_heads")),
                 int(node.attr("kv_num_heads")), 0.0 if scale is None else float(scale))
    return g.unpack(out, len(node.outputs))


def swiglu(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    return a * torch.sigmoid(alpha * a) * b


@op("SwiGLU", since=28)
def _swiglu(g, node, a, b):
    return g.call(swiglu, a, b, float(node.attr("alpha", 1.0)))


def causal_conv_with_state(x: Tensor, w: Tensor, b: Optional[Tensor], past: Optional[Tensor],
                           silu: bool) -> List[Tensor]:
    k = w.shape[2]
    if past is None:
        past = torch.zeros([x.shape[0], x.shape[1], k - 1], dtype=x.dtype, device=x.device)
    padded = torch.cat([past, x], 2)
    y = F.conv1d(padded, w, b, 1, 0, 1, x.shape[1])
    if silu:
        y = y * torch.sigmoid(y)
    return [y, padded[:, :, padded.shape[2] - (k - 1):]]


@op("CausalConvWithState", since=27)
def _causal_conv(g, node, x, w, b=None, past=None):
    activation = node.attr("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise Unsupported(f"activation={activation!r}")
    b = b if b is not None and b.present else None
    past = past if past is not None and past.present else None
    return g.unpack(g.call(causal_conv_with_state, x, w, b, past, activation != "none"), len(node.outputs))


# ---------------------------------------------------------------- losses
def nll_loss(x: Tensor, target: Tensor, weight: Optional[Tensor], ignore: int, reduction: str) -> Tensor:
    target = target.long()
    return F.nll_loss(x, target, weight, None, ignore, None, reduction)


@op("NegativeLogLikelihoodLoss", since=12)
def _nll(g, node, x, target, weight=None):
    weight = weight if weight is not None and weight.present else None
    ignore = node.attr("ignore_index")
    return g.call(nll_loss, x, target, weight, -(1 << 62) if ignore is None else int(ignore),
                  node.attr("reduction", "mean"))


def softmax_cross_entropy(x: Tensor, target: Tensor, weight: Optional[Tensor], ignore: int,
                          reduction: str) -> List[Tensor]:
    log_prob = torch.log_softmax(x, 1)
    return [nll_loss(log_prob, target, weight, ignore, reduction), log_prob]


@op("SoftmaxCrossEntropyLoss", since=12)
def _softmax_cross_entropy(g, node, x, target, weight=None):
    weight = weight if weight is not None and weight.present else None
    ignore = node.attr("ignore_index")
    outs = g.unpack(g.call(softmax_cross_entropy, x, target, weight, -(1 << 62) if ignore is None else int(ignore),
                           node.attr("reduction", "mean")), 2)
    return outs[:len(node.outputs)]


__all__ = ["BatchNormLayer", "static_pads"]
