"""Signal processing: DFT, STFT, window functions and the mel filter bank (torch.fft)."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

from converters.onnx_to_torch._dtypes import ONNX_DTYPES
from converters.onnx_to_torch._registry import Unsupported, op
from converters.onnx_to_torch.ops._common import axis


def _complex(x: Tensor) -> Tensor:
    """[..., 1] real or [..., 2] (real, imaginary) -> a complex128 tensor without the last axis.

    Double precision, as onnx's reference: the float32 round-off of a transform's near-zero terms
    is larger than the cases' absolute tolerance."""
    if x.shape[-1] == 1:
        return x.squeeze(-1).to(torch.complex128)
    return torch.view_as_complex(x.double().contiguous())


def _split(c: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.view_as_real(c).to(dtype)


def dft(x: Tensor, length: int, ax: int, inverse: bool, onesided: bool) -> Tensor:
    a = axis(ax, x.dim())
    signal = _complex(x)
    if length <= 0:
        length = 2 * (signal.shape[a] - 1) if inverse and onesided else signal.shape[a]
    if inverse and onesided:
        return torch.fft.irfft(signal, length, a).unsqueeze(-1).to(x.dtype)
    if inverse:
        return _split(torch.fft.ifft(signal, length, a), x.dtype)
    out = torch.fft.fft(signal, length, a)
    if onesided:
        out = out.narrow(a, 0, length // 2 + 1)
    return _split(out, x.dtype)


def dft_input(x: Tensor, length: Optional[Tensor], ax: Optional[Tensor], default_axis: int, inverse: bool,
              onesided: bool) -> Tensor:
    n = int(length.reshape(-1)[0].item()) if length is not None else 0
    a = int(ax.reshape(-1)[0].item()) if ax is not None else default_axis
    return dft(x, n, a, inverse, onesided)


def _given(v):
    return v if v is not None and v.present else None


@op("DFT", since=17)
def _dft_17(g, node, x, length=None):
    return g.call(dft_input, x, _given(length), None, int(node.attr("axis", 1)), bool(node.attr("inverse", 0)),
                  bool(node.attr("onesided", 0)))


@op("DFT", since=20)
def _dft(g, node, x, length=None, ax=None):
    return g.call(dft_input, x, _given(length), _given(ax), -2, bool(node.attr("inverse", 0)),
                  bool(node.attr("onesided", 0)))


def stft(x: Tensor, step: Tensor, window: Optional[Tensor], length: Optional[Tensor], onesided: bool) -> Tensor:
    hop = int(step.reshape(-1)[0].item())
    if length is not None:
        n = int(length.reshape(-1)[0].item())
    elif window is not None:
        n = window.shape[0]
    else:
        n = x.shape[-2]
    frames = x.unfold(1, n, hop)  # [batch, frames, 1 or 2, n]
    if window is not None:
        frames = frames * window.to(x.dtype)
    signal = frames.movedim(2, -1)  # [batch, frames, n, 1 or 2]
    out = torch.fft.fft(_complex(signal), n, -1)
    if onesided:
        out = out.narrow(-1, 0, n // 2 + 1)
    return _split(out, x.dtype)


@op("STFT", since=17)
def _stft(g, node, x, step, window=None, length=None):
    return g.call(stft, x, step, _given(window), _given(length), bool(node.attr("onesided", 1)))


def window(size: Tensor, kind: str, periodic: bool, dtype: torch.dtype) -> Tensor:
    n = int(size.reshape(-1)[0].item())
    i = torch.arange(n, dtype=torch.float64)
    denominator = float(n if periodic else n - 1)
    if kind == "HannWindow":
        y = torch.sin(i * math.pi / denominator) ** 2
    elif kind == "HammingWindow":
        alpha = 25.0 / 46.0
        y = alpha - torch.cos(i * math.pi * 2 / denominator) * (1 - alpha)
    else:
        y = 0.42 - 0.5 * torch.cos(i * math.pi * 2 / denominator) + 0.08 * torch.cos(i * math.pi * 4 / denominator)
    return y.to(dtype)


def _dtype(node, default: int = 1) -> torch.dtype:
    code = int(node.attr("output_datatype", default))
    if code not in ONNX_DTYPES:
        raise Unsupported(f"output_datatype {code}")
    return ONNX_DTYPES[code]


@op("HannWindow", "HammingWindow", "BlackmanWindow", since=17)
def _window(g, node, size):
    return g.call(window, size, node.op_type, bool(node.attr("periodic", 1)), _dtype(node))


def mel_weight_matrix(bins: Tensor, dft_length: Tensor, rate: Tensor, low: Tensor, high: Tensor,
                      dtype: torch.dtype) -> Tensor:
    n_mel = int(bins.reshape(-1)[0].item())
    n_dft = int(dft_length.reshape(-1)[0].item())
    sample_rate = int(rate.reshape(-1)[0].item())
    low_mel = 2595.0 * math.log1p(float(low.reshape(-1)[0].item()) / 700.0) / math.log(10.0)
    high_mel = 2595.0 * math.log1p(float(high.reshape(-1)[0].item()) / 700.0) / math.log(10.0)
    points = torch.arange(n_mel + 2, dtype=torch.float64)
    step = (high_mel - low_mel) / (n_mel + 2)
    hertz = 700.0 * torch.expm1((points * step + low_mel) / 2595.0 * math.log(10.0))
    edges: List[int] = torch.floor((n_dft + 1) * hertz / sample_rate).long().tolist()
    out = torch.zeros([n_dft // 2 + 1, n_mel], dtype=torch.float64)
    for i in range(n_mel):
        left, centre, right = edges[i], edges[i + 1], edges[i + 2]
        if centre == left:
            out[centre, i] = 1.0
        else:
            for j in range(left, centre + 1):
                out[j, i] = float(j - left) / float(centre - left)
        if right > centre:
            for j in range(centre, right):
                out[j, i] = float(right - j) / float(right - centre)
    return out.to(dtype)


@op("MelWeightMatrix", since=17)
def _mel_weight_matrix(g, node, bins, dft_length, rate, low, high):
    return g.call(mel_weight_matrix, bins, dft_length, rate, low, high, _dtype(node))
