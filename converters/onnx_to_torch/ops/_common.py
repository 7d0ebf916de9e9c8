"""Typed helpers the op families share: axes, pads, windows, run-time int lists (all TorchScript-compatible)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from converters.onnx_to_torch._dtypes import WIDE_UNSIGNED


def ints(t: Tensor) -> List[int]:
    """A tensor's values as ints: shapes, axes and pads computed at run time."""
    out: List[int] = t.reshape(-1).long().tolist()
    return out


def floats(t: Tensor) -> List[float]:
    out: List[float] = t.reshape(-1).double().tolist()
    return out


def scalar_int(t: Tensor) -> int:
    return int(t.reshape(-1)[0].item())


def axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def torch_pad(begin: List[int], end: List[int]) -> List[int]:
    """ONNX per-axis (begin, end) pads of the trailing axes -> F.pad's last-axis-first list."""
    out: List[int] = []
    for i in range(len(begin) - 1, -1, -1):
        out.append(begin[i])
        out.append(end[i])
    return out


def same_pads(size: List[int], kernel: List[int], strides: List[int], dilations: List[int],
              upper: bool) -> Tuple[List[int], List[int]]:
    """auto_pad SAME_UPPER / SAME_LOWER: pads that make the output ceil(size / stride) long."""
    begin: List[int] = []
    end: List[int] = []
    for j in range(len(kernel)):
        out = -(-size[j] // strides[j])
        total = max(0, (out - 1) * strides[j] + (kernel[j] - 1) * dilations[j] + 1 - size[j])
        small = total // 2
        begin.append(small if upper else total - small)
        end.append(total - small if upper else small)
    return begin, end


def pool_out_size(i: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool) -> int:
    """Output length as onnxruntime computes it (a ceil window must start inside input or left pad)."""
    span = i + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= i + pb:
        out -= 1
    return out


def widen(x: Tensor) -> Tensor:
    """uint16/32/64 on a signed type torch computes with (uint64 beyond 2**63 wraps)."""
    if x.dtype == torch.uint16:
        return x.to(torch.int32)
    if x.dtype == torch.uint32 or x.dtype == torch.uint64:
        return x.to(torch.int64)
    return x


def int_range(dtype: torch.dtype) -> Tuple[float, float]:
    """(lowest, highest) value of an integer dtype, as floats (torch.iinfo does not script)."""
    if dtype == torch.uint8:
        return 0.0, 255.0
    if dtype == torch.int8:
        return -128.0, 127.0
    if dtype == torch.int16:
        return -32768.0, 32767.0
    if dtype == torch.uint16:
        return 0.0, 65535.0
    if dtype == torch.int32:
        return -2147483648.0, 2147483647.0
    if dtype == torch.uint32:
        return 0.0, 4294967295.0
    if dtype == torch.uint64:
        return 0.0, 18446744073709551615.0
    if dtype == torch.bool:
        return 0.0, 1.0
    return -9223372036854775808.0, 9223372036854775807.0


def is_float_dtype(dtype: torch.dtype) -> bool:
    return torch.zeros([0], dtype=dtype).is_floating_point()


def is_wide_unsigned(dtype: torch.dtype) -> bool:
    return dtype == torch.uint16 or dtype == torch.uint32 or dtype == torch.uint64


__all__ = ["WIDE_UNSIGNED", "axis", "floats", "int_range", "ints", "is_float_dtype", "is_wide_unsigned", "pool_out_size", "same_pads",
           "scalar_int", "torch_pad", "widen"]
