"""Pooling: max, average and Lp pooling over windows and globally, and max unpooling."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._registry import Unsupported, op
from converters.onnx_to_torch.ops._common import int_range, pool_out_size, same_pads, torch_pad
from converters.onnx_to_torch.ops.nn import static_pads


def _resolve(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
             end: List[int], auto_pad: str) -> Tuple[List[int], List[int]]:
    if auto_pad == "SAME_UPPER" or auto_pad == "SAME_LOWER":
        return same_pads(x.shape[2:], kernel, strides, dilations, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * len(kernel), [0] * len(kernel)
    return begin, end


def _grow(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
          end: List[int], ceil: bool) -> List[int]:
    """End pads that make a floor-mode pool over the padded input give ONNX's output sizes."""
    size = x.shape[2:]
    grow: List[int] = []
    for j in range(len(kernel)):
        o = pool_out_size(size[j], kernel[j], strides[j], dilations[j], begin[j], end[j], ceil)
        grow.append((o - 1) * strides[j] + dilations[j] * (kernel[j] - 1) + 1 - size[j] - begin[j])
    return grow


def _max_pool_nd(x: Tensor, kernel: List[int], strides: List[int], pads: List[int], dilations: List[int],
                 ceil: bool) -> Tensor:
    n = len(kernel)
    if n == 1:
        return F.max_pool1d(x, kernel, strides, pads, dilations, ceil)
    if n == 2:
        return F.max_pool2d(x, kernel, strides, pads, dilations, ceil)
    return F.max_pool3d(x, kernel, strides, pads, dilations, ceil)


def max_pool(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
             end: List[int], auto_pad: str, ceil: bool) -> Tensor:
    """ONNX MaxPool with pads resolved at run time; asymmetric pads become explicit -inf pads."""
    begin, end = _resolve(x, kernel, strides, dilations, begin, end, auto_pad)
    if _native(kernel, begin, end):
        return _max_pool_nd(x, kernel, strides, begin, dilations, ceil)
    if _ceil_covers(x, kernel, strides, dilations, begin, end, ceil):
        # Extra end padding that torch's ceil mode reproduces: its clipped last window is the
        # max over the cells that exist, as with -inf padding, and nothing is copied.
        return _max_pool_nd(x, kernel, strides, begin, dilations, True)
    grow = _grow(x, kernel, strides, dilations, begin, end, ceil)
    lowest = -math.inf if x.is_floating_point() else int_range(x.dtype)[0]
    xp = F.pad(x, torch_pad(begin, grow), value=lowest)
    return _max_pool_nd(xp, kernel, strides, [0] * len(kernel), dilations, False)


def max_pool_int(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
                 end: List[int], auto_pad: str, ceil: bool) -> Tensor:
    """Integer MaxPool (uint8, int8): torch pools floats only, and every int8 value is exact in float."""
    return max_pool(x.float(), kernel, strides, dilations, begin, end, auto_pad, ceil).to(x.dtype)


def max_pool_indices(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], pads: List[int],
                     ceil: bool, column_major: bool) -> List[Tensor]:
    """MaxPool's Values and Indices: flat offsets into the whole input, row- or column-major."""
    n = len(kernel)
    if n == 1:
        y, idx = F.max_pool1d(x, kernel, strides, pads, dilations, ceil, True)
    elif n == 2:
        y, idx = F.max_pool2d(x, kernel, strides, pads, dilations, ceil, True)
    else:
        y, idx = F.max_pool3d(x, kernel, strides, pads, dilations, ceil, True)
    spatial = x.shape[2:]
    plane = 1
    for s in spatial:
        plane *= s
    if column_major:
        coords: List[Tensor] = []
        rest = idx
        for j in range(n - 1, -1, -1):
            coords.insert(0, rest % spatial[j])
            rest = rest // spatial[j]
        flat = torch.zeros_like(idx)
        for j in range(n - 1, -1, -1):
            flat = flat * spatial[j] + coords[j]
        idx = flat
    base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(
        [x.shape[0], x.shape[1]] + [1] * n) * plane
    return [y, idx + base]


