"""Quantization: QuantizeLinear/DequantizeLinear (per tensor, axis or block), integer and QLinear conv and matmul.

torch has no integer convolution or matmul on the CPU: they run on float64, where every int8 and
int16 product and sum of a real layer is exact, and are rounded and saturated as onnxruntime does.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from converters.onnx_to_torch._dtypes import ONNX_DTYPES
from converters.onnx_to_torch._registry import Unsupported, op
from converters.onnx_to_torch.ops._common import axis, int_range, is_float_dtype
from converters.onnx_to_torch.ops.elementwise import cast
from converters.onnx_to_torch.ops.nn import conv, conv_window


def _spread(v: Tensor, x: Tensor, ax: int, block: int) -> Tensor:
    """A scale or zero point (scalar, per axis or per block) shaped to broadcast against x."""
    if v.dim() == 0 or v.numel() == 1:
        return v.reshape([])
    a = axis(ax, x.dim())
    if block <= 0:
        shape = [1] * x.dim()
        shape[a] = v.numel()
        return v.reshape(shape)
    v = v.repeat_interleave(block, a)
    return v.narrow(a, 0, x.shape[a])


def quantize(x: Tensor, scale: Tensor, zero: Optional[Tensor], ax: int, block: int, dtype: torch.dtype,
             saturate: bool) -> Tensor:
    y = x.double() / _spread(scale, x, ax, block).double()
    if is_float_dtype(dtype):  # float8
        return cast(y.float(), dtype, saturate)
    y = torch.round(y)
    if zero is not None:
        y = y + _spread(zero, x, ax, block).double()
    bounds = int_range(dtype)
    return y.clamp(bounds[0], bounds[1]).to(dtype)


def dequantize(x: Tensor, scale: Tensor, zero: Optional[Tensor], ax: int, block: int,
               dtype: Optional[torch.dtype]) -> Tensor:
    dx = x.float()
    if zero is not None and not x.is_floating_point():
        dx = dx - _spread(zero, x, ax, block).float()
    y = dx * _spread(scale, x, ax, block).float()
    return y.to(scale.dtype if dtype is None else dtype)


def _quant_dtype(node, zero) -> torch.dtype:
    if zero is not None and zero.type_of() is not None:
        return zero.type_of()
    code = node.attr("output_dtype", 0)
    if code:
        if int(code) not in ONNX_DTYPES:
            raise Unsupported(f"output_dtype {code}, which torch has no dtype for")
        return ONNX_DTYPES[int(code)]
    if zero is not None:
        raise Unsupported("a zero point of unknown type")
    return torch.uint8


def _given(v):
    return v if v is not None and v.present else None


@op("QuantizeLinear", since=10)
def _quantize(g, node, x, scale, zero=None):
    zero = _given(zero)
    dtype = _quant_dtype(node, zero)
    return g.call(quantize, x, scale, zero, int(node.attr("axis", 1)), int(node.attr("block_size", 0)), dtype,
                  bool(node.attr("saturate", 1)))


@op("DequantizeLinear", since=10)
def _dequantize(g, node, x, scale, zero=None):
    code = node.attr("output_dtype", 0)
    dtype = ONNX_DTYPES.get(int(code)) if code else None
    return g.call(dequantize, x, scale, _given(zero), int(node.attr("axis", 1)), int(node.attr("block_size", 0)),
                  dtype)


def dynamic_quantize(x: Tensor) -> List[Tensor]:
    high = torch.clamp(x.max(), min=0.0)
    low = torch.clamp(x.min(), max=0.0)
    scale = torch.where(high == low, torch.ones_like(high), high - low) / 255.0
    zero = torch.round(torch.clamp(-low / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(x / scale) + zero, 0.0, 255.0)
    return [y.to(torch.uint8), scale.to(x.dtype), zero.to(torch.uint8)]


@op("DynamicQuantizeLinear", since=11)
def _dynamic_quantize(g, node, x):
    return g.unpack(g.call(dynamic_quantize, x), len(node.outputs))


def _centred(x: Tensor, zero: Optional[Tensor], per_row_axis: int) -> Tensor:
    """x - zero point as float64 (a per-row/column zero point along `per_row_axis` of a 2-D operand)."""
    v = x.double()
    if zero is not None:
        z = zero.double()
        if z.numel() > 1:
            shape = [1] * x.dim()
            shape[axis(per_row_axis, x.dim())] = z.numel()
            z = z.reshape(shape)
        v = v - z
    return v


def matmul_integer(a: Tensor, b: Tensor, a_zero: Optional[Tensor], b_zero: Optional[Tensor]) -> Tensor:
    return torch.matmul(_centred(a, a_zero, -2), _centred(b, b_zero, -1)).to(torch.int32)


@op("MatMulInteger", since=10)
def _matmul_integer(g, node, a, b, a_zero=None, b_zero=None):
    return g.call(matmul_integer, a, b, _given(a_zero), _given(b_zero))


def _saturate(y: Tensor, dtype: torch.dtype) -> Tensor:
    if is_float_dtype(dtype):
        return cast(y.float(), dtype, True)
    bounds = int_range(dtype)
    return torch.round(y).clamp(bounds[0], bounds[1]).to(dtype)


def qlinear_matmul(a: Tensor, a_scale: Tensor, a_zero: Optional[Tensor], b: Tensor, b_scale: Tensor,
                   b_zero: Optional[Tensor], y_scale: Tensor, y_zero: Optional[Tensor]) -> Tensor:
    ad = dequantize(a, a_scale.reshape(-1, 1) if a_scale.numel() > 1 else a_scale,
                    None if a_zero is None else (a_zero.reshape(-1, 1) if a_zero.numel() > 1 else a_zero), 0, 0,
                    torch.float64)
    bd = dequantize(b, b_scale, b_zero, -1, 0, torch.float64)
    y = torch.matmul(ad, bd) / y_scale.double()
    dtype = y_zero.dtype if y_zero is not None else a.dtype
    if y_zero is not None and not is_float_dtype(dtype):
        y = torch.round(y) + y_zero.double()
    return _saturate(y, dtype)


@op("QLinearMatMul", since=10)
def _qlinear_matmul(g, node, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero):
    return g.call(qlinear_matmul, a, a_scale, _given(a_zero), b, b_scale, _given(b_zero), y_scale, _given(y_zero))


def _integer_conv(x: Tensor, w: Tensor, strides: List[int], begin: List[int], end: List[int],
                  dilations: List[int], group: int, auto_pad: str) -> Tensor:
    return conv(x, w, None, strides, begin, end, dilations, group, auto_pad)


def conv_integer(x: Tensor, w: Tensor, x_zero: Optional[Tensor], w_zero: Optional[Tensor], strides: List[int],
                 begin: List[int], end: List[int], dilations: List[int], group: int, auto_pad: str) -> Tensor:
    xc = _centred(x, x_zero, 1)
    wc = _centred(w, w_zero, 0)
    return _integer_conv(xc, wc, strides, begin, end, dilations, group, auto_pad).to(torch.int32)


@op("ConvInteger", since=10)
def _conv_integer(g, node, x, w, x_zero=None, w_zero=None):
    n = len(node.attr("kernel_shape", [])) or ((w.rank or 4) - 2)
    strides, dilations, begin, end, auto_pad = conv_window(node, n)
    return g.call(conv_integer, x, w, _given(x_zero), _given(w_zero), strides, begin, end, dilations,
                  int(node.attr("group", 1)), auto_pad)


def qlinear_conv(x: Tensor, x_scale: Tensor, x_zero: Optional[Tensor], w: Tensor, w_scale: Tensor,
                 w_zero: Optional[Tensor], y_scale: Tensor, y_zero: Optional[Tensor], b: Optional[Tensor],
                 strides: List[int], begin: List[int], end: List[int], dilations: List[int], group: int,
                 auto_pad: str) -> Tensor:
    acc = _integer_conv(_centred(x, x_zero, 1), _centred(w, w_zero, 0), strides, begin, end, dilations, group,
                        auto_pad)
    if b is not None:
        acc = acc + b.double().reshape([1, -1] + [1] * (acc.dim() - 2))
    ws = w_scale.double()
    if ws.numel() > 1:
        ws = ws.reshape([1, -1] + [1] * (acc.dim() - 2))
    y = acc * (x_scale.double() * ws / y_scale.double())
    dtype = y_zero.dtype if y_zero is not None else x.dtype
    y = torch.round(y)
    if y_zero is not None:
        y = y + y_zero.double()
    return _saturate(y, dtype)


@op("QLinearConv", since=10)
def _qlinear_conv(g, node, x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, b=None):
    n = len(node.attr("kernel_shape", [])) or ((w.rank or 4) - 2)
    strides, dilations, begin, end, auto_pad = conv_window(node, n)
    return g.call(qlinear_conv, x, x_scale, _given(x_zero), w, w_scale, _given(w_zero), y_scale, _given(y_zero),
                  _given(b), strides, begin, end, dilations, int(node.attr("group", 1)), auto_pad)


__all__ = ["dequantize", "quantize"]
