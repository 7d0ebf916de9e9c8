"""Helpers for the Caffe converter tests: tiny nets on disk, runners, and numpy references of Caffe's C++."""
from __future__ import annotations

# The numpy references follow Caffe's layer sources (pooling_layer.cpp, lrn_layer.cpp, argmax_layer.cpp...)
# so they are an independent check where OpenCV's importer cannot run a layer or computes it differently.

import math
from pathlib import Path

import numpy as np

from converters.caffe import convert, make_random_caffemodel
from converters.caffe.opencv_check import run_onnx, run_opencv
from converters.caffe.parse import read_prototxt
from converters.report import compare_outputs

RTOL = 1e-4


def net_text(shape: list[int], body: str, name: str = "t", style: str = "input_shape") -> str:
    """A deploy prototxt with one input blob `data` of `shape`, in one of Caffe's three input styles."""
    dims = " ".join(f"dim: {d}" for d in shape)
    if style == "input_shape":
        head = f'input: "data"\ninput_shape {{ {dims} }}\n'
    elif style == "input_dim":
        head = 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in shape)
    else:
        head = f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
    return f'name: "{name}"\n{head}{body}\n'


def make_net(folder: Path, shape: list[int], body: str, name: str = "t", seed: int = 0, style: str = "input_shape"):
    """Write prototxt + random caffemodel; return their paths."""
    prototxt = folder / f"{name}.prototxt"
    prototxt.write_text(net_text(shape, body, name, style))
    caffemodel = folder / f"{name}.caffemodel"
    make_random_caffemodel(prototxt, caffemodel, seed=seed)
    return prototxt, caffemodel


def random_input(shape: list[int], seed: int = 1, low: float = -3.0, high: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def run_converted(prototxt: Path, caffemodel: Path, x: np.ndarray, names: list[str], opset: int = 17):
    """Convert (no OpenCV check) and run the ONNX model in onnxruntime; outputs of tensors `names`."""
    conversion = convert(prototxt, caffemodel, opset=opset, verify=False)
    return run_onnx(conversion.model, {"data": x}, names)


def assert_close(name: str, reference: np.ndarray, got: np.ndarray, rtol: float = RTOL) -> None:
    """Max abs difference within rtol x the reference's scale (its max abs value, at least 1)."""
    (diff,) = compare_outputs([name], [reference], [got])
    assert list(np.shape(got)) == list(np.shape(reference)), (name, np.shape(got), np.shape(reference))
    assert diff.max_rel <= rtol, f"{name}: max abs diff {diff.max_abs} at scale {diff.scale}"


def check_against_opencv(
    prototxt: Path, caffemodel: Path, x: np.ndarray, layers: list[str], rtol: float = RTOL
) -> None:
    """onnxruntime on the converted model vs OpenCV's Caffe importer at each layer in `layers`."""
    got = run_converted(prototxt, caffemodel, x, layers)
    reference = run_opencv(str(prototxt), str(caffemodel), {"data": x}, [(layer, 0) for layer in layers])
    for name, ref, out in zip(layers, reference, got):
        assert_close(name, ref, out, rtol)


def layer_blobs(caffemodel: Path) -> dict[str, list[np.ndarray]]:
    from converters.caffe.parse import read_weights

    return read_weights(caffemodel)


def input_shape(prototxt: Path) -> list[int]:
    return next(iter(read_prototxt(prototxt).inputs.values()))


# ------------------------------------------------------------------ numpy references of Caffe's C++
def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True, any_pad: bool | None = None):
    """pooling_layer.cpp Reshape: ceil/floor of (size + 2 pad - kernel) / stride + 1, then Caffe's clip."""
    rounding = math.ceil if ceil else math.floor
    out = int(rounding(float(size + 2 * pad - kernel) / stride)) + 1
    if (pad if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool(x, kernel, stride, pad, method="MAX", ceil=True):
    """pooling_layer.cpp Forward_cpu, with its window clipping and AVE divisor."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape
    any_pad = bool(ph or pw)
    oh = caffe_pooled_size(h, kh, sh, ph, ceil, any_pad)
    ow = caffe_pooled_size(w, kw, sw, pw, ceil, any_pad)
    out = np.empty((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hstart, wstart = i * sh - ph, j * sw - pw
            if method == "MAX":
                hend, wend = min(hstart + kh, h), min(wstart + kw, w)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend, wend = min(hstart + kh, h + ph), min(wstart + kw, w + pw)
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, h), min(wend, w)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / pool_size
    return out


def caffe_lrn(x, size, alpha, beta, k=1.0, region="ACROSS_CHANNELS"):
    """lrn_layer.cpp: across channels (k + alpha/n sum x^2)^-beta; within channel via its pooling."""
    x = x.astype(np.float64)
    if region == "ACROSS_CHANNELS":
        half = (size - 1) // 2
        sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
        window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
        return x * (k + alpha / size * window) ** -beta
    half = (size - 1) // 2
    pooled = caffe_pool(x * x, (size, size), (1, 1), (half, half), "AVE")
    return x * (1 + alpha * pooled) ** -beta


def caffe_argmax(x, top_k=1, out_max_val=False, axis=None):
    """argmax_layer.cpp Forward_cpu: partial_sort of (value, index) pairs, descending (ties: larger index)."""
    x = x.astype(np.float64)

    def best(row):
        return sorted(range(row.size), key=lambda i: (row[i], i), reverse=True)[:top_k]

    if axis is None:
        rows = []
        for row in x.reshape(x.shape[0], -1):
            idx = best(row)
            rows.append(np.concatenate([np.array(idx, np.float64), row[idx]]) if out_max_val else np.array(idx, np.float64))
        shape = [x.shape[0], 2 if out_max_val else 1, top_k] + [1] * (x.ndim - 3)
        return np.stack(rows).reshape(shape)
    moved = np.moveaxis(x, axis, -1)
    result = np.empty(moved.shape[:-1] + (top_k,))
    for position in np.ndindex(*moved.shape[:-1]):
        row = moved[position]
        idx = best(row)
        result[position] = row[idx] if out_max_val else idx
    return np.moveaxis(result, -1, axis)


def caffe_inner_product(x, weights, bias, axis=1, transpose=False):
    lead = x.shape[:axis]
    flat = x.reshape(int(np.prod(lead)), -1).astype(np.float64)
    w = weights.astype(np.float64)
    y = flat @ (w if transpose else w.T)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, -1)