def _ceil_covers(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
                 end: List[int], ceil: bool) -> bool:
    """Whether torch's ceil mode with padding `begin` gives ONNX's sizes for end pads beyond `begin`."""
    size = x.shape[2:]
    for j in range(len(kernel)):
        if begin[j] > end[j] or 2 * begin[j] > kernel[j]:
            return False
        want = pool_out_size(size[j], kernel[j], strides[j], dilations[j], begin[j], end[j], ceil)
        if pool_out_size(size[j], kernel[j], strides[j], dilations[j], begin[j], begin[j], True) != want:
            return False
    return True


def _native(kernel: List[int], begin: List[int], end: List[int]) -> bool:
    """torch's own padding is symmetric and at most half the kernel; its ceil rule is onnxruntime's."""
    if begin != end:
        return False
    for j in range(len(kernel)):
        if 2 * begin[j] > kernel[j]:
            return False
    return True


def window_sum(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int]) -> Tensor:
    """Sum over each (dilated) window of an explicitly padded input: a conv with a kernel of ones."""
    n = len(kernel)
    lead = x.shape[:2]
    flat = x.reshape([-1, 1] + list(x.shape[2:]))
    ones = torch.ones([1, 1] + kernel, dtype=x.dtype, device=x.device)
    if n == 1:
        y = F.conv1d(flat, ones, None, strides, 0, dilations)
    elif n == 2:
        y = F.conv2d(flat, ones, None, strides, 0, dilations)
    else:
        y = F.conv3d(flat, ones, None, strides, 0, dilations)
    return y.reshape(list(lead) + list(y.shape[2:]))


