"""Each supported Caffe layer and option on a tiny net: onnxruntime vs OpenCV, or vs a numpy Caffe reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.caffe import (
    assert_close,
    caffe_argmax,
    caffe_inner_product,
    caffe_lrn,
    caffe_pool,
    caffe_pooled_size,
    check_against_opencv,
    layer_blobs,
    make_net,
    net_text,
    random_input,
    run_converted,
)


def L(name, kind, bottoms, tops=None, params=""):  # noqa: N802 - reads like a prototxt line
    """One `layer {}` entry; tops default to the layer name."""
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [name] if tops is None else ([tops] if isinstance(tops, str) else tops)
    lines = [f'name: "{name}"', f'type: "{kind}"'] + [f'bottom: "{b}"' for b in bottoms]
    lines += [f'top: "{t}"' for t in tops]
    return "layer { " + " ".join(lines) + (f" {params}" if params else "") + " }\n"


SHAPE = [2, 6, 9, 11]

# (id, input shape, layers, layers to compare). OpenCV runs all of these the way Caffe does.
OPENCV_CASES = [
    ("conv_hw_group_dilation", SHAPE,
     L("c", "Convolution", "data", params="convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 "
       "pad_h: 1 pad_w: 2 stride_h: 1 stride_w: 2 dilation: 2 group: 2 }"), ["c"]),
    ("conv_repeated_kernel_no_bias", SHAPE,
     L("c", "Convolution", "data", params="convolution_param { num_output: 5 kernel_size: 3 kernel_size: 2 "
       "stride: 2 pad: 1 bias_term: false }"), ["c"]),
    ("conv_depthwise", SHAPE,
     L("c", "Convolution", "data", params="convolution_param { num_output: 6 kernel_size: 3 group: 6 }"), ["c"]),
    ("deconvolution_group_stride", SHAPE,
     L("d", "Deconvolution", "data", params="convolution_param { num_output: 4 kernel_size: 4 stride: 2 "
       "pad: 1 group: 2 }"), ["d"]),
    ("deconvolution_no_bias", SHAPE,
     L("d", "Deconvolution", "data", params="convolution_param { num_output: 3 kernel_size: 3 bias_term: false }"),
     ["d"]),
    ("inner_product_axis2", SHAPE,
     L("ip", "InnerProduct", "data", params="inner_product_param { num_output: 5 axis: 2 }"), ["ip"]),
    ("inner_product_4d", SHAPE,
     L("ip", "InnerProduct", "data", params="inner_product_param { num_output: 7 }"), ["ip"]),
    ("max_pool_clip_rule", [2, 3, 5, 9],  # (5+2-2)/2 ceil + 1 = 4, clipped to 3 by Caffe's rule
     L("p", "Pooling", "data", params="pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }"), ["p"]),
    ("ave_pool_pad_overhang", SHAPE,
     L("p", "Pooling", "data", params="pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), ["p"]),
    ("ave_pool_hw", SHAPE,
     L("p", "Pooling", "data", params="pooling_param { pool: AVE kernel_h: 4 kernel_w: 3 stride_h: 3 "
       "stride_w: 2 pad_h: 2 pad_w: 1 }"), ["p"]),
    ("ave_pool_overhang_no_pad", [2, 3, 12, 12],  # GoogLeNet-style: 12 -> 6 windows, last one overhangs
     L("p", "Pooling", "data", params="pooling_param { pool: AVE kernel_size: 3 stride: 2 }"), ["p"]),
    ("global_pooling", SHAPE,
     L("a", "Pooling", "data", params="pooling_param { pool: AVE global_pooling: true }")
     + L("m", "Pooling", "data", params="pooling_param { pool: MAX global_pooling: true }"), ["a", "m"]),
    ("relu_leaky_in_place", SHAPE,
     L("r", "ReLU", "data", "data", params="relu_param { negative_slope: 0.1 }") + L("s", "Sigmoid", "data"),
     ["r", "s"]),
    ("prelu", SHAPE,
     L("p", "PReLU", "data") + L("q", "PReLU", "data", params="prelu_param { channel_shared: true }"), ["p", "q"]),
    ("elu_sigmoid_tanh_abs", SHAPE,
     L("e", "ELU", "data", params="elu_param { alpha: 0.7 }") + L("s", "Sigmoid", "e") + L("t", "TanH", "data")
     + L("a", "AbsVal", "data"), ["e", "s", "t", "a"]),
    ("power", SHAPE,
     L("p", "Power", "data", params="power_param { power: 2 scale: 0.5 shift: 3 }")
     + L("q", "Power", "data", params="power_param { scale: -2 shift: 1 }"), ["p", "q"]),
    ("exp", SHAPE,
     L("e", "Exp", "data", params="exp_param { base: 2 scale: 0.3 shift: 0.5 }") + L("f", "Exp", "data"),
     ["e", "f"]),
    ("bnll_dropout", SHAPE, L("b", "BNLL", "data") + L("d", "Dropout", "b"), ["b", "d"]),
    ("lrn_across", SHAPE,
     L("n", "LRN", "data", params="lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 }"), ["n"]),
    ("lrn_within", SHAPE,
     L("n", "LRN", "data", params="lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.1 beta: 0.6 }"),
     ["n"]),
    ("softmax_axis", SHAPE,
     L("s", "Softmax", "data", params="softmax_param { axis: 2 }") + L("t", "Softmax", "data"), ["s", "t"]),
    ("concat_axes", SHAPE,
     L("s", "Sigmoid", "data") + L("c", "Concat", ["data", "s"], params="concat_param { axis: 2 }")
     + L("d", "Concat", ["data", "s", "data"]), ["c", "d"]),
    ("eltwise_sum_coeff_prod_max", SHAPE,
     L("s", "Sigmoid", "data") + L("t", "TanH", "data")
     + L("sum", "Eltwise", ["data", "s", "t"], params="eltwise_param { operation: SUM coeff: 0.5 coeff: -1 coeff: 2 }")
     + L("prod", "Eltwise", ["data", "s", "t"], params="eltwise_param { operation: PROD }")
     + L("max", "Eltwise", ["data", "s"], params="eltwise_param { operation: MAX }"), ["sum", "prod", "max"]),
    ("batchnorm_scale_in_place_chain", SHAPE,
     L("conv", "Convolution", "data", params="convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
     + L("bn", "BatchNorm", "conv", "conv", params="batch_norm_param { eps: 0.001 }")
     + L("sc", "Scale", "conv", "conv", params="scale_param { bias_term: true }")
     + L("relu", "ReLU", "conv", "conv"), ["conv", "bn", "sc", "relu"]),
    ("scale_axes", SHAPE,
     L("s", "Scale", "data", params="scale_param { axis: 2 num_axes: 2 }")
     + L("t", "Scale", "data", params="scale_param { axis: 1 num_axes: -1 bias_term: true }"), ["s", "t"]),
    ("scale_two_bottoms", SHAPE,
     L("g", "Pooling", "data", params="pooling_param { pool: AVE global_pooling: true }")
     + L("f", "Flatten", "g") + L("s", "Scale", ["data", "f"], params="scale_param { axis: 0 }"), ["s"]),
    ("flatten_reshape", SHAPE,
     L("f", "Flatten", "data", params="flatten_param { axis: 2 }")
     + L("r", "Reshape", "data", params="reshape_param { shape { dim: 0 dim: -1 dim: 11 } }"), ["f", "r"]),
    ("slice_split", SHAPE,
     L("sl", "Slice", "data", ["a", "b", "c"], params="slice_param { axis: 1 slice_point: 1 slice_point: 4 }")
     + L("sp", "Split", "data", ["x", "y"]) + L("e", "Eltwise", ["x", "y"])
     + L("cat", "Concat", ["c", "a", "b"]), ["cat", "e"]),
    ("crop_permute", SHAPE,
     L("p", "Pooling", "data", params="pooling_param { kernel_size: 2 stride: 2 }")
     + L("cr", "Crop", ["data", "p"], params="crop_param { axis: 2 offset: 1 offset: 3 }")
     + L("cr1", "Crop", ["data", "p"], params="crop_param { axis: 2 offset: 2 }")
     + L("pm", "Permute", "data", params="permute_param { order: 0 order: 2 order: 3 order: 1 }"),
     ["cr", "cr1", "pm"]),
]


@pytest.mark.parametrize("case", OPENCV_CASES, ids=[c[0] for c in OPENCV_CASES])
def test_layer_matches_opencv(case, tmp_path):
    pytest.importorskip("cv2")
    name, shape, body, layers = case
    prototxt, caffemodel = make_net(tmp_path, shape, body, name=name)
    check_against_opencv(prototxt, caffemodel, random_input(shape), layers)


# ---------------------------------------------------------------- numpy references (OpenCV differs)
POOL_CASES = [
    # (input H, W, kernel, stride, pad, method, ceil)
    (9, 11, (3, 3), (2, 2), (1, 1), "AVE", True),
    (12, 12, (3, 3), (2, 2), (0, 0), "AVE", True),
    (5, 9, (2, 2), (2, 2), (1, 1), "MAX", True),
    (6, 6, (3, 3), (2, 2), (1, 0), "AVE", True),  # clip applies to both axes when any pad is set
    (7, 10, (4, 3), (3, 2), (2, 1), "AVE", True),
    (9, 11, (3, 3), (2, 2), (0, 0), "MAX", False),  # round_mode FLOOR
    (9, 11, (3, 3), (2, 2), (1, 1), "AVE", False),
    (8, 8, (2, 2), (2, 2), (0, 0), "AVE", False),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[f"{c[5]}-{c[0]}x{c[1]}-k{c[2][0]}s{c[3][0]}p{c[4][0]}{c[4][1]}-{'ceil' if c[6] else 'floor'}" for c in POOL_CASES])
def test_pooling_matches_caffe_reference(case, tmp_path):
    h, w, (kh, kw), (sh, sw), (ph, pw), method, ceil = case
    params = (f"pooling_param {{ pool: {method} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
              f"pad_h: {ph} pad_w: {pw} round_mode: {'CEIL' if ceil else 'FLOOR'} }}")
    prototxt, caffemodel = make_net(tmp_path, [2, 3, h, w], L("p", "Pooling", "data", params=params))
    x = random_input([2, 3, h, w])
    (got,) = run_converted(prototxt, caffemodel, x, ["p"])
    assert_close("p", caffe_pool(x, (kh, kw), (sh, sw), (ph, pw), method, ceil), got, rtol=1e-6)


def test_pooled_size_follows_caffe_formula():
    from converters.caffe.layers import pooled_size

    for size in range(3, 20):
        for kernel in range(1, 5):
            for stride in range(1, 4):
                for pad in range(0, kernel):
                    for ceil in (True, False):
                        assert pooled_size(size, kernel, stride, pad, ceil, pad > 0) == caffe_pooled_size(
                            size, kernel, stride, pad, ceil
                        )


def test_ave_pooling_divisor_counts_pad_but_not_overhang(tmp_path):
    # All-ones 4x4 input, 3x3 windows, stride 2. Padded by 1: 3x3 outputs; the first window covers 4 pixels
    # and 5 pad cells (4/9); the last starts on row 3 and spans row 3, pad row 4 and overhang row 5: Caffe
    # divides by the 2x2 part inside image + pad (1/4), not by 9. Unpadded: the overhang is not counted (1).
    ones = np.ones([1, 1, 4, 4], np.float32)
    prototxt, caffemodel = make_net(tmp_path, [1, 1, 4, 4], L("p", "Pooling", "data", params=(
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }")) + L("q", "Pooling", "data", params=(
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 }")))
    p, q = run_converted(prototxt, caffemodel, ones, ["p", "q"])
    assert p.shape == (1, 1, 3, 3) and q.shape == (1, 1, 2, 2)
    assert p[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert p[0, 0, 1, 1] == pytest.approx(1.0)
    assert p[0, 0, 2, 2] == pytest.approx(1 / 4)
    assert p[0, 0, 0, 2] == pytest.approx(2 / 6)
    np.testing.assert_allclose(q, 1.0, rtol=1e-6)


@pytest.mark.parametrize("k", [1.0, 2.0])
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_matches_caffe_reference(region, k, tmp_path):
    # OpenCV ignores k for ACROSS_CHANNELS; Caffe ignores it for WITHIN_CHANNEL (shift is 1).
    params = f"lrn_param {{ norm_region: {region} local_size: 5 alpha: 0.05 beta: 0.75 k: {k} }}"
    prototxt, caffemodel = make_net(tmp_path, SHAPE, L("n", "LRN", "data", params=params))
    x = random_input(SHAPE)
    (got,) = run_converted(prototxt, caffemodel, x, ["n"])
    assert_close("n", caffe_lrn(x, 5, 0.05, 0.75, k, region), got)


def test_log_exp_power_bnll_match_formulas(tmp_path):
    body = (L("a", "AbsVal", "data")
            + L("log", "Log", "a", params="log_param { base: 10 scale: 2 shift: 1 }")
            + L("ln", "Log", "a", params="log_param { shift: 1 }")
            + L("exp", "Exp", "data", params="exp_param { base: 3 scale: 0.5 shift: -1 }")
            + L("pow0", "Power", "data", params="power_param { power: 0 scale: 2 }")
            + L("pow", "Power", "a", params="power_param { power: 1.5 scale: 0.5 shift: 0.25 }")
            + L("bnll", "BNLL", "data"))
    prototxt, caffemodel = make_net(tmp_path, SHAPE, body)
    x = random_input(SHAPE)
    x[0, 0, 0, :3] = [80.0, -80.0, 0.0]  # BNLL must stay finite where a plain softplus overflows
    names = ["log", "ln", "exp", "pow0", "pow", "bnll"]
    got = dict(zip(names, run_converted(prototxt, caffemodel, x, names)))
    a = np.abs(x).astype(np.float64)
    assert_close("log", np.log(2 * a + 1) / math.log(10), got["log"])
    assert_close("ln", np.log(a + 1), got["ln"])
    assert_close("exp", 3.0 ** (0.5 * x.astype(np.float64) - 1), got["exp"])
    assert_close("pow0", np.ones_like(x), got["pow0"])
    assert_close("pow", (0.5 * a + 0.25) ** 1.5, got["pow"])
    xd = x.astype(np.float64)
    reference = np.where(xd > 0, xd + np.log1p(np.exp(-np.abs(xd))), np.log1p(np.exp(np.minimum(xd, 0))))
    assert_close("bnll", reference, got["bnll"])
    assert np.isfinite(got["bnll"]).all()


@pytest.mark.parametrize("axis,transpose", [(1, True), (2, True), (3, False), (1, False)])
def test_inner_product_matches_reference(axis, transpose, tmp_path):
    # OpenCV's importer ignores `transpose`; the reference is Caffe's GEMM.
    params = f"inner_product_param {{ num_output: 5 axis: {axis} transpose: {'true' if transpose else 'false'} }}"
    prototxt, caffemodel = make_net(tmp_path, SHAPE, L("ip", "InnerProduct", "data", params=params))
    x = random_input(SHAPE)
    (got,) = run_converted(prototxt, caffemodel, x, ["ip"])
    weights, bias = layer_blobs(caffemodel)["ip"]
    assert_close("ip", caffe_inner_product(x, weights, bias, axis, transpose), got)


@pytest.mark.parametrize("params,kwargs", [
    ("argmax_param { top_k: 3 axis: 1 }", {"top_k": 3, "axis": 1}),
    ("argmax_param { top_k: 2 axis: -1 out_max_val: true }", {"top_k": 2, "axis": 3, "out_max_val": True}),
    ("argmax_param { top_k: 4 }", {"top_k": 4}),
    ("argmax_param { top_k: 2 out_max_val: true }", {"top_k": 2, "out_max_val": True}),
])
def test_argmax_matches_caffe_reference(params, kwargs, tmp_path):
    prototxt, caffemodel = make_net(tmp_path, SHAPE, L("am", "ArgMax", "data", params=params))
    # Rounded values: many ties, which Caffe breaks towards the larger index.
    x = np.round(random_input(SHAPE, low=0, high=3))
    (got,) = run_converted(prototxt, caffemodel, x, ["am"])
    assert_close("am", caffe_argmax(x, **kwargs), got, rtol=0)


def test_bias_and_scalar_scale_match_reference(tmp_path):
    body = (L("b", "Bias", "data") + L("b2", "Bias", "data", params="bias_param { axis: 2 num_axes: 2 }")
            + L("s0", "Scale", "data", params="scale_param { axis: 0 num_axes: 0 bias_term: true }")
            + L("g", "Pooling", "data", params="pooling_param { pool: MAX global_pooling: true }")
            + L("f", "Flatten", "g") + L("bb", "Bias", ["data", "f"], params="bias_param { axis: 0 }"))
    prototxt, caffemodel = make_net(tmp_path, SHAPE, body)
    x = random_input(SHAPE)
    got = dict(zip(["b", "b2", "s0", "bb"], run_converted(prototxt, caffemodel, x, ["b", "b2", "s0", "bb"])))
    blobs = layer_blobs(caffemodel)
    assert_close("b", x + blobs["b"][0].reshape(1, 6, 1, 1), got["b"])
    assert_close("b2", x + blobs["b2"][0].reshape(1, 1, 9, 11), got["b2"])
    scale, shift = blobs["s0"]
    assert scale.shape == () or scale.size == 1
    assert_close("s0", x * scale.reshape(()) + shift.reshape(()), got["s0"])
    assert_close("bb", x + x.max(axis=(2, 3), keepdims=True), got["bb"])


@pytest.mark.parametrize("params,expected", [
    ("reshape_param { shape { dim: 0 dim: 2 dim: -1 } }", lambda x: x.reshape(2, 2, -1)),
    ("reshape_param { shape { dim: 3 dim: 2 } axis: 1 num_axes: 1 }", lambda x: x.reshape(2, 3, 2, 9, 11)),
    ("reshape_param { shape { dim: -1 } axis: -1 }", lambda x: x.reshape(2, 6, 9, 11, 1)),
    ("reshape_param { shape { dim: 11 dim: -1 } axis: -2 }", lambda x: x.reshape(2, 6, 9, 11, 1)),
    ("reshape_param { shape { dim: 0 dim: 0 dim: 99 } }", lambda x: x.reshape(2, 6, 99)),
])
def test_reshape_matches_numpy(params, expected, tmp_path):
    prototxt, caffemodel = make_net(tmp_path, SHAPE, L("r", "Reshape", "data", params=params))
    x = random_input(SHAPE)
    (got,) = run_converted(prototxt, caffemodel, x, ["r"])
    assert_close("r", expected(x), got, rtol=0)


def test_slice_even_split_and_flatten_end_axis(tmp_path):
    body = (L("s", "Slice", "data", ["a", "b", "c"], params="slice_param { axis: 1 }")
            + L("f", "Flatten", "data", params="flatten_param { axis: 1 end_axis: 2 }")
            + L("p", "Permute", "data", params="permute_param { order: 0 order: 3 }"))
    prototxt, caffemodel = make_net(tmp_path, SHAPE, body)
    x = random_input(SHAPE)
    a, b, c, f, p = run_converted(prototxt, caffemodel, x, ["a", "b", "c", "f", "p"])
    assert_close("a", x[:, 0:2], a, rtol=0)
    assert_close("c", x[:, 4:6], c, rtol=0)
    assert_close("f", x.reshape(2, 54, 11), f, rtol=0)
    assert_close("p", x.transpose(0, 3, 1, 2), p, rtol=0)


def test_pooling_sweep_matches_caffe_reference(tmp_path):
    # Many small geometries in one net: odd/even sizes, stride above kernel, pad up to kernel - 1.
    rng = np.random.default_rng(7)
    cases, body = [], ""
    for size in (4, 5, 7, 8):
        for kernel in (1, 2, 3):
            for stride in (1, 2, 3):
                for pad in range(kernel):
                    method, ceil = ("MAX", "AVE")[len(cases) % 2], bool(rng.integers(2)) or stride == 1
                    if any((caffe_pooled_size(n, kernel, stride, pad, ceil) - 1) * stride - pad >= n
                           for n in (size, size + 1)):
                        continue  # last window wholly outside the image: refused, see the next test
                    name = f"p{len(cases)}"
                    body += L(name, "Pooling", "data", params=(
                        f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} "
                        f"round_mode: {'CEIL' if ceil else 'FLOOR'} }}"))
                    cases.append((name, size, kernel, stride, pad, method, ceil))
    by_size: dict[int, list] = {}
    for case in cases:
        by_size.setdefault(case[1], []).append(case)
    for size, group in by_size.items():
        text = "".join(line for line in body.splitlines(keepends=True) if any(f'"{c[0]}"' in line for c in group))
        prototxt, caffemodel = make_net(tmp_path, [1, 2, size, size + 1], text, name=f"sweep{size}")
        x = random_input([1, 2, size, size + 1], seed=size)
        got = run_converted(prototxt, caffemodel, x, [c[0] for c in group])
        for (name, _, k, s, p, method, ceil), out in zip(group, got):
            reference = caffe_pool(x, (k, k), (s, s), (p, p), method, ceil)
            assert_close(f"{name} k{k} s{s} p{p} {method} ceil={ceil}", reference, out, rtol=1e-6)


def test_pooling_window_outside_image_is_refused(tmp_path):
    from converters.caffe import make_random_caffemodel
    from zoo.errors import ConversionError

    prototxt = tmp_path / "p.prototxt"
    prototxt.write_text(net_text([1, 1, 4, 4], L("p", "Pooling", "data", params=(
        "pooling_param { pool: MAX kernel_size: 1 stride: 2 }"))))
    with pytest.raises(ConversionError, match="layer 'p' \\(Pooling\\).*outside the image.*round_mode: FLOOR"):
        make_random_caffemodel(prototxt, tmp_path / "p.caffemodel")
