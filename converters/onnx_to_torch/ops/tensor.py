"""Shapes, indexing and data movement: Reshape, Slice, Gather, Scatter, Concat, Pad, Resize, TopK..."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._dtypes import ONNX_DTYPES, to_tensor
from converters.onnx_to_torch._registry import Unsupported, op
from converters.onnx_to_torch.ops._common import axis, int_range, ints, is_wide_unsigned, torch_pad, widen


def _given(value):
    return value if value is not None and value.present else None


# ---------------------------------------------------------------- shapes
def shape_of(x: Tensor, start: int, end: int) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            return torch._shape_as_tensor(x)[start:end]  # a traced Shape op, not a constant
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def size_of(x: Tensor) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            return torch._shape_as_tensor(x).prod()
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _traced_sizes(t: Tensor):
    """Sizes as 0-d tensors, so sizes read from the input stay dynamic in a trace (torch.onnx.export)."""
    return list(t.reshape(-1))


def full(shape: Tensor, value: float, dtype: torch.dtype) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            return torch.full(_traced_sizes(shape), value, dtype=dtype, device=shape.device)
    return torch.full(ints(shape), value, dtype=dtype, device=shape.device)


def full_int(shape: Tensor, value: int, dtype: torch.dtype) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            return torch.full(_traced_sizes(shape), value, dtype=dtype, device=shape.device)
    return torch.full(ints(shape), value, dtype=dtype, device=shape.device)


def reshape(x: Tensor, shape: Tensor, allow_zero: bool) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            # `s == 0` is decided at trace time: right for constant shapes, and a size read
            # from the input is never 0.
            sizes = [x.shape[i] if not allow_zero and bool(s == 0) else s
                     for i, s in enumerate(_traced_sizes(shape))]
            return x.reshape(sizes)
    return reshape_static(x, ints(shape), allow_zero)


def reshape_static(x: Tensor, sizes: List[int], allow_zero: bool) -> Tensor:
    out: List[int] = []
    for i in range(len(sizes)):
        out.append(x.shape[i] if sizes[i] == 0 and not allow_zero else sizes[i])
    return x.reshape(out)


def flatten(x: Tensor, ax: int) -> Tensor:
    a = axis(ax, x.dim())
    if a == 0:
        return x.reshape(1, -1)
    if a == x.dim():
        return torch.flatten(x).unsqueeze(-1) if x.dim() > 0 else x.reshape(1, 1)
    return torch.flatten(torch.flatten(x, a), 0, a - 1)


def transpose(x: Tensor, perm: List[int]) -> Tensor:
    if len(perm) == 0:
        perm = list(range(x.dim() - 1, -1, -1))
    return x.permute(perm)


def squeeze(x: Tensor, axes: List[int]) -> Tensor:
    if len(axes) == 0:
        return x.squeeze()
    # One axis at a time, highest first: torch.onnx's TorchScript exporter takes no dim tuple.
    dims = [axis(d, x.dim()) for d in axes]
    dims.sort(reverse=True)
    for d in dims:
        x = x.squeeze(d)
    return x


def squeeze_input(x: Tensor, axes: Tensor) -> Tensor:
    return squeeze(x, ints(axes))


def unsqueeze(x: Tensor, axes: List[int]) -> Tensor:
    rank = x.dim() + len(axes)
    dims = [axis(d, rank) for d in axes]
    dims.sort()
    for d in dims:
        x = x.unsqueeze(d)
    return x


def unsqueeze_input(x: Tensor, axes: Tensor) -> Tensor:
    return unsqueeze(x, ints(axes))


@op("Shape")
def _shape(g, node, x):
    end = node.attr("end")
    return g.call(shape_of, x, int(node.attr("start", 0)), (1 << 62) if end is None else int(end))


@op("Size")
def _size(g, node, x):
    return g.call(size_of, x)


@op("Constant")
def _constant(g, node):
    a = node.attrs
    if "value" in a:
        value = to_tensor(np.array(a["value"]))
    elif "sparse_value" in a:
        value = to_tensor(np.array(a["sparse_value"]))
    elif "value_float" in a:
        value = torch.tensor(a["value_float"], dtype=torch.float32)
    elif "value_floats" in a:
        value = torch.tensor(a["value_floats"], dtype=torch.float32)
    elif "value_int" in a:
        value = torch.tensor(a["value_int"], dtype=torch.int64)
    elif "value_ints" in a:
        value = torch.tensor(a["value_ints"], dtype=torch.int64)
    else:
        raise Unsupported(f"a constant of {sorted(a)} (strings have no torch tensor type)")
    return g.constant(value)


@op("ConstantOfShape", since=9)
def _constant_of_shape(g, node, shape):
    value = node.attr("value")
    fill = to_tensor(np.array(value).reshape(-1)) if value is not None else torch.zeros(1)
    if fill.is_floating_point() or fill.dtype == torch.bool or fill.is_complex():
        return g.call(full, shape, float(fill[0].float()), fill.dtype)
    return g.call(full_int, shape, int(fill[0]), fill.dtype)


@op("Reshape")
def _reshape_v1(g, node, x):
    return g.call(reshape_static, x, [int(v) for v in node.attr("shape")], False)


@op("Reshape", since=5)
def _reshape(g, node, x, shape):
    allow_zero = bool(node.attr("allowzero", 0))
    if shape.static is not None:
        sizes = [int(v) for v in shape.static.reshape(-1).tolist()]
        if allow_zero or 0 not in sizes:
            return g.call(torch.reshape, x, sizes)
        return g.call(reshape_static, x, sizes, allow_zero)
    return g.call(reshape, x, shape, allow_zero)


@op("Flatten")
def _flatten(g, node, x):
    return g.call(flatten, x, int(node.attr("axis", 1)))


@op("Transpose")
def _transpose(g, node, x):
    perm = node.attr("perm")
    if perm is None and x.rank is not None:
        perm = list(range(x.rank))[::-1]
    return g.call(transpose, x, [int(p) for p in perm or []])


@op("Squeeze")
def _squeeze_v1(g, node, x):
    return g.call(squeeze, x, [int(a) for a in node.attr("axes", [])])


@op("Squeeze", since=13)
def _squeeze(g, node, x, axes=None):
    axes = _given(axes)
    if axes is None or axes.static is not None:
        return g.call(squeeze, x, [] if axes is None else g.ints(axes))
    return g.call(squeeze_input, x, axes)


@op("Unsqueeze")
def _unsqueeze_v1(g, node, x):
    return g.call(unsqueeze, x, [int(a) for a in node.attr("axes", [])])


@op("Unsqueeze", since=13)
def _unsqueeze(g, node, x, axes):
    if axes.static is not None:
        return g.call(unsqueeze, x, g.ints(axes))
    return g.call(unsqueeze_input, x, axes)


# ---------------------------------------------------------------- joining and splitting
def concat(xs: List[Tensor], ax: int) -> Tensor:
    kept: List[Tensor] = []
    for x in xs:
        if x.numel() > 0 or x.dim() > 1:
            kept.append(x)
    if len(kept) == 0:
        kept = xs[:1]
    return torch.cat([x.to(kept[0].dtype) for x in kept], ax)


@op("Concat")
def _concat(g, node, *xs):
    present = [x for x in xs if x.present]
    ax = int(node.attr("axis", 1))  # opset < 4 defaulted to 1
    known = all(x.rank is not None and x.rank > 0 and (x.const is None or x.const.numel() > 0) for x in present)
    if known and len(present) > 1:
        return g.call(torch.cat, list(present), ax)
    return g.call(concat, list(present), ax)


def split(x: Tensor, sizes: List[int], ax: int, n: int) -> List[Tensor]:
    if len(sizes) == 0:
        dim = x.shape[axis(ax, x.dim())]
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, ax))


def split_input(x: Tensor, sizes: Tensor, ax: int, n: int) -> List[Tensor]:
    return split(x, ints(sizes), ax, n)


@op("Split")
def _split(g, node, x, sizes=None):
    ax = int(node.attr("axis", 0))
    n = int(node.attr("num_outputs") or len(node.outputs))
    fixed = node.attr("split")
    sizes = _given(sizes)
    if fixed:
        parts = g.call(split, x, [int(s) for s in fixed], ax, n)
    elif sizes is None:
        parts = g.call(split, x, [], ax, n)
    elif sizes.static is not None:
        parts = g.call(split, x, g.ints(sizes), ax, n)
    else:
        parts = g.call(split_input, x, sizes, ax, n)
    return g.unpack(parts, len(node.outputs))


# ---------------------------------------------------------------- slicing
def slice_(x: Tensor, starts: List[int], ends: List[int], axes: List[int], steps: List[int]) -> Tensor:
    if len(axes) == 0:
        axes = list(range(len(starts)))
    if len(steps) == 0:
        steps = [1] * len(starts)
    for i in range(len(starts)):
        ax = axis(axes[i], x.dim())
        dim = x.shape[ax]
        start, end, step = starts[i], ends[i], steps[i]
        if step > 0:
            start = max(0, min(dim, start + dim if start < 0 else start))
            end = max(0, min(dim, end + dim if end < 0 else end))
            x = x.narrow(ax, start, max(0, end - start))
            if step > 1:
                x = torch.ops.aten.slice(x, ax, 0, x.shape[ax], step)
        else:
            # torch slices have no negative steps: take the indices explicitly.
            start = max(0, min(dim - 1, start + dim if start < 0 else start))
            end = max(-1, min(dim - 1, end + dim if end < 0 else end))
            x = x.index_select(ax, torch.arange(start, end, step, device=x.device))
    return x


def slice_input(x: Tensor, starts: Tensor, ends: Tensor, axes: Optional[Tensor], steps: Optional[Tensor]) -> Tensor:
    axes_list: List[int] = []
    steps_list: List[int] = []
    if axes is not None:
        axes_list = ints(axes)
    if steps is not None:
        steps_list = ints(steps)
    return slice_(x, ints(starts), ints(ends), axes_list, steps_list)


@op("Slice")
def _slice_v1(g, node, x):
    return g.call(slice_, x, [int(v) for v in node.attr("starts")], [int(v) for v in node.attr("ends")],
                  [int(v) for v in node.attr("axes", [])], [])


@op("Slice", since=10)
def _slice(g, node, x, starts, ends, axes=None, steps=None):
    axes, steps = _given(axes), _given(steps)
    inputs = [v for v in (starts, ends, axes, steps) if v is not None]
    if all(v.static is not None for v in inputs):
        return g.call(slice_, x, g.ints(starts), g.ints(ends), [] if axes is None else g.ints(axes),
                      [] if steps is None else g.ints(steps))
    return g.call(slice_input, x, starts, ends, axes, steps)


# ---------------------------------------------------------------- gathering and scattering
def gather(x: Tensor, idx: Tensor, ax: int) -> Tensor:
    a = axis(ax, x.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[a], idx)
    out = x.index_select(a, idx.reshape(-1))
    return out.reshape(list(x.shape[:a]) + list(idx.shape) + list(x.shape[a + 1:]))


@op("Gather")
def _gather(g, node, x, idx):
    ax = int(node.attr("axis", 0))
    if idx.static is not None and idx.static.dim() == 0 and x.rank is not None:
        i = int(idx.static)
        if i >= 0:
            return g.call(torch.select, x, ax, i)
    return g.call(gather, x, idx, ax)


def gather_elements(x: Tensor, idx: Tensor, ax: int) -> Tensor:
    a = axis(ax, x.dim())
    idx = idx.long()
    return torch.gather(x, a, torch.where(idx < 0, idx + x.shape[a], idx))


@op("GatherElements", since=11)
def _gather_elements(g, node, x, idx):
    return g.call(gather_elements, x, idx, int(node.attr("axis", 0)))


def _linear_index(shape: List[int], idx: Tensor) -> Tensor:
    """Row numbers of x flattened over its first m axes that the m-long index tuples in `idx` pick."""
    m = idx.shape[-1]
    flat = idx.reshape(-1, m).long()
    lin = torch.zeros([flat.shape[0]], dtype=torch.long, device=idx.device)
    for i in range(m):
        lin = lin * shape[i] + torch.where(flat[:, i] < 0, flat[:, i] + shape[i], flat[:, i])
    return lin


def gather_nd(x: Tensor, idx: Tensor, batch_dims: int) -> Tensor:
    batch = x.shape[:batch_dims]
    nb = 1
    for s in batch:
        nb *= s
    m = idx.shape[-1]
    xs = x.reshape([nb] + list(x.shape[batch_dims:]))
    ids = idx.reshape([nb, -1, m])
    outs: List[Tensor] = []
    for b in range(nb):
        rows = xs[b].reshape([-1] + list(xs.shape[1 + m:])).index_select(0, _linear_index(list(xs.shape[1:]), ids[b]))
        outs.append(rows)
    out = torch.stack(outs) if nb > 0 else x.new_zeros([0])
    return out.reshape(list(idx.shape[:-1]) + list(x.shape[batch_dims + m:]))


@op("GatherND", since=11)
def _gather_nd(g, node, x, idx):
    return g.call(gather_nd, x, idx, int(node.attr("batch_dims", 0)))


def scatter_nd(x: Tensor, idx: Tensor, updates: Tensor, reduction: str) -> Tensor:
    m = idx.shape[-1]
    lin = _linear_index(list(x.shape), idx)
    rows = x.reshape([-1] + list(x.shape[m:])).clone()
    values = updates.reshape([lin.shape[0]] + list(x.shape[m:])).to(x.dtype)
    if reduction == "none":
        rows[lin] = values
    elif reduction == "add":
        rows.index_add_(0, lin, values)
    else:
        rows.index_reduce_(0, lin, values, {"mul": "prod", "max": "amax", "min": "amin"}[reduction])
    return rows.reshape(x.shape)


@op("ScatterND", since=11)
def _scatter_nd(g, node, x, idx, updates):
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise Unsupported(f"reduction={reduction!r}")
    return g.call(scatter_nd, x, idx, updates, reduction)


def scatter_elements(x: Tensor, idx: Tensor, updates: Tensor, ax: int, reduction: str) -> Tensor:
    a = axis(ax, x.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[a], idx)
    if reduction == "none":
        return torch.scatter(x, a, idx, updates)
    return torch.scatter_reduce(x, a, idx, updates, {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[
        reduction], include_self=True)


@op("ScatterElements", "Scatter")
def _scatter_elements(g, node, x, idx, updates):
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise Unsupported(f"reduction={reduction!r}")
    return g.call(scatter_elements, x, idx, updates, int(node.attr("axis", 0)), reduction)


def tensor_scatter(cache: Tensor, update: Tensor, write: Optional[Tensor], ax: int, circular: bool) -> Tensor:
    a = axis(ax, cache.dim())
    length, n = cache.shape[a], update.shape[a]
    start = write.long() if write is not None else torch.zeros([cache.shape[0]], dtype=torch.long,
                                                                device=cache.device)
    positions = start.reshape(-1, 1) + torch.arange(n, device=cache.device).reshape(1, -1)  # [batch, n]
    if circular:
        positions = positions % length
    index = positions.reshape([cache.shape[0]] + [1] * (a - 1) + [n] + [1] * (cache.dim() - a - 1))
    return torch.scatter(cache, a, index.expand(update.shape), update)


@op("TensorScatter", since=24)
def _tensor_scatter(g, node, cache, update, write=None):
    mode = node.attr("mode", "linear")
    if mode not in ("linear", "circular"):
        raise Unsupported(f"mode={mode!r}")
    return g.call(tensor_scatter, cache, update, _given(write), int(node.attr("axis", -2)), mode == "circular")


# ---------------------------------------------------------------- broadcasting and tiling
def expand(x: Tensor, shape: Tensor) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            # Broadcasting against zeros of the target shape expands both ways, and stays dynamic.
            zeros = torch.zeros(_traced_sizes(shape), dtype=x.dtype, device=x.device)
            return x | zeros if x.dtype == torch.bool else x + zeros
    return expand_static(x, ints(shape))


def expand_static(x: Tensor, sizes: List[int]) -> Tensor:
    rank = max(x.dim(), len(sizes))
    have = [1] * (rank - x.dim()) + list(x.shape)
    want = [1] * (rank - len(sizes)) + sizes
    out: List[int] = []
    for i in range(rank):
        out.append(have[i] if want[i] == 1 else want[i])
    return x.expand(out)


@op("Expand", since=8)
def _expand(g, node, x, shape):
    if shape.static is not None:
        return g.call(expand_static, x, g.ints(shape))
    return g.call(expand, x, shape)


def tile(x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(ints(repeats))


@op("Tile")
def _tile(g, node, x, repeats, *legacy):
    if repeats.static is not None:
        return g.method("repeat", x, g.ints(repeats))
    return g.call(tile, x, repeats)


def range_(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing():
            return torch.arange(start, limit, delta, dtype=start.dtype, device=start.device)
    if start.is_floating_point():
        n = int(max(math.ceil((float(limit.item()) - float(start.item())) / float(delta.item())), 0))
        return start + torch.arange(n, dtype=start.dtype, device=start.device) * delta
    return torch.arange(int(start.item()), int(limit.item()), int(delta.item()), dtype=start.dtype,
                        device=start.device)


@op("Range", since=11)
def _range(g, node, start, limit, delta):
    return g.call(range_, start, limit, delta)


def eye_like(x: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    i = torch.arange(x.shape[0], device=x.device).reshape(-1, 1)
    j = torch.arange(x.shape[1], device=x.device).reshape(1, -1)
    return (j - i == k).to(dtype)


@op("EyeLike", since=9)
def _eye_like(g, node, x):
    code = node.attr("dtype")
    dtype = ONNX_DTYPES.get(int(code)) if code is not None else x.type_of()
    if dtype is None:
        raise Unsupported("an unknown dtype")
    return g.call(eye_like, x, int(node.attr("k", 0)), dtype)


# ---------------------------------------------------------------- padding and resizing
def pad(x: Tensor, pads: List[int], value: float, axes: List[int], mode: str) -> Tensor:
    rank = x.dim()
    if len(axes) == 0:
        axes = list(range(rank))
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i in range(n):
        a = axis(axes[i], rank)
        begin[a], end[a] = pads[i], pads[i + n]
    # F.pad lists pairs from the last axis; drop leading all-zero axes (non-constant modes need it).
    first = rank
    for i in range(rank):
        if (begin[i] != 0 or end[i] != 0) and first == rank:
            first = i
    spec = torch_pad(begin[first:], end[first:])
    if len(spec) == 0:
        return x
    if mode == "constant":
        if is_wide_unsigned(x.dtype):
            return F.pad(widen(x), spec, value=value).to(x.dtype)
        return F.pad(x, spec, value=value)
    if mode == "replicate" or mode == "reflect":
        # torch pads the k trailing dims of a (k+1)-D tensor: fold the leading ones into one, in floats.
        folded = x.reshape([-1] + list(x.shape[first:]))
        y = F.pad(folded.float() if not x.is_floating_point() else folded, spec, mode=mode)
        return y.reshape(list(x.shape[:first]) + list(y.shape[1:])).to(x.dtype)
    return circular_pad(x, begin, end)


def circular_pad(x: Tensor, begin: List[int], end: List[int]) -> Tensor:
    for a in range(x.dim()):
        if begin[a] > 0 or end[a] > 0:
            size = x.shape[a]
            idx = torch.arange(-begin[a], size + end[a], device=x.device) % size
            x = x.index_select(a, idx)
        if begin[a] < 0 or end[a] < 0:
            x = x.narrow(a, max(0, -begin[a]), x.shape[a] - max(0, -begin[a]) - max(0, -end[a]))
    return x


def pad_input(x: Tensor, pads: Tensor, value: Optional[Tensor], axes: Optional[Tensor], mode: str) -> Tensor:
    v = 0.0
    if value is not None and value.numel() > 0:
        v = float(value.reshape(-1)[0].item())
    axes_list: List[int] = []
    if axes is not None:
        axes_list = ints(axes)
    return pad(x, ints(pads), v, axes_list, mode)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_mode(node) -> str:
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise Unsupported(f"mode={mode!r}")
    return _PAD_MODES[mode]


@op("Pad")
def _pad_v1(g, node, x):
    pads = node.attr("pads", node.attr("paddings", []))
    return g.call(pad, x, [int(p) for p in pads], float(node.attr("value", 0.0)), [], _pad_mode(node))


@op("Pad", since=11)
def _pad(g, node, x, pads, value=None, axes=None):
    value, axes = _given(value), _given(axes)
    mode = _pad_mode(node)
    if pads.static is not None and (value is None or value.static is not None) and (axes is None or axes.static is not None):
        v = 0.0 if value is None or not value.static.numel() else float(value.static.reshape(-1)[0])
        return g.call(pad, x, g.ints(pads), v, [] if axes is None else g.ints(axes), mode)
    return g.call(pad_input, x, pads, value, axes, mode)


def center_crop_pad(x: Tensor, shape: List[int], axes: List[int]) -> Tensor:
    if len(axes) == 0:
        axes = list(range(x.dim()))
    for i in range(len(axes)):
        a = axis(axes[i], x.dim())
        size, want = x.shape[a], shape[i]
        if want < size:
            x = x.narrow(a, (size - want) // 2, want)
        elif want > size:
            before = (want - size) // 2
            spec = [0] * (2 * (x.dim() - a))
            spec[-2], spec[-1] = before, want - size - before
            x = F.pad(x, spec)
    return x


@op("CenterCropPad", since=18)
def _center_crop_pad(g, node, x, shape):
    return g.call(center_crop_pad, x, g.ints(shape), [int(a) for a in node.attr("axes", [])])


def depth_to_space(x: Tensor, b: int, dcr: bool) -> Tensor:
    n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    if dcr:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(x: Tensor, b: int, dcr: bool) -> Tensor:
    n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.permute(0, 3, 5, 1, 2, 4) if dcr else y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@op("DepthToSpace")
def _depth_to_space(g, node, x):
    return g.call(depth_to_space, x, int(node.attr("blocksize")), node.attr("mode", "DCR") == "DCR")


@op("SpaceToDepth")
def _space_to_depth(g, node, x):
    return g.call(space_to_depth, x, int(node.attr("blocksize")), node.attr("mode", "DCR") == "DCR")


# ---------------------------------------------------------------- selection
def topk(x: Tensor, k: int, ax: int, largest: bool) -> List[Tensor]:
    """TopK with equal values in index order (what onnxruntime returns): a stable sort."""
    a = axis(ax, x.dim())
    values, indices = torch.sort(x, dim=a, descending=largest, stable=True)
    return [values.narrow(a, 0, k), indices.narrow(a, 0, k)]


def topk_input(x: Tensor, k: Tensor, ax: int, largest: bool) -> List[Tensor]:
    return topk(x, int(k.reshape(-1)[0].item()), ax, largest)


@op("TopK")
def _topk_v1(g, node, x):
    return g.unpack(g.call(topk, x, int(node.attr("k")), int(node.attr("axis", -1)), True), len(node.outputs))


@op("TopK", since=10)
def _topk(g, node, x, k):
    largest = bool(node.attr("largest", 1))
    ax = int(node.attr("axis", -1))
    if k.static is not None:
        out = g.call(topk, x, int(k.static.reshape(-1)[0]), ax, largest)
    else:
        out = g.call(topk_input, x, k, ax, largest)
    return g.unpack(out, len(node.outputs))


def one_hot(indices: Tensor, depth: Tensor, values: Tensor, ax: int) -> Tensor:
    d = int(depth.reshape(-1)[0].item())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx)
    hot = F.one_hot(idx.clamp(0, d - 1), d) * ((idx >= 0) & (idx < d)).unsqueeze(-1)
    out = torch.where(hot.to(torch.bool), values[1], values[0])
    return out.movedim(-1, axis(ax, out.dim()))


@op("OneHot", since=9)
def _one_hot(g, node, indices, depth, values):
    return g.call(one_hot, indices, depth, values, int(node.attr("axis", -1)))


def non_zero(x: Tensor) -> Tensor:
    return torch.nonzero(x).t().contiguous()


@op("NonZero", since=9)
def _non_zero(g, node, x):
    return g.call(non_zero, x)


def trilu(x: Tensor, k: Optional[Tensor], upper: bool) -> Tensor:
    diagonal = int(k.item()) if k is not None else 0
    y = widen(x)
    return (torch.triu(y, diagonal) if upper else torch.tril(y, diagonal)).to(x.dtype)


@op("Trilu", since=14)
def _trilu(g, node, x, k=None):
    return g.call(trilu, x, _given(k), bool(node.attr("upper", 1)))


def compress(x: Tensor, condition: Tensor, ax: int, flat: bool) -> Tensor:
    if flat:
        x = x.reshape(-1)
        ax = 0
    a = axis(ax, x.dim())
    keep = condition.to(torch.bool).reshape(-1)[:x.shape[a]]
    return x.index_select(a, torch.nonzero(keep).reshape(-1))


@op("Compress", since=9)
def _compress(g, node, x, condition):
    ax = node.attr("axis")
    return g.call(compress, x, condition, 0 if ax is None else int(ax), ax is None)


def unique(x: Tensor, ax: int, flat: bool, ordered: bool) -> List[Tensor]:
    """ONNX Unique: values, first-occurrence indices, inverse indices, counts (sorted or in input order)."""
    data = x.reshape(-1) if flat else x
    a = 0 if flat else axis(ax, x.dim())
    values, inverse, counts = torch.unique(data, sorted=True, return_inverse=True, return_counts=True,
                                           dim=None if flat else a)
    n = values.shape[a] if not flat else values.shape[0]
    positions = torch.arange(inverse.shape[0], device=x.device)
    first = torch.full([n], inverse.shape[0], dtype=torch.long, device=x.device)
    first = first.scatter_reduce(0, inverse, positions, "amin", include_self=True)
    if not ordered:
        order = torch.argsort(first)
        rank = torch.argsort(order)
        values = values.index_select(a, order)
        counts = counts.index_select(0, order)
        first = first.index_select(0, order)
        inverse = rank.index_select(0, inverse)
    return [values, first, inverse, counts]


@op("Unique", since=11)
def _unique(g, node, x):
    ax = node.attr("axis")
    outs = g.unpack(g.call(unique, x, 0 if ax is None else int(ax), ax is None, bool(node.attr("sorted", 1))), 4)
    return outs[:len(node.outputs)]


def reverse_sequence(x: Tensor, lens: Tensor, batch_axis: int, time_axis: int) -> Tensor:
    steps = x.shape[time_axis]
    t = torch.arange(steps, device=x.device).reshape(-1, 1)  # [time, batch]
    n = lens.long().reshape(1, -1)
    order = torch.where(t < n, n - 1 - t, t)  # [time, batch]
    if time_axis != 0:
        order = order.t()  # [batch, time]
    shape = [1] * x.dim()
    shape[time_axis] = x.shape[time_axis]
    shape[batch_axis] = x.shape[batch_axis]
    return torch.gather(x, time_axis, order.reshape(shape).expand(x.shape))


@op("ReverseSequence", since=10)
def _reverse_sequence(g, node, x, lens):
    return g.call(reverse_sequence, x, lens, int(node.attr("batch_axis", 1)), int(node.attr("time_axis", 0)))


# ---------------------------------------------------------------- resizing
def _axis_weights(in_len: int, out_len: int, scale: float, mode: str, coord: str, nearest: str, cubic_a: float,
                  exclude_outside: bool, antialias: bool, roi_lo: float, roi_hi: float,
                  device: torch.device) -> List[Tensor]:
    """Neighbour indices [out, n], weights [out, n] and an extrapolation mask [out] for one axis."""
    y = torch.arange(out_len, dtype=torch.float64, device=device)
    out_f = scale * in_len
    extrapolate = torch.zeros([out_len], dtype=torch.bool, device=device)
    if coord == "align_corners":
        x = torch.zeros_like(y) if out_f == 1 else y * (in_len - 1) / (out_f - 1)
    elif coord == "asymmetric":
        x = y / scale
    elif coord == "tf_crop_and_resize":
        if out_f == 1:
            x = torch.full_like(y, (roi_hi - roi_lo) * (in_len - 1) / 2)
        else:
            x = y * (roi_hi - roi_lo) * (in_len - 1) / (out_f - 1)
        x = x + roi_lo * (in_len - 1)
        extrapolate = (x < 0) | (x > in_len - 1)
    elif coord == "pytorch_half_pixel":
        x = torch.full_like(y, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif coord == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_f)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        x = (y + 0.5) / scale - 0.5
    base = torch.floor(x)
    ratio = torch.where(x == base, torch.ones_like(x), x - base)
    if mode == "nearest":
        if nearest == "round_prefer_ceil":
            right = ratio >= 0.5
        elif nearest == "floor":
            right = torch.zeros_like(ratio, dtype=torch.bool)
        elif nearest == "ceil":
            right = torch.ones_like(ratio, dtype=torch.bool)
        else:
            right = ratio > 0.5
        right = right | (ratio == 1.0)
        coeffs = torch.stack([(~right).double(), right.double()], 1)
    elif mode == "linear":
        if antialias and scale < 1.0:
            start = int(math.floor(-1 / scale) + 1)
            taps = torch.arange(start, 2 - start, dtype=torch.float64, device=device)
            coeffs = torch.clamp(1 - torch.abs((taps.reshape(1, -1) - ratio.reshape(-1, 1)) * scale), 0.0, 1.0)
            coeffs = coeffs / coeffs.sum(1, keepdim=True)
        else:
            coeffs = torch.stack([1 - ratio, ratio], 1)
    else:
        if antialias and scale < 1.0:
            start = int(math.floor(-2 / scale) + 1)
            taps = torch.arange(start, 2 - start, dtype=torch.float64, device=device)
            t = torch.abs((taps.reshape(1, -1) - ratio.reshape(-1, 1)) * scale)
        else:
            t = torch.stack([ratio + 1, ratio, 1 - ratio, 2 - ratio], 1)
        a = cubic_a
        near = ((a + 2) * t - (a + 3)) * t * t + 1
        far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        coeffs = torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))
        if antialias and scale < 1.0:
            coeffs = coeffs / coeffs.sum(1, keepdim=True)
    n = coeffs.shape[1]
    pad = (n + 1) // 2
    xp = x + pad
    p = torch.floor(xp)
    frac = xp - p
    if n % 2 == 0:
        offset = torch.where(frac == 0, torch.full_like(frac, -(n // 2)), torch.full_like(frac, -(n // 2) + 1))
    else:
        b = -((n - 1) // 2)
        offset = torch.where(frac <= 0.5, torch.full_like(frac, b), torch.full_like(frac, b + 1))
    neighbours = (p + offset).long().reshape(-1, 1) + torch.arange(n, device=device).reshape(1, -1) - pad
    if exclude_outside:
        coeffs = torch.where((neighbours < 0) | (neighbours >= in_len), torch.zeros_like(coeffs), coeffs)
        total = coeffs.sum(1, keepdim=True)
        coeffs = coeffs / torch.where(total == 0, torch.ones_like(total), total)
    return [neighbours.clamp(0, in_len - 1), coeffs, extrapolate]


def resize(x: Tensor, roi: List[float], scales: List[float], sizes: List[int], axes: List[int], mode: str,
           coord: str, nearest: str, cubic_a: float, exclude_outside: bool, extrapolation: float,
           keep_aspect: str, antialias: bool) -> Tensor:
    """ONNX Resize in every mode, one axis at a time, as onnx's reference computes it."""
    rank = x.dim()
    if len(axes) == 0:
        axes = list(range(rank))
    axes = [axis(a, rank) for a in axes]
    scale_of = [1.0] * rank
    if len(sizes) > 0:
        size_of_out = list(x.shape)
        for i in range(len(axes)):
            size_of_out[axes[i]] = sizes[i]
        scale_of = [size_of_out[i] / x.shape[i] if x.shape[i] > 0 else 1.0 for i in range(rank)]
        if keep_aspect != "stretch":
            picked = [scale_of[a] for a in axes]
            s = min(picked) if keep_aspect == "not_larger" else max(picked)
            for a in axes:
                scale_of[a] = s
                size_of_out[a] = int(s * x.shape[a] + 0.5)
    else:
        size_of_out = list(x.shape)
        for i in range(len(axes)):
            scale_of[axes[i]] = scales[i]
            size_of_out[axes[i]] = int(math.floor(x.shape[axes[i]] * scales[i]))
    roi_full = [0.0] * rank + [1.0] * rank
    if len(roi) > 0:
        for i in range(len(axes)):
            roi_full[axes[i]] = roi[i]
            roi_full[rank + axes[i]] = roi[len(axes) + i]
    y = x.double() if x.dtype != torch.float64 else x
    for a in axes:
        in_len, out_len = y.shape[a], size_of_out[a]
        if out_len == in_len and abs(scale_of[a] - 1.0) < 1e-12 and roi_full[a] == 0.0 and roi_full[rank + a] == 1.0:
            continue
        if out_len == 0:
            shape = list(y.shape)
            shape[a] = 0
            y = y.new_zeros(shape)
            continue
        parts = _axis_weights(in_len, out_len, scale_of[a], mode, coord, nearest, cubic_a, exclude_outside,
                              antialias, roi_full[a], roi_full[rank + a], x.device)
        neighbours, coeffs, extrapolate = parts[0], parts[1], parts[2]
        n = coeffs.shape[1]
        taken = y.index_select(a, neighbours.reshape(-1))
        shape = list(y.shape[:a]) + [out_len, n] + list(y.shape[a + 1:])
        taken = taken.reshape(shape)
        wshape = [1] * a + [out_len, n] + [1] * (y.dim() - a - 1)
        y = (taken * coeffs.reshape(wshape)).sum(a + 1)
        if coord == "tf_crop_and_resize":
            mshape = [1] * a + [out_len] + [1] * (y.dim() - a - 1)
            y = torch.where(extrapolate.reshape(mshape), torch.full_like(y, extrapolation), y)
    if not x.is_floating_point():
        y = torch.round(y)
        bounds = int_range(x.dtype)
        y = y.clamp(bounds[0], bounds[1])
    return y.to(x.dtype)