def avg_pool(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
             end: List[int], auto_pad: str, ceil: bool, include_pad: bool) -> Tensor:
    """ONNX AveragePool: the window sum over the cells that count (the input, and explicit pads if included)."""
    n = len(kernel)
    begin, end = _resolve(x, kernel, strides, dilations, begin, end, auto_pad)
    if _native(kernel, begin, end) and dilations == [1] * n:
        if n == 1:
            return F.avg_pool1d(x, kernel, strides, begin, ceil, include_pad)
        if n == 2:
            return F.avg_pool2d(x, kernel, strides, begin, ceil, include_pad)
        return F.avg_pool3d(x, kernel, strides, begin, ceil, include_pad)
    grow = _grow(x, kernel, strides, dilations, begin, end, ceil)
    xp = F.pad(x, torch_pad(begin, grow))
    ones = torch.ones([1, 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
    if include_pad:
        ones = F.pad(ones, torch_pad(begin, end), value=1.0)
        rest: List[int] = []
        for j in range(n):
            rest.append(grow[j] - end[j])
        mask = F.pad(ones, torch_pad([0] * n, rest))
    else:
        mask = F.pad(ones, torch_pad(begin, grow))
    return window_sum(xp, kernel, strides, dilations) / window_sum(mask, kernel, strides, dilations)


def lp_pool(x: Tensor, kernel: List[int], strides: List[int], dilations: List[int], begin: List[int],
            end: List[int], auto_pad: str, ceil: bool, p: float) -> Tensor:
    begin, end = _resolve(x, kernel, strides, dilations, begin, end, auto_pad)
    grow = _grow(x, kernel, strides, dilations, begin, end, ceil)
    xp = F.pad(x.abs().pow(p), torch_pad(begin, grow))
    return window_sum(xp, kernel, strides, dilations).pow(1.0 / p)


def global_pool(x: Tensor, kind: str, p: float) -> Tensor:
    dims: List[int] = list(range(2, x.dim()))
    if kind == "max":
        return x.amax(dims, keepdim=True)
    if kind == "lp":
        return x.abs().pow(p).sum(dims, keepdim=True).pow(1.0 / p)
    return x.mean(dims, keepdim=True)


def max_unpool(x: Tensor, idx: Tensor, kernel: List[int], strides: List[int], begin: List[int], end: List[int],
               shape: Optional[List[int]]) -> Tensor:
    n = len(kernel)
    inferred: List[int] = [x.shape[0], x.shape[1]]
    for j in range(n):
        inferred.append((x.shape[2 + j] - 1) * strides[j] - begin[j] - end[j] + kernel[j])
    total = 1
    for s in inferred:
        total *= s
    y = torch.zeros([total], dtype=x.dtype, device=x.device)
    y = y.scatter(0, idx.reshape(-1).long(), x.reshape(-1)).reshape(inferred)
    if shape is None or shape == inferred:
        return y
    # A given output shape keeps the inferred one in its top-left corner (onnx's reference).
    spec: List[int] = []
    for j in range(len(shape) - 1, -1, -1):
        spec.append(0)
        spec.append(shape[j] - inferred[j])
    return torch.nn.functional.pad(y, spec)


# ---------------------------------------------------------------- lowerings
def _kernel(node) -> list[int]:
    kernel = node.attr("kernel_shape")
    if not kernel:
        raise Unsupported("no kernel_shape")
    return [int(k) for k in kernel]


def _full_window(node, n: int):
    a = node.attrs
    pads = [int(v) for v in a.get("pads", [])] or [0] * (2 * n)
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    return ([int(v) for v in a.get("strides", [])] or [1] * n, [int(v) for v in a.get("dilations", [])] or [1] * n,
            pads[:n], pads[n:], auto_pad)


_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _is_float(x) -> bool:
    return x.type_of() is None or x.type_of().is_floating_point


def _pool_node(node):
    """kernel, ceil mode, (strides, dilations, begin, end, auto_pad), and the static plan (or None)."""
    kernel = _kernel(node)
    if len(kernel) not in _MAX:
        raise Unsupported(f"{len(kernel)}-D pooling")
    return kernel, bool(node.attr("ceil_mode", 0)), _full_window(node, len(kernel)), static_pads(node, len(kernel),
                                                                                                 kernel)


@op("MaxPool")
def _max_pool(g, node, x):
    kernel, ceil, (strides, dilations, begin, end, auto_pad), plan = _pool_node(node)
    n = len(kernel)
    wants_indices = len([o for o in node.outputs if o]) > 1
    if wants_indices:
        if plan is None or not _native(kernel, plan[2], plan[3]):
            raise Unsupported("Indices output with asymmetric or size-dependent pads")
        return g.unpack(g.call(max_pool_indices, x, kernel, plan[0], plan[1], plan[2], ceil,
                               bool(node.attr("storage_order", 0))), 2)
    if not _is_float(x):
        return g.call(max_pool_int, x, kernel, strides, dilations, begin, end, auto_pad, ceil)
    if plan is not None and _native(kernel, plan[2], plan[3]):
        return g.call(_MAX[n], x, kernel, plan[0], plan[2], plan[1], ceil)
    return g.call(max_pool, x, kernel, strides, dilations, begin, end, auto_pad, ceil)


@op("AveragePool")
def _avg_pool(g, node, x):
    kernel, ceil, (strides, dilations, begin, end, auto_pad), plan = _pool_node(node)
    n = len(kernel)
    include = bool(node.attr("count_include_pad", 0))
    if plan is not None and _native(kernel, plan[2], plan[3]) and plan[1] == [1] * n:
        return g.call(_AVG[n], x, kernel, plan[0], plan[2], ceil, include)
    return g.call(avg_pool, x, kernel, strides, dilations, begin, end, auto_pad, ceil, include)


@op("LpPool")
def _lp_pool(g, node, x):
    kernel = _kernel(node)
    strides, dilations, begin, end, auto_pad = _full_window(node, len(kernel))
    return g.call(lp_pool, x, kernel, strides, dilations, begin, end, auto_pad, bool(node.attr("ceil_mode", 0)),
                  float(node.attr("p", 2)))


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(g, node, x):
    kind = {"GlobalAveragePool": "avg", "GlobalMaxPool": "max", "GlobalLpPool": "lp"}[node.op_type]
    if kind == "avg" and x.rank is not None and x.rank > 2:
        return g.call(torch.mean, x, list(range(2, x.rank)), True)
    return g.call(global_pool, x, kind, float(node.attr("p", 2)))


@op("MaxUnpool", since=9)
def _max_unpool(g, node, x, idx, shape=None):
    kernel = _kernel(node)
    strides, _, begin, end, _ = _full_window(node, len(kernel))
    out = g.ints(shape) if shape is not None and shape.present else None
    return g.call(max_unpool, x, idx, kernel, strides, begin, end, out)
