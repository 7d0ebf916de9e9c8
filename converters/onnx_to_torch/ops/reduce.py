"""Reductions over axes: Reduce*, ArgMax/ArgMin, cumulative sums and products."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from converters.onnx_to_torch._registry import op
from converters.onnx_to_torch.ops._common import axis, int_range, ints, is_wide_unsigned, widen


def reduce(x: Tensor, axes: List[int], keep: bool, noop: bool, kind: str) -> Tensor:
    if len(axes) == 0:
        if noop:
            return x
        axes = list(range(x.dim()))
    dims = [axis(d, x.dim()) for d in axes]
    dtype = x.dtype
    if is_wide_unsigned(dtype):
        x = widen(x)
    if dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.numel() == 0 and (kind == "ReduceMax" or kind == "ReduceMin"):
        # onnx: the reduction of nothing is the identity element (-inf for max, inf for min).
        shape: List[int] = []
        for d in range(x.dim()):
            if d in dims:
                if keep:
                    shape.append(1)
            else:
                shape.append(x.shape[d])
        bounds = int_range(x.dtype)
        lowest = -float("inf") if x.is_floating_point() else bounds[0]
        highest = float("inf") if x.is_floating_point() else bounds[1]
        return torch.full(shape, lowest if kind == "ReduceMax" else highest, dtype=dtype)
    if kind == "ReduceMean":
        y = x.mean(dims, keepdim=keep)
    elif kind == "ReduceSum":
        y = x.sum(dims, keepdim=keep)
    elif kind == "ReduceMax":
        y = x.amax(dims, keepdim=keep)
    elif kind == "ReduceMin":
        y = x.amin(dims, keepdim=keep)
    elif kind == "ReduceL1":
        y = x.abs().sum(dims, keepdim=keep)
    elif kind == "ReduceL2":
        y = (x * x).sum(dims, keepdim=keep).sqrt()
    elif kind == "ReduceSumSquare":
        y = (x * x).sum(dims, keepdim=keep)
    elif kind == "ReduceLogSumExp":
        y = torch.logsumexp(x, dims, keepdim=keep)
    elif kind == "ReduceLogSum":
        y = torch.log(x.sum(dims, keepdim=keep))
    else:  # ReduceProd: torch takes one dim at a time
        y = x
        for d in dims:
            y = y.prod(d, keepdim=True)
        if not keep:
            dims.sort(reverse=True)
            for d in dims:
                y = y.squeeze(d)
    return y.to(dtype)


def reduce_input(x: Tensor, axes: Tensor, keep: bool, noop: bool, kind: str) -> Tensor:
    return reduce(x, ints(axes), keep, noop, kind)


_REDUCERS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
             "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum")


@op(*_REDUCERS)
def _reduce_attr(g, node, x):
    """Before opset 18 (ReduceSum: 13) the axes are an attribute."""
    return g.call(reduce, x, [int(a) for a in node.attr("axes", [])], bool(node.attr("keepdims", 1)),
                  bool(node.attr("noop_with_empty_axes", 0)), node.op_type)


def _reduce_from_input(g, node, x, axes=None):
    keep, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))
    if axes is None or not axes.present:
        return g.call(reduce, x, [], keep, noop, node.op_type)
    if axes.static is not None:
        dims = g.ints(axes)
        if node.op_type == "ReduceMean" and dims and (x.type_of() is None or x.type_of().is_floating_point):
            return g.call(torch.mean, x, dims, keep)
        return g.call(reduce, x, dims, keep, noop, node.op_type)
    return g.call(reduce_input, x, axes, keep, noop, node.op_type)


op("ReduceSum", since=13)(_reduce_from_input)
op(*[r for r in _REDUCERS if r != "ReduceSum"], since=18)(_reduce_from_input)


def arg(x: Tensor, ax: int, keep: bool, last: bool, largest: bool) -> Tensor:
    a = axis(ax, x.dim())
    if is_wide_unsigned(x.dtype):
        x = widen(x)
    if last:
        flipped = x.flip([a])
        found = torch.argmax(flipped, a, keep) if largest else torch.argmin(flipped, a, keep)
        return x.shape[a] - 1 - found
    return torch.argmax(x, a, keep) if largest else torch.argmin(x, a, keep)


@op("ArgMax", "ArgMin")
def _arg(g, node, x):
    return g.call(arg, x, int(node.attr("axis", 0)), bool(node.attr("keepdims", 1)),
                  bool(node.attr("select_last_index", 0)), node.op_type == "ArgMax")


def cumulative(x: Tensor, ax: Tensor, exclusive: bool, reverse: bool, product: bool) -> Tensor:
    a = axis(int(ax.reshape(-1)[0].item()), x.dim())
    dtype = x.dtype
    y = widen(x).flip([a]) if reverse else widen(x)
    if product:
        out = torch.cumprod(y, a)
        if exclusive:
            out = torch.cat([torch.ones_like(y.narrow(a, 0, 1)), out.narrow(a, 0, y.shape[a] - 1)], a)
    else:
        out = torch.cumsum(y, a)
        if exclusive:
            out = out - y
    return (out.flip([a]) if reverse else out).to(dtype)


@op("CumSum", since=11)
def _cumsum(g, node, x, ax):
    return g.call(cumulative, x, ax, bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0)), False)


@op("CumProd", since=26)
def _cumprod(g, node, x, ax):
    return g.call(cumulative, x, ax, bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0)), True)