def resize_input(x: Tensor, roi: Optional[Tensor], scales: Optional[Tensor], sizes: Optional[Tensor],
                 axes: List[int], mode: str, coord: str, nearest: str, cubic_a: float, exclude_outside: bool,
                 extrapolation: float, keep_aspect: str, antialias: bool) -> Tensor:
    r: List[float] = [] if roi is None else roi.reshape(-1).double().tolist()
    s: List[float] = [] if scales is None else scales.reshape(-1).double().tolist()
    z: List[int] = [] if sizes is None else ints(sizes)
    if len(z) > 0:
        s = []
    return resize(x, r, s, z, axes, mode, coord, nearest, cubic_a, exclude_outside, extrapolation, keep_aspect,
                  antialias)


def interpolate(x: Tensor, scales: List[float], mode: str, align: bool) -> Tensor:
    """The fast path: PyTorch's kernel where its coordinate rule is the ONNX one (2-D and 3-D images)."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scales[2:], mode="nearest", recompute_scale_factor=False)
    if mode == "bicubic":
        return F.interpolate(x, scale_factor=scales[2:], mode=mode, align_corners=align,
                             recompute_scale_factor=False)
    n = x.dim() - 2
    m = "linear" if n == 1 else "bilinear" if n == 2 else "trilinear"
    return F.interpolate(x, scale_factor=scales[2:], mode=m, align_corners=align, recompute_scale_factor=False)


def _resize_options(node, legacy: bool):
    """mode, coordinate rule, rounding... `legacy`: Upsample and Resize-10, whose only rule was
    asymmetric coordinates with floor rounding."""
    a = node.attrs
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic", "bicubic"):
        raise Unsupported(f"mode={mode!r}")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    coord = "asymmetric" if legacy else a.get("coordinate_transformation_mode", "half_pixel")
    nearest = "floor" if legacy else a.get("nearest_mode", "round_prefer_floor")
    known = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
             "tf_crop_and_resize")
    if coord not in known:
        raise Unsupported(f"coordinate_transformation_mode={coord!r}")
    return (mode, coord, nearest, float(a.get("cubic_coeff_a", -0.75)), bool(a.get("exclude_outside", 0)),
            float(a.get("extrapolation_value", 0.0)), a.get("keep_aspect_ratio_policy", "stretch"),
            bool(a.get("antialias", 0)))


def _fast_resize(g, x, scales: list[float], options) -> object | None:
    """F.interpolate when its rule is exactly ONNX's: batch and channels kept, 1-3 spatial axes."""
    mode, coord, nearest, cubic_a, exclude, _, _, antialias = options
    if len(scales) < 3 or len(scales) > 5 or scales[:2] != [1.0, 1.0] or antialias or exclude:
        return None
    if mode == "nearest" and coord == "asymmetric" and nearest == "floor":
        return g.call(interpolate, x, scales, "nearest", False)
    if mode == "linear" and coord in ("half_pixel", "align_corners") and (
            coord == "align_corners" or all(s >= 1.0 for s in scales)):
        return g.call(interpolate, x, scales, "linear", coord == "align_corners")
    if mode == "cubic" and cubic_a == -0.75 and len(scales) == 4 and coord in ("half_pixel", "align_corners") \
            and all(s >= 1.0 for s in scales):
        return g.call(interpolate, x, scales, "bicubic", coord == "align_corners")
    return None


