"""TorchScript forms of the ONNX ops: typed free functions that a generated forward calls with literals."""
# No `from __future__ import annotations`: TorchScript reads these annotations as real types.
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import _pool_out_size  # plain int arithmetic: scripts as it is


def ints(t: Tensor) -> List[int]:
    out: List[int] = t.reshape(-1).tolist()
    return out


def floats(t: Tensor) -> List[float]:
    out: List[float] = t.reshape(-1).double().tolist()
    return out


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _torch_pad(begin: List[int], end: List[int]) -> List[int]:
    out: List[int] = []
    for i in range(len(begin) - 1, -1, -1):
        out.append(begin[i])
        out.append(end[i])
    return out


# ---------------------------------------------------------------- element-wise
def div(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def pow_(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


def where(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(c.to(torch.bool), a, b)


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


def cast_like(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


def clip(x: Tensor, lo: Optional[Tensor], hi: Optional[Tensor]) -> Tensor:
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return x


def clip_fixed(x: Tensor, lo: float, hi: float) -> Tensor:
    return torch.clamp(x, lo, hi)


def variadic(xs: List[Tensor], kind: str) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        if kind == "Max":
            out = torch.maximum(out, x)
        elif kind == "Min":
            out = torch.minimum(out, x)
        else:
            out = out + x
    return out / len(xs) if kind == "Mean" else out


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


def softmax(x: Tensor, axis: int, legacy: bool, kind: str) -> Tensor:
    shape = x.shape
    if legacy:
        # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the second dim.
        ax = _axis(axis, x.dim())
        lead = 1
        for s in shape[:ax]:
            lead *= s
        x, axis = x.reshape(lead, -1), 1
    if kind == "LogSoftmax":
        y = torch.log_softmax(x, axis)
    elif kind == "Hardmax":
        y = F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, _axis(axis, x.dim())).to(x.dtype)
    else:
        y = torch.softmax(x, axis)
    return y.reshape(shape)


# ---------------------------------------------------------------- convolution, pooling, normalisation
def same_pads(size: List[int], kernel: List[int], strides: List[int], dilations: List[int],
              upper: bool) -> Tuple[List[int], List[int]]:
    begin: List[int] = []
    end: List[int] = []
    for j in range(len(kernel)):
        out = -(-size[j] // strides[j])
        total = max(0, (out - 1) * strides[j] + (kernel[j] - 1) * dilations[j] + 1 - size[j])
        small = total // 2
        begin.append(small if upper else total - small)
        end.append(total - small if upper else small)
    return begin, end


def _pads(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
          end: List[int], auto_pad: str) -> Tuple[List[int], List[int]]:
    if auto_pad == "SAME_UPPER" or auto_pad == "SAME_LOWER":
        return same_pads(x.shape[2:], kernel, strides, dilations, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * len(kernel), [0] * len(kernel)
    return begin, end


def conv(x: Tensor, w: Tensor, b: Optional[Tensor], strides: List[int], begin: List[int], end: List[int],
         dilations: List[int], group: int, auto_pad: str) -> Tensor:
    kernel = w.shape[2:]
    n = len(kernel)
    begin, end = _pads(x, kernel, strides, dilations, begin, end, auto_pad)
    if begin != end:
        x = F.pad(x, _torch_pad(begin, end))
        begin = [0] * n
    if n == 1:
        return F.conv1d(x, w, b, strides, begin, dilations, group)
    if n == 2:
        return F.conv2d(x, w, b, strides, begin, dilations, group)
    return F.conv3d(x, w, b, strides, begin, dilations, group)


def _pool_plan(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
               end: List[int], auto_pad: str, ceil: bool) -> Tuple[List[int], List[int], List[int], bool]:
    """(begin, end, explicit end pads, whether torch's own symmetric padding gives the same sizes)."""
    begin, end = _pads(x, kernel, strides, dilations, begin, end, auto_pad)
    size = x.shape[2:]
    native = begin == end
    grow: List[int] = []
    for j in range(len(kernel)):
        o = _pool_out_size(size[j], kernel[j], strides[j], dilations[j], begin[j], end[j], ceil)
        if 2 * begin[j] > kernel[j] or _pool_out_size(size[j], kernel[j], strides[j], dilations[j], begin[j],
                                                      begin[j], ceil) != o:
            native = False
        grow.append((o - 1) * strides[j] + dilations[j] * (kernel[j] - 1) + 1 - size[j] - begin[j])
    return begin, end, grow, native


def max_pool(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
             end: List[int], auto_pad: str, ceil: bool) -> Tensor:
    begin, end, grow, native = _pool_plan(x, kernel, strides, dilations, begin, end, auto_pad, ceil)
    n = len(kernel)
    if not native:
        x = F.pad(x, _torch_pad(begin, grow), value=-math.inf)
        begin, ceil = [0] * n, False
    if n == 1:
        return F.max_pool1d(x, kernel, strides, begin, dilations, ceil)
    if n == 2:
        return F.max_pool2d(x, kernel, strides, begin, dilations, ceil)
    return F.max_pool3d(x, kernel, strides, begin, dilations, ceil)


def _avg(x: Tensor, kernel: List[int], strides: List[int], pads: List[int], ceil: bool, include: bool) -> Tensor:
    if len(kernel) == 1:
        return F.avg_pool1d(x, kernel, strides, pads, ceil, include)
    if len(kernel) == 2:
        return F.avg_pool2d(x, kernel, strides, pads, ceil, include)
    return F.avg_pool3d(x, kernel, strides, pads, ceil, include)


def avg_pool(x: Tensor, kernel: List[int], strides: List[int], begin: List[int], end: List[int],
             auto_pad: str, ceil: bool, include_pad: bool) -> Tensor:
    n = len(kernel)
    begin, end, grow, native = _pool_plan(x, kernel, strides, [1] * n, begin, end, auto_pad, ceil)
    if native:
        return _avg(x, kernel, strides, begin, ceil, include_pad)
    xp = F.pad(x, _torch_pad(begin, grow))
    shape = [1, 1] + x.shape[2:]
    ones = torch.ones(shape, dtype=x.dtype, device=x.device)
    if include_pad:
        ones = F.pad(ones, _torch_pad(begin, end), value=1.0)
        rest: List[int] = []
        for j in range(n):
            rest.append(grow[j] - end[j])
        mask = F.pad(ones, _torch_pad([0] * n, rest))
    else:
        mask = F.pad(ones, _torch_pad(begin, grow))
    zeros = [0] * n
    return _avg(xp, kernel, strides, zeros, False, True) / _avg(mask, kernel, strides, zeros, False, True)


def global_pool(x: Tensor, kind: str) -> Tensor:
    dims: List[int] = list(range(2, x.dim()))
    if kind == "max":
        return x.amax(dims, keepdim=True)
    return x.mean(dims, keepdim=True)


def lrn(x: Tensor, size: int, alpha: float, beta: float, bias: float) -> Tensor:
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    sq = F.pad(sq, [0, 0, (size - 1) // 2, size // 2])
    mean = F.avg_pool2d(sq, [size, 1], [1, 1]).reshape(x.shape)
    return x / (bias + alpha * mean) ** beta


def batch_norm(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


def instance_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.instance_norm(x, None, None, scale, bias, True, 0.1, eps)


def layer_norm(x: Tensor, scale: Tensor, bias: Optional[Tensor], axis: int, eps: float) -> Tensor:
    shape = x.shape[_axis(axis, x.dim()):]
    return F.layer_norm(x, shape, scale.reshape(shape), None if bias is None else bias.reshape(shape), eps)


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


# ---------------------------------------------------------------- shapes and indexing
def shape(x: Tensor, start: int, end: int) -> Tensor:
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def size(x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def full(sizes: List[int], value: float, dtype: torch.dtype, like: Tensor) -> Tensor:
    return torch.full(sizes, value, dtype=dtype, device=like.device)


def reshape(x: Tensor, sizes: List[int], allow_zero: bool) -> Tensor:
    out: List[int] = []
    for i in range(len(sizes)):
        out.append(x.shape[i] if sizes[i] == 0 and not allow_zero else sizes[i])
    return x.reshape(out)


def flatten(x: Tensor, axis: int) -> Tensor:
    ax = _axis(axis, x.dim())
    lead = 1
    for s in x.shape[:ax]:
        lead *= s
    return x.reshape(lead, -1)


def transpose(x: Tensor, perm: List[int]) -> Tensor:
    if len(perm) == 0:
        perm = list(range(x.dim() - 1, -1, -1))
    return x.permute(perm)


def squeeze(x: Tensor, axes: List[int]) -> Tensor:
    if len(axes) == 0:
        return x.squeeze()
    dims = [_axis(d, x.dim()) for d in axes]
    dims.sort(reverse=True)
    for d in dims:
        x = x.squeeze(d)
    return x


def unsqueeze(x: Tensor, axes: List[int]) -> Tensor:
    rank = x.dim() + len(axes)
    dims = [_axis(d, rank) for d in axes]
    dims.sort()
    for d in dims:
        x = x.unsqueeze(d)
    return x


def concat(xs: List[Tensor], axis: int) -> Tensor:
    kept: List[Tensor] = []
    for x in xs:
        if x.numel() > 0 or x.dim() > 1:
            kept.append(x)
    if len(kept) == 0:
        kept = xs[:1]
    return torch.cat([x.to(kept[0].dtype) for x in kept], axis)


def split(x: Tensor, sizes: List[int], axis: int, n: int) -> List[Tensor]:
    if len(sizes) == 0:
        dim = x.shape[_axis(axis, x.dim())]
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, axis))


def slice_(x: Tensor, starts: List[int], ends: List[int], axes: List[int], steps: List[int]) -> Tensor:
    if len(axes) == 0:
        axes = list(range(len(starts)))
    if len(steps) == 0:
        steps = [1] * len(starts)
    for i in range(len(starts)):
        axis = _axis(axes[i], x.dim())
        dim = x.shape[axis]
        start, end, step = starts[i], ends[i], steps[i]
        if step > 0:
            start = max(0, min(dim, start + dim if start < 0 else start))
            end = max(0, min(dim, end + dim if end < 0 else end))
            x = x.narrow(axis, start, max(0, end - start))
            if step > 1:
                x = x.index_select(axis, torch.arange(0, x.shape[axis], step, device=x.device))
        else:
            start = max(0, min(dim - 1, start + dim if start < 0 else start))
            end = max(-1, min(dim - 1, end + dim if end < 0 else end))
            x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x


def gather(x: Tensor, idx: Tensor, axis: int) -> Tensor:
    ax = _axis(axis, x.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    out = x.index_select(ax, idx.reshape(-1))
    return out.reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


def gather_elements(x: Tensor, idx: Tensor, axis: int) -> Tensor:
    ax = _axis(axis, x.dim())
    idx = idx.long()
    return torch.gather(x, ax, torch.where(idx < 0, idx + x.shape[ax], idx))


def expand(x: Tensor, sizes: List[int]) -> Tensor:
    zeros = torch.zeros(sizes, dtype=x.dtype, device=x.device)
    return x | zeros if x.dtype == torch.bool else x + zeros


def tile(x: Tensor, repeats: List[int]) -> Tensor:
    return x.repeat(repeats)


def range_(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    if start.is_floating_point():
        return torch.arange(float(start.item()), float(limit.item()), float(delta.item()), dtype=start.dtype,
                            device=start.device)
    return torch.arange(int(start.item()), int(limit.item()), int(delta.item()), dtype=start.dtype,
                        device=start.device)


def pad(x: Tensor, pads: List[int], value: float, axes: List[int], mode: str) -> Tensor:
    rank = x.dim()
    if len(axes) == 0:
        axes = list(range(rank))
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i in range(n):
        axis = _axis(axes[i], rank)
        begin[axis], end[axis] = pads[i], pads[i + n]
    first = rank
    for i in range(rank):
        if (begin[i] != 0 or end[i] != 0) and first == rank:
            first = i
    spec = _torch_pad(begin[first:], end[first:])
    if len(spec) == 0:
        return x
    if mode == "constant":
        return F.pad(x, spec, value=value)
    return F.pad(x, spec, mode=mode)


def reduce(x: Tensor, axes: List[int], keep: bool, noop: bool, kind: str) -> Tensor:
    if len(axes) == 0:
        if noop:
            return x
        axes = list(range(x.dim()))
    dims = [_axis(d, x.dim()) for d in axes]
    if kind == "ReduceMean":
        return x.mean(dims, keepdim=keep)
    if kind == "ReduceSum":
        return x.sum(dims, keepdim=keep)
    if kind == "ReduceMax":
        return x.amax(dims, keepdim=keep)
    if kind == "ReduceMin":
        return x.amin(dims, keepdim=keep)
    if kind == "ReduceL1":
        return x.abs().sum(dims, keepdim=keep)
    if kind == "ReduceL2":
        return (x * x).sum(dims, keepdim=keep).sqrt()
    if kind == "ReduceSumSquare":
        return (x * x).sum(dims, keepdim=keep)
    if kind == "ReduceLogSumExp":
        return torch.logsumexp(x, dims, keepdim=keep)
    for d in dims:  # ReduceProd: torch takes one dim at a time
        x = x.prod(d, keepdim=True)
    if not keep:
        dims.sort(reverse=True)
        for d in dims:
            x = x.squeeze(d)
    return x


def arg(x: Tensor, axis: int, keep: bool, last: bool, largest: bool) -> Tensor:
    ax = _axis(axis, x.dim())
    if last:
        flipped = x.flip([ax])
        found = torch.argmax(flipped, ax, keep) if largest else torch.argmin(flipped, ax, keep)
        return x.shape[ax] - 1 - found
    return torch.argmax(x, ax, keep) if largest else torch.argmin(x, ax, keep)


def resize(x: Tensor, scales: List[float], sizes: List[int], mode: str, align: Optional[bool]) -> Tensor:
    if len(sizes) > 0:
        out = sizes[2:]
    else:
        out = [int(math.floor(x.shape[2 + j] * scales[2 + j])) for j in range(x.dim() - 2)]
    if mode == "linear":
        mode = ["linear", "bilinear", "trilinear"][x.dim() - 3]
    return F.interpolate(x, size=out, mode=mode, align_corners=align)


def depth_to_space(x: Tensor, b: int, dcr: bool) -> Tensor:
    n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    if dcr:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(x: Tensor, b: int) -> Tensor:
    n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ---------------------------------------------------------------- recurrent layers (default activations)
def _time_order(steps: int, batch: int, lens: Optional[Tensor], reverse: bool, device: torch.device) -> Tensor:
    t = torch.arange(steps, device=device).unsqueeze(1)
    n = lens.long() if lens is not None else torch.full([batch], steps, dtype=torch.long, device=device)
    if reverse:
        return torch.where(t < n, n - 1 - t, t.expand(steps, batch))
    return t.expand(steps, batch)


def _act(x: Tensor, name: str) -> Tensor:
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Relu":
        return torch.relu(x)
    return torch.tanh(x)


def recurrent(kind: str, x: Tensor, w: Tensor, r: Tensor, b: Optional[Tensor], lens: Optional[Tensor],
              h0: Optional[Tensor], c0: Optional[Tensor], p: Optional[Tensor], direction: str, layout: int,
              clip: float, before_reset: bool, acts: List[str]) -> List[Tensor]:
    """ONNX RNN / GRU / LSTM: [Y, Y_h] (+ Y_c for an LSTM); `acts` holds each direction's activations."""
    if layout == 1:
        x = x.transpose(0, 1)
        if h0 is not None:
            h0 = h0.transpose(0, 1)
        if c0 is not None:
            c0 = c0.transpose(0, 1)
    steps, batch = x.shape[0], x.shape[1]
    dirs, hidden = w.shape[0], r.shape[-1]
    gates = w.shape[1] // hidden
    bias = b if b is not None else x.new_zeros([dirs, 2 * gates * hidden])
    peep = p if p is not None else x.new_zeros([dirs, 3 * hidden])
    ys: List[Tensor] = []
    hs: List[Tensor] = []
    cs: List[Tensor] = []
    per = len(acts) // dirs
    for d in range(dirs):
        fa, ga = acts[d * per], acts[d * per + min(1, per - 1)]
        ha = acts[d * per + min(2, per - 1)]
        reverse = direction == "reverse" or d == 1
        order = _time_order(steps, batch, lens, reverse, x.device)
        xs = torch.gather(x, 0, order.unsqueeze(-1).expand(x.shape))
        h = h0[d] if h0 is not None else x.new_zeros([batch, hidden])
        c = c0[d] if c0 is not None else x.new_zeros([batch, hidden])
        wb, rb = bias[d, :gates * hidden], bias[d, gates * hidden:]
        gx_all = xs @ w[d].t() + wb
        out: List[Tensor] = []
        for k in range(steps):
            gx = gx_all[k]
            if kind == "GRU":
                rz, rr, rh = r[d].split(hidden, 0)
                bz, br, bh = rb.split(hidden)
                wz, wr, wh = gx.split(hidden, -1)
                z = _act(torch.clamp(wz + h @ rz.t() + bz, -clip, clip), fa)
                rt = _act(torch.clamp(wr + h @ rr.t() + br, -clip, clip), fa)
                if before_reset:
                    cand = _act(torch.clamp(wh + rt * (h @ rh.t() + bh), -clip, clip), ga)
                else:
                    cand = _act(torch.clamp(wh + (rt * h) @ rh.t() + bh, -clip, clip), ga)
                new_h, new_c = (1 - z) * cand + z * h, c
            elif kind == "LSTM":
                g = gx + h @ r[d].t() + rb
                gi, go, gf, gc = g.split(hidden, -1)
                pi, po, pf = peep[d].split(hidden)
                i = _act(torch.clamp(gi + pi * c, -clip, clip), fa)
                f = _act(torch.clamp(gf + pf * c, -clip, clip), fa)
                new_c = f * c + i * _act(torch.clamp(gc, -clip, clip), ga)
                o = _act(torch.clamp(go + po * new_c, -clip, clip), fa)
                new_h = o * _act(new_c, ha)
            else:
                new_h = _act(torch.clamp(gx + h @ r[d].t() + rb, -clip, clip), fa)
                new_c = c
            if lens is not None:
                keep = (k < lens.long()).unsqueeze(-1)
                new_h = torch.where(keep, new_h, h)
                new_c = torch.where(keep, new_c, c)
                out.append(torch.where(keep, new_h, torch.zeros_like(new_h)))
            else:
                out.append(new_h)
            h, c = new_h, new_c
        y = torch.stack(out) if len(out) > 0 else x.new_zeros([0, batch, hidden])
        ys.append(torch.gather(y, 0, order.unsqueeze(-1).expand(y.shape)))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, 1)
    last_h, last_c = torch.stack(hs), torch.stack(cs)
    if layout == 1:
        y = y.permute(2, 0, 1, 3)
        last_h, last_c = last_h.transpose(0, 1), last_c.transpose(0, 1)
    if kind == "LSTM":
        return [y, last_h, last_c]
    return [y, last_h]


# ---------------------------------------------------------------- less common ops
def conv_transpose(x: Tensor, w: Tensor, b: Optional[Tensor], strides: List[int], begin: List[int],
                   end: List[int], dilations: List[int], group: int, auto_pad: str, output_padding: List[int],
                   output_shape: List[int]) -> Tensor:
    kernel = w.shape[2:]
    n = len(kernel)
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
        upper = auto_pad == "SAME_UPPER"
        begin = []
        end = []
        for j in range(n):
            total = full[j] + output_padding[j] - target[j]
            first = total // 2 if upper else total - total // 2
            begin.append(first)
            end.append(total - first)
    elif auto_pad == "VALID":
        begin, end = zeros, zeros
    end = [end[j] - output_padding[j] for j in range(n)]
    if any([v != 0 for v in begin]) or any([v != 0 for v in end]):
        y = F.pad(y, _torch_pad([-v for v in begin], [-v for v in end]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


def cumsum(x: Tensor, axis: Tensor, exclusive: bool, reverse: bool) -> Tensor:
    ax = _axis(int(axis.item()), x.dim())
    y = x.flip([ax]) if reverse else x
    out = torch.cumsum(y, ax)
    if exclusive:
        out = out - y
    return out.flip([ax]) if reverse else out


def _linear_index(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of x flattened over its first m axes that the m-long index tuples in `idx` pick."""
    m = idx.shape[-1]
    flat = idx.reshape(-1, m).long()
    lin = torch.zeros([flat.shape[0]], dtype=torch.long, device=x.device)
    for i in range(m):
        lin = lin * x.shape[i] + torch.where(flat[:, i] < 0, flat[:, i] + x.shape[i], flat[:, i])
    return lin


def gather_nd(x: Tensor, idx: Tensor) -> Tensor:
    m = idx.shape[-1]
    rows = x.reshape([-1] + x.shape[m:]).index_select(0, _linear_index(x, idx))
    return rows.reshape(idx.shape[:-1] + x.shape[m:])


def scatter_nd(x: Tensor, idx: Tensor, updates: Tensor) -> Tensor:
    m = idx.shape[-1]
    lin = _linear_index(x, idx)
    rows = x.reshape([-1] + x.shape[m:]).clone()
    rows[lin] = updates.reshape([lin.shape[0]] + x.shape[m:])
    return rows.reshape(x.shape)


def one_hot(indices: Tensor, depth: Tensor, values: Tensor, axis: int) -> Tensor:
    d = int(depth.reshape(-1)[0].item())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx)
    hot = F.one_hot(idx.clamp(0, d - 1), d) * ((idx >= 0) & (idx < d)).unsqueeze(-1)
    out = torch.where(hot.to(torch.bool), values[1], values[0])
    return out.movedim(-1, _axis(axis, out.dim()))


def shrink(x: Tensor, bias: float, lambd: float) -> Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


def thresholded_relu(x: Tensor, alpha: float) -> Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


def topk(x: Tensor, k: int, axis: int, largest: bool, ordered: bool) -> List[Tensor]:
    values, indices = torch.topk(x, k, axis, largest, ordered)
    return [values, indices]


def topk_input(x: Tensor, k: Tensor, axis: int, largest: bool, ordered: bool) -> List[Tensor]:
    return topk(x, int(k.reshape(-1)[0].item()), axis, largest, ordered)


def trilu(x: Tensor, k: Optional[Tensor], upper: bool) -> Tensor:
    diagonal = int(k.item()) if k is not None else 0
    return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)


def non_zero(x: Tensor) -> Tensor:
    return torch.nonzero(x).t().contiguous()


def is_inf(x: Tensor, positive: bool, negative: bool) -> Tensor:
    return (torch.isposinf(x) & positive) | (torch.isneginf(x) & negative)