@op("Upsample")
def _upsample_v1(g, node, x):
    options = _resize_options(node, legacy=True)
    scales = [float(s) for s in node.attr("scales")]
    return _fast_resize(g, x, scales, options) or g.call(resize, x, [], scales, [], [], *options)


@op("Upsample", since=9)
def _upsample(g, node, x, scales):
    options = _resize_options(node, legacy=True)
    if scales.static is not None:
        fixed = g.floats(scales)
        return _fast_resize(g, x, fixed, options) or g.call(resize, x, [], fixed, [], [], *options)
    return g.call(resize_input, x, None, scales, None, [], *options)


@op("Resize", since=10)
def _resize_v10(g, node, x, scales):
    """Resize-10 is Upsample-9 renamed: (X, scales), asymmetric coordinates."""
    return _upsample(g, node, x, scales)


@op("Resize", since=11)
def _resize(g, node, x, roi=None, scales=None, sizes=None):
    options = _resize_options(node, legacy=False)
    axes = [int(a) for a in node.attr("axes", [])]
    roi, scales, sizes = _given(roi), _given(scales), _given(sizes)
    if scales is not None and scales.static is not None and scales.static.numel() == 0:
        scales = None
    if roi is not None and roi.static is not None and roi.static.numel() == 0:
        roi = None
    if sizes is None and scales is not None and scales.static is not None and roi is None and not axes:
        fixed = g.floats(scales)
        fast = _fast_resize(g, x, fixed, options)
        if fast is not None:
            return fast
    if all(v is None or v.static is not None for v in (roi, scales, sizes)):
        return g.call(resize, x, [] if roi is None else g.floats(roi), [] if scales is None else g.floats(scales),
                      [] if sizes is None else g.ints(sizes), axes, *options)
    return g.call(resize_input, x, roi, scales, sizes, axes, *options)


# ---------------------------------------------------------------- n-gram counting
def tfidf(x: Tensor, grams: Dict[str, int], min_n: int, max_n: int, max_skip: int, indexes: List[int],
          size: int, mode: str, weights: List[float]) -> Tensor:
    """ONNX TfIdfVectorizer over integer token ids: n-gram counts (skipping up to `max_skip`), weighted."""
    rows = x.reshape(1, -1) if x.dim() == 1 else x
    values: List[List[int]] = rows.long().tolist()
    freq = torch.zeros([len(values), size], dtype=torch.float32)
    for r in range(len(values)):
        row = values[r]
        length = len(row)
        smallest = min_n
        for skip in range(1, max_skip + 2):
            if smallest > max_n:
                break
            for start in range(length):
                if start + skip * (smallest - 1) >= length:
                    break
                key = ""
                item, n = start, 1
                while n <= max_n and item < length:
                    key = str(row[item]) if n == 1 else key + "," + str(row[item])
                    if key not in grams:
                        break
                    found = grams[key]
                    if n >= smallest and found != 0:
                        freq[r, indexes[found - 1]] += 1.0
                    n += 1
                    item += skip
            smallest = max(smallest, 2)  # unigrams count once: a skip does not change them
    if mode == "IDF":
        w = torch.tensor(weights, dtype=torch.float32) if len(weights) > 0 else torch.ones([size])
        freq = torch.where(freq > 0, w.expand(freq.shape), torch.zeros_like(freq))
    elif mode == "TFIDF" and len(weights) > 0:
        freq = freq * torch.tensor(weights, dtype=torch.float32)
    return freq.reshape(size) if x.dim() == 1 else freq


@op("TfIdfVectorizer", since=9)
def _tfidf(g, node, x):
    pool = [int(v) for v in node.attr("pool_int64s", [])]
    if not pool:
        raise Unsupported("pool_strings (strings have no torch tensor type)")
    counts = [int(c) for c in node.attr("ngram_counts")]
    min_n, max_n = int(node.attr("min_gram_length")), int(node.attr("max_gram_length"))
    grams: dict[str, int] = {}
    next_id = 1  # 0: a prefix of a longer n-gram, not one itself
    for size, start in enumerate(counts, start=1):
        end = counts[size] if size < len(counts) else len(pool)
        n_grams = (end - start) // size
        for k in range(n_grams):
            if min_n <= size <= max_n:
                gram = pool[start + k * size:start + (k + 1) * size]
                for m in range(1, size):
                    grams.setdefault(",".join(map(str, gram[:m])), 0)
                grams[",".join(map(str, gram))] = next_id
            next_id += 1
    indexes = [int(i) for i in node.attr("ngram_indexes")]
    return g.call(tfidf, x, grams, min_n, max_n, int(node.attr("max_skip_count")), indexes, max(indexes) + 1,
                  node.attr("mode"), [float(w) for w in node.attr("weights", [])])
