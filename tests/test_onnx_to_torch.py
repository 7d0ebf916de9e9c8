"""ONNX -> torch converter: outputs vs onnxruntime (and the source framework), freezing, training, errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_to_torch import (
    gru_onnx,
    light_model_randomized,
    ort_session,
    relative_error,
    run_ort,
    single_node_model,
    text_encoder_onnx,
)
from helpers.zoo_nets import CAFFE_MODELS, caffe_net, caffe_zoo_nets, onnx_light_models, without_shared

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from converters.onnx_to_torch import to_torch
from zoo.errors import InputError, UnknownLayerError, UnsupportedLayerError

TOL = 1e-4  # x output scale, the converter contract
LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]


def _outputs(result) -> list[np.ndarray]:
    items = result if isinstance(result, tuple) else (result,)
    return [t.detach().numpy() for t in items]


def _check_against_ort(model, feeds: dict[str, np.ndarray], tol: float = TOL) -> list[np.ndarray]:
    """Run `model` in onnxruntime and as a torch module; assert every output agrees."""
    want = run_ort(model, feeds)
    net = to_torch(model)
    with torch.no_grad():
        got = _outputs(net(*[torch.from_numpy(feeds[name]) for name in net.input_names]))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert g.dtype == w.dtype or (g.dtype.kind == w.dtype.kind == "f")
        assert relative_error(g, w) <= tol, relative_error(g, w)
    return got


def _graph(nodes, inputs, outputs, initializers=(), opset=13):
    """A multi-node ONNX model; inputs/outputs are (name, elem_type, shape) triples."""
    from onnx import helper

    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs], list(initializers)),
        opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- the onnx package's light models
@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_light_model_matches_shipped_reference_output(name):
    from onnx import numpy_helper

    path = onnx_light_models() / f"light_{name}.onnx"
    net = to_torch(path)
    # The onnx backend test feeds arange(n)/n in the input's shape (onnx/backend/test/runner).
    x = (np.arange(3 * 224 * 224).reshape(1, 3, 224, 224) / (3 * 224 * 224)).astype(np.float32)
    want = numpy_helper.to_array(onnx.load_tensor(str(path).replace(".onnx", "_output_0.pb")))
    # Every weight of these files is 0.02, so all classes tie with logits of 1e10 and more: float32
    # rounding that differs per channel (blocked kernels) decides the softmax. Float64 does not.
    with torch.no_grad():
        got = net.double()(torch.from_numpy(x).double()).numpy()
    assert relative_error(got, want) <= TOL
    # Every weight is a trainable-capable parameter, grouped per ONNX node, frozen.
    assert net.layers and all(not p.requires_grad for p in net.parameters())


def test_light_squeezenet_parameters_read_like_layers():
    net = to_torch(onnx_light_models() / "light_squeezenet.onnx")
    convs = [layer for _, layer in net.layers if layer.op_type == "Conv"]
    assert len(convs) == 26 and len(net.layers) == 26
    names = dict(net.named_parameters())
    first_name, first = net.layers[0]
    assert first.onnx_name == first_name
    assert first.onnx_inputs == {"weight": "conv1_w_0", "bias": "conv1_b_0"}
    assert tuple(first.weight.shape) == (64, 3, 3, 3)
    assert any(key.endswith(".weight") for key in names) and any(key.endswith(".bias") for key in names)
    assert sum(p.numel() for p in net.parameters()) == 1235496  # squeezenet 1.1's published count
    assert not any(key.startswith("constants.") for key in net.state_dict())


# ---------------------------------------------------------------- one node per tricky op
def _rand(*shape, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


X4 = _rand(2, 4, 9, 9)
W3 = _rand(6, 4, 3, 3, seed=1)
B6 = _rand(6, seed=2)
I64 = np.int64

OP_CASES = {
    "conv_asymmetric_pads": ("Conv", {"x": X4}, {"w": W3, "b": B6}, {"pads": [0, 1, 2, 1], "strides": [2, 1]}, 13),
    "conv_same_upper_stride2": ("Conv", {"x": X4}, {"w": W3}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 13),
    "conv_same_lower_stride2": ("Conv", {"x": X4}, {"w": W3}, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 13),
    "conv_valid_dilated": ("Conv", {"x": X4}, {"w": W3}, {"auto_pad": "VALID", "dilations": [2, 2]}, 13),
    "conv_grouped": ("Conv", {"x": X4}, {"w": _rand(6, 2, 3, 3), "b": B6}, {"group": 2, "pads": [1, 1, 1, 1]}, 11),
    "conv_depthwise": ("Conv", {"x": X4}, {"w": _rand(4, 1, 3, 3)}, {"group": 4}, 13),
    "conv_1d": ("Conv", {"x": _rand(2, 4, 10)}, {"w": _rand(3, 4, 3)}, {"pads": [2, 0]}, 13),
    "conv_3d": ("Conv", {"x": _rand(2, 2, 5, 6, 7)}, {"w": _rand(3, 2, 2, 3, 3)}, {"strides": [1, 2, 2]}, 13),
    "conv_transpose_pads_outpad": ("ConvTranspose", {"x": X4}, {"w": _rand(4, 3, 3, 3), "b": _rand(3)},
                                   {"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 1]}, 13),
    "conv_transpose_same_upper": ("ConvTranspose", {"x": X4}, {"w": _rand(4, 3, 4, 4)},
                                  {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 13),
    "conv_transpose_output_shape": ("ConvTranspose", {"x": X4}, {"w": _rand(4, 3, 3, 3)},
                                    {"strides": [3, 2], "output_shape": [26, 18]}, 13),
    "conv_transpose_output_shape_same_upper": ("ConvTranspose", {"x": X4}, {"w": _rand(4, 3, 3, 3)},
                                               {"strides": [2, 2], "output_shape": [17, 18],
                                                "auto_pad": "SAME_UPPER"}, 13),
    "conv_transpose_grouped": ("ConvTranspose", {"x": X4}, {"w": _rand(4, 2, 3, 3)},
                               {"group": 2, "dilations": [2, 1]}, 13),
    "maxpool_ceil_pads": ("MaxPool", {"x": X4}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                     "pads": [1, 0, 0, 1], "ceil_mode": 1}, 12),
    "maxpool_same_lower": ("MaxPool", {"x": _rand(2, 3, 8, 8)}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                     "auto_pad": "SAME_LOWER"}, 12),
    "maxpool_same_upper_even": ("MaxPool", {"x": _rand(2, 3, 8, 7)}, {}, {"kernel_shape": [2, 2],
                                                                          "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 12),
    "maxpool_dilated": ("MaxPool", {"x": X4}, {}, {"kernel_shape": [2, 2], "dilations": [2, 2]}, 12),
    "maxpool_big_pad": ("MaxPool", {"x": X4}, {}, {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}, 12),
    "avgpool_ceil_exclude_pad": ("AveragePool", {"x": X4}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                "pads": [1, 1, 1, 1], "ceil_mode": 1}, 19),
    "avgpool_ceil_include_pad": ("AveragePool", {"x": X4}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                                                "count_include_pad": 1}, 19),
    "avgpool_asymmetric_include": ("AveragePool", {"x": X4}, {}, {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0],
                                                                  "count_include_pad": 1}, 19),
    "avgpool_same_upper": ("AveragePool", {"x": X4}, {}, {"kernel_shape": [2, 2], "strides": [2, 2],
                                                          "auto_pad": "SAME_UPPER"}, 19),
    "global_max_pool": ("GlobalMaxPool", {"x": X4}, {}, {}, 13),
    "lrn_odd": ("LRN", {"x": _rand(2, 7, 4, 4, low=0)}, {}, {"size": 5, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, 13),
    "gemm_trans_alpha_beta": ("Gemm", {"x": _rand(5, 3)}, {"w": _rand(5, 4), "c": _rand(1, 4)},
                              {"transA": 1, "alpha": 0.5, "beta": 2.0}, 13),
    "gemm_transb_bias": ("Gemm", {"x": _rand(3, 5)}, {"w": _rand(4, 5), "c": _rand(4)}, {"transB": 1}, 13),
    "gemm_no_bias": ("Gemm", {"x": _rand(3, 5)}, {"w": _rand(5, 4)}, {}, 13),
    "matmul_const_3d": ("MatMul", {"x": _rand(2, 3, 5)}, {"w": _rand(5, 4)}, {}, 13),
    "softmax_opset11_coerces_2d": ("Softmax", {"x": _rand(2, 3, 4, 5)}, {}, {"axis": 1}, 11),
    "softmax_opset13_axis": ("Softmax", {"x": _rand(2, 3, 4, 5)}, {}, {"axis": 1}, 13),
    "log_softmax_opset9_default": ("LogSoftmax", {"x": _rand(2, 3, 4)}, {}, {}, 9),
    "flatten_axis0": ("Flatten", {"x": X4}, {}, {"axis": 0}, 13),
    "flatten_axis_neg": ("Flatten", {"x": X4}, {}, {"axis": -1}, 13),
    "flatten_axis2": ("Flatten", {"x": X4}, {}, {"axis": 2}, 13),
    "reshape_zero_minus_one": ("Reshape", {"x": X4}, {"s": np.array([0, -1, 9], I64)}, {}, 13),
    "reshape_allowzero": ("Reshape", {"x": X4}, {"s": np.array([2, 4, 81], I64)}, {"allowzero": 1}, 14),
    "slice_steps": ("Slice", {"x": X4}, {"st": np.array([1, 8], I64), "en": np.array([4, 0], I64),
                                         "ax": np.array([1, 3], I64), "sp": np.array([2, -3], I64)}, {}, 13),
    "slice_negative_clamped": ("Slice", {"x": X4}, {"st": np.array([-1, -100], I64),
                                                    "en": np.array([-1000, 2**62], I64),
                                                    "ax": np.array([2, -1], I64), "sp": np.array([-1, 1], I64)}, {}, 13),
    "slice_negative_step_far_start": ("Slice", {"x": X4}, {"st": np.array([-1000, 100], I64),
                                                           "en": np.array([-2000, -100], I64),
                                                           "ax": np.array([1, 2], I64), "sp": np.array([-1, -2], I64)},
                                      {}, 13),
    "slice_opset9_attrs": ("Slice", {"x": X4}, {}, {"starts": [1, -3], "ends": [3, 100], "axes": [1, 2]}, 9),
    "split_opset11_attr": ("Split", {"x": X4}, {}, {"axis": 1, "split": [1, 3]}, 11),
    "split_opset13_input": ("Split", {"x": X4}, {"sp": np.array([2, 7], I64)}, {"axis": -1}, 13),
    "split_opset18_num_outputs": ("Split", {"x": X4}, {}, {"axis": 2, "num_outputs": 2}, 18),
    "split_equal": ("Split", {"x": X4}, {}, {"axis": 1}, 13),
    "transpose": ("Transpose", {"x": X4}, {}, {"perm": [0, 2, 3, 1]}, 13),
    "pad_opset10_attrs": ("Pad", {"x": X4}, {}, {"pads": [0, 0, 1, 2, 0, 0, 3, 0], "value": 1.5}, 10),
    "pad_reflect": ("Pad", {"x": X4}, {"p": np.array([0, 0, 2, 1, 0, 0, 1, 2], I64)}, {"mode": "reflect"}, 13),
    "pad_edge": ("Pad", {"x": X4}, {"p": np.array([0, 0, 2, 1, 0, 0, 1, 2], I64)}, {"mode": "edge"}, 13),
    "pad_negative_constant": ("Pad", {"x": X4}, {"p": np.array([0, 1, -1, 0, 0, 0, 2, -2], I64),
                                                 "v": np.array(0.25, np.float32)}, {}, 13),
    "clip_opset6_attrs": ("Clip", {"x": X4}, {}, {"min": -0.5, "max": 0.25}, 6),
    "clip_opset11_max_only": ("Clip", {"x": X4}, {"hi": np.array(0.3, np.float32)}, {}, 11),
    "argmax_last_index": ("ArgMax", {"x": np.round(X4 * 2)}, {}, {"axis": 1, "keepdims": 0, "select_last_index": 1}, 13),
    "argmax_keepdims": ("ArgMax", {"x": X4}, {}, {"axis": -1}, 13),
    "reduce_mean_attr": ("ReduceMean", {"x": X4}, {}, {"axes": [2, 3], "keepdims": 0}, 13),
    "reduce_mean_input_opset18": ("ReduceMean", {"x": X4}, {"a": np.array([1], I64)}, {}, 18),
    "reduce_sum_input": ("ReduceSum", {"x": X4}, {"a": np.array([-1, 1], I64)}, {"keepdims": 1}, 13),
    "reduce_max_all": ("ReduceMax", {"x": X4}, {}, {"keepdims": 0}, 13),
    "squeeze_opset11": ("Squeeze", {"x": _rand(2, 1, 3, 1)}, {}, {"axes": [1, -1]}, 11),
    "squeeze_opset13": ("Squeeze", {"x": _rand(2, 1, 3, 1)}, {"a": np.array([3], I64)}, {}, 13),
    "unsqueeze_opset11": ("Unsqueeze", {"x": _rand(2, 3)}, {}, {"axes": [1, -1]}, 11),
    "unsqueeze_opset13": ("Unsqueeze", {"x": _rand(2, 3)}, {"a": np.array([0, 3], I64)}, {}, 13),
    "gather_negative": ("Gather", {"x": X4}, {"i": np.array([[-1, 0], [2, 1]], I64)}, {"axis": 1}, 13),
    "expand_bidirectional": ("Expand", {"x": _rand(2, 1, 3)}, {"s": np.array([2, 4, 1], I64)}, {}, 13),
    "tile": ("Tile", {"x": _rand(2, 3)}, {"r": np.array([1, 2], I64)}, {}, 13),
    "where_equal": ("Where", {"c": np.array([[True, False, True]]), "a": _rand(2, 3)}, {"b": _rand(3)}, {}, 13),
    "cast_to_int": ("Cast", {"x": X4 * 5}, {}, {"to": 7}, 13),
    "prelu_channel": ("PRelu", {"x": X4}, {"s": _rand(4, 1, 1)}, {}, 13),
    "leaky_relu": ("LeakyRelu", {"x": X4}, {}, {"alpha": 0.2}, 13),
    "elu": ("Elu", {"x": X4}, {}, {"alpha": 0.7}, 13),
    "softplus": ("Softplus", {"x": X4}, {}, {}, 13),
    "hard_sigmoid": ("HardSigmoid", {"x": X4}, {}, {"alpha": 0.3}, 13),
    "pow": ("Pow", {"x": _rand(2, 3, low=0.1)}, {"e": np.array([2.0, 0.5, 3.0], np.float32)}, {}, 13),
    "sum_three": ("Sum", {"a": _rand(2, 3), "b": _rand(2, 3, seed=1)}, {"c": _rand(3, seed=2)}, {}, 13),
    "max_broadcast": ("Max", {"a": _rand(2, 3), "b": _rand(2, 3, seed=1)}, {}, {}, 13),
    "mean": ("Mean", {"a": _rand(2, 3), "b": _rand(2, 3, seed=1)}, {}, {}, 13),
    "div_sub_neg": ("Div", {"a": _rand(2, 3)}, {"b": _rand(3, low=0.5)}, {}, 13),
    "batchnorm": ("BatchNormalization", {"x": X4}, {"s": _rand(4), "b": _rand(4), "m": _rand(4),
                                                    "v": _rand(4, low=0.5, high=2)}, {"epsilon": 1e-3}, 15),
    "instance_norm": ("InstanceNormalization", {"x": X4}, {"s": _rand(4), "b": _rand(4)}, {}, 13),
    "layer_norm": ("LayerNormalization", {"x": _rand(2, 3, 8)}, {"s": _rand(8), "b": _rand(8)}, {}, 17),
    "resize_nearest_asymmetric": ("Resize", {"x": X4}, {"roi": np.array([], np.float32),
                                                        "sc": np.array([1, 1, 2, 1.5], np.float32)},
                                  {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                   "nearest_mode": "floor"}, 13),
    "resize_linear_half_pixel": ("Resize", {"x": X4}, {"roi": np.array([], np.float32),
                                                       "sc": np.array([1, 1, 2, 2], np.float32)},
                                 {"mode": "linear"}, 13),
    "resize_linear_align_corners_sizes": ("Resize", {"x": X4},
                                          {"roi": np.array([], np.float32), "sc": np.array([], np.float32),
                                           "sz": np.array([2, 4, 5, 13], I64)},
                                          {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 13),
    "upsample_opset9": ("Upsample", {"x": X4}, {"sc": np.array([1, 1, 2, 2], np.float32)}, {}, 9),
    "depth_to_space_dcr": ("DepthToSpace", {"x": X4}, {}, {"blocksize": 2}, 13),
    "depth_to_space_crd": ("DepthToSpace", {"x": X4}, {}, {"blocksize": 2, "mode": "CRD"}, 13),
    "space_to_depth": ("SpaceToDepth", {"x": _rand(2, 3, 4, 6)}, {}, {"blocksize": 2}, 13),
    "dropout_opset12_ratio_input": ("Dropout", {"x": X4}, {"r": np.array(0.3, np.float32)}, {}, 13),
    "abs_exp_log_family": ("Sqrt", {"x": _rand(2, 3, low=0.1)}, {}, {}, 13),
    "mish": ("Mish", {"x": X4}, {}, {}, 18),
    "celu": ("Celu", {"x": X4}, {}, {"alpha": 0.5}, 13),
    "thresholded_relu": ("ThresholdedRelu", {"x": X4}, {}, {"alpha": 0.3}, 13),
    "shrink": ("Shrink", {"x": X4}, {}, {"bias": 0.1, "lambd": 0.4}, 13),
    "cumsum_exclusive_reverse": ("CumSum", {"x": X4}, {"a": np.array(2, I64)}, {"exclusive": 1, "reverse": 1}, 13),
    "einsum": ("Einsum", {"a": _rand(2, 3, 4), "b": _rand(2, 4, 5, seed=1)}, {}, {"equation": "bij,bjk->bik"}, 13),
    "topk": ("TopK", {"x": X4}, {"k": np.array([3], I64)}, {"axis": 1, "largest": 0}, 13),
    "one_hot": ("OneHot", {"i": np.array([[1, -1, 9, 3], [0, 2, 2, 4]], I64)},
                {"d": np.array(5, I64), "v": np.array([0.5, 2.0], np.float32)}, {"axis": 1}, 13),
    "gather_nd": ("GatherND", {"x": X4}, {"i": np.array([[0, 1], [1, 3]], I64)}, {}, 13),
    "scatter_nd": ("ScatterND", {"x": X4}, {"i": np.array([[1, 2], [0, 0]], I64), "u": _rand(2, 9, 9)}, {}, 13),
    "trilu_lower": ("Trilu", {"x": X4}, {"k": np.array(1, I64)}, {"upper": 0}, 14),
    # Recurrent layers, with what torch's export never uses: reverse and bidirectional runs over
    # sequences of different lengths, linear_before_reset=0, peepholes, clip, batch-first layout.
    "gru_reverse_seq_lens": ("GRU", {"x": _rand(5, 3, 4), "h": _rand(1, 3, 6, seed=3)},
                             {"w": _rand(1, 18, 4, seed=4), "r": _rand(1, 18, 6, seed=5),
                              "b": _rand(1, 36, seed=6), "lens": np.array([5, 2, 4], np.int32)},
                             {"hidden_size": 6, "direction": "reverse"}, 14),
    "gru_bidirectional_before_reset": ("GRU", {"x": _rand(5, 3, 4)}, {
        "w": _rand(2, 18, 4, seed=4), "r": _rand(2, 18, 6, seed=5), "b": _rand(2, 36, seed=6)},
        {"hidden_size": 6, "direction": "bidirectional", "linear_before_reset": 1}, 14),
    "lstm_bidirectional_peepholes": ("LSTM", {"x": _rand(5, 3, 4), "h": _rand(2, 3, 6, seed=3),
                                              "c": _rand(2, 3, 6, seed=7)},
                                     {"w": _rand(2, 24, 4, seed=4), "r": _rand(2, 24, 6, seed=5),
                                      "b": _rand(2, 48, seed=6), "lens": np.array([5, 3, 1], np.int32),
                                      "p": _rand(2, 18, seed=8)},
                                     {"hidden_size": 6, "direction": "bidirectional"}, 14),
    "lstm_reverse_clip": ("LSTM", {"x": _rand(5, 3, 4)}, {
        "w": _rand(1, 24, 4, seed=4), "r": _rand(1, 24, 6, seed=5)},
        {"hidden_size": 6, "direction": "reverse", "clip": 0.5}, 14),
    "rnn_relu": ("RNN", {"x": _rand(5, 3, 4)}, {"w": _rand(1, 6, 4, seed=4), "r": _rand(1, 6, 6, seed=5),
                                                 "b": _rand(1, 12, seed=6)},
                 {"hidden_size": 6, "activations": ["Relu"]}, 14),
}
N_OUTPUTS = {"gru_reverse_seq_lens": 2, "gru_bidirectional_before_reset": 2, "lstm_bidirectional_peepholes": 3,
             "lstm_reverse_clip": 3, "rnn_relu": 2,
             "topk": 2, "split_opset11_attr": 2, "split_opset13_input": 2, "split_opset18_num_outputs": 2, "split_equal": 4}
INPUT_ORDER = {"gru_reverse_seq_lens": ["x", "w", "r", "b", "lens", "h"],
               "lstm_bidirectional_peepholes": ["x", "w", "r", "b", "lens", "h", "c", "p"],
               "clip_opset11_max_only": ["x", "", "hi"], "where_equal": ["c", "a", "b"]}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case):
    op_type, inputs, constants, attrs, opset = OP_CASES[case]
    model = single_node_model(op_type, inputs, attrs, constants, N_OUTPUTS.get(case, 1), opset,
                              INPUT_ORDER.get(case))
    _check_against_ort(model, inputs, tol=1e-5)


def test_batch_first_recurrent_layout_matches_the_time_first_one():
    """onnxruntime refuses layout=1; it must equal layout=0 on the transposed input and states."""
    weights = {"w": _rand(2, 24, 4, seed=4), "r": _rand(2, 24, 6, seed=5), "b": _rand(2, 48, seed=6)}
    x, h, c = _rand(5, 3, 4), _rand(2, 3, 6, seed=3), _rand(2, 3, 6, seed=7)
    order = ["x", "w", "r", "b", "", "h", "c"]
    attrs = {"hidden_size": 6, "direction": "bidirectional"}
    time_first = to_torch(single_node_model("LSTM", {"x": x, "h": h, "c": c}, attrs, weights, 3, 14, order))
    batch_first = to_torch(single_node_model("LSTM", {"x": x.transpose(1, 0, 2), "h": h.transpose(1, 0, 2),
                                                       "c": c.transpose(1, 0, 2)},
                                             {**attrs, "layout": 1}, weights, 3, 14, order))
    with torch.no_grad():
        y, yh, yc = time_first(x, h, c)
        by, byh, byc = batch_first(x.transpose(1, 0, 2), h.transpose(1, 0, 2), c.transpose(1, 0, 2))
    assert torch.allclose(by, y.permute(2, 0, 1, 3), atol=1e-6)
    assert torch.allclose(byh, yh.transpose(0, 1), atol=1e-6) and torch.allclose(byc, yc.transpose(0, 1), atol=1e-6)


def test_lrn_even_size_follows_the_spec_formula():
    # onnxruntime only takes odd sizes (and onnx.reference's LRN loops over the batch, not channels),
    # so check against the spec written out: floor((size-1)/2) channels before c, ceil(...) after.
    x = _rand(2, 7, 4, 4)
    size, alpha, beta, bias = 4, 0.5, 0.6, 1.5
    model = single_node_model("LRN", {"x": x}, {"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    want = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - (size - 1) // 2), min(7, c + -(-(size - 1) // 2) + 1)
        square_sum = (x[:, lo:hi] ** 2).sum(axis=1)
        want[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    with torch.no_grad():
        got = to_torch(model)(x).numpy()
    assert relative_error(got, want) <= 1e-5


@pytest.mark.parametrize("op_type", ["Abs", "Neg", "Exp", "Log", "Reciprocal", "Sigmoid", "Tanh", "Relu",
                                     "Floor", "Ceil", "Erf", "Softsign", "HardSwish"])
def test_unary_op_matches_onnxruntime(op_type):
    x = _rand(2, 3, 4, low=0.1, high=2.0)
    _check_against_ort(single_node_model(op_type, {"x": x}, opset=14), {"x": x}, tol=1e-5)


def _dynamic_shape_model():
    """tf2onnx's Flatten (Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape), Range, Expand."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="dense"),
        helper.make_node("Add", ["logits", "bias"], ["y"], name="dense_bias"),
        helper.make_node("Range", ["start", "batch", "one"], ["rows"]),
        helper.make_node("ConstantOfShape", ["batch1"], ["filled"],
                         value=numpy_helper.from_array(np.array([7], np.int64))),
        helper.make_node("Add", ["rows", "filled"], ["ids0"]),
        helper.make_node("Expand", ["ids0", "batch1"], ["ids"]),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "zero": np.array(0, I64), "axes": np.array([0], I64), "minus1": np.array([-1], I64),
        "w": _rand(36, 5), "bias": _rand(5), "start": np.array(0, I64), "one": np.array(1, I64)}.items()]
    return _graph(nodes, [("x", TensorProto.FLOAT, ["n", 4, 3, 3])],
                  [("y", TensorProto.FLOAT, ["n", 5]), ("ids", TensorProto.INT64, ["n"])], inits)


def test_dynamic_shape_subgraph_follows_the_batch():
    model = _dynamic_shape_model()
    for batch in (1, 3, 6):
        x = _rand(batch, 4, 3, 3, seed=batch)
        y, ids = _check_against_ort(model, {"x": x})
        assert y.shape == (batch, 5) and ids.tolist() == list(range(7, 7 + batch))
    net = to_torch(model)
    # The bias Add that only follows the MatMul joins its layer: one layer per source layer.
    assert [name for name, _ in net.layers] == ["dense"]
    assert net.dense.onnx_nodes == ["dense", "dense_bias"]
    assert net.dense.onnx_inputs == {"weight": "w", "bias": "bias"}
    assert [name for name, _ in net.named_parameters()] == ["dense.weight", "dense.bias"]


def test_caffe_scale_layer_mul_add_is_one_layer_and_a_shared_output_is_not_merged():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["scaled"], name="scale1"),
        helper.make_node("Add", ["scaled", "beta"], ["y1"], name="scale1_bias"),
        helper.make_node("Conv", ["y1", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "b2"], ["y"], name="conv_bias"),
        helper.make_node("Sub", ["b3", "c"], ["z"], name="reversed_sub"),  # c has two readers
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "gamma": _rand(3, 1, 1), "beta": _rand(3, 1, 1, seed=1), "w": _rand(4, 3, 1, 1, seed=2),
        "b2": _rand(4, 1, 1, seed=3), "b3": _rand(4, 1, 1, seed=4)}.items()]
    model = _graph(nodes, [("x", TensorProto.FLOAT, ["n", 3, 5, 5])],
                   [("y", TensorProto.FLOAT, None), ("z", TensorProto.FLOAT, None)], inits)
    _check_against_ort(model, {"x": _rand(2, 3, 5, 5, seed=5)})
    net = to_torch(model)
    assert [(name, layer.onnx_nodes) for name, layer in net.layers] == [
        ("scale1", ["scale1", "scale1_bias"]), ("conv", ["conv"]), ("conv_bias", ["conv_bias"]),
        ("reversed_sub", ["reversed_sub"])]
    # The Scale layer before the conv opens the block the conv joins; both readers of the conv join it.
    assert [(b.name, b.layers) for b in net.blocks] == [("conv", ("scale1", "conv", "conv_bias", "reversed_sub"))]
    assert net.unfreeze(1, verbose=False).trainable_layers()[0] == "scale1"
    assert net.scale1.bias.requires_grad and net.scale1.weight.requires_grad


def _export(net, example: np.ndarray, path: Path) -> str:
    """torch.onnx.export with a dynamic batch, as zoo.transfer.export_onnx does (TorchScript tracing)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about tensors used as sizes
        torch.onnx.export(net, (torch.from_numpy(example),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
    return str(path)


def test_exported_back_to_onnx_the_shape_subgraph_stays_dynamic(tmp_path):
    """Sizes computed from the input's shape must not become constants of the traced batch."""
    model = _dynamic_shape_model()
    path = _export(to_torch(model), _rand(2, 4, 3, 3), tmp_path / "again.onnx")
    for batch in (1, 5):
        x = _rand(batch, 4, 3, 3, seed=batch)
        for got, want in zip(run_ort(str(path), {"x": x}), run_ort(model, {"x": x})):
            assert relative_error(got, want) <= TOL


@pytest.mark.slow
def test_light_squeezenet_exports_back_to_onnx_with_a_dynamic_batch(tmp_path):
    model = light_model_randomized(onnx_light_models() / "light_squeezenet.onnx", seed=2)
    path = _export(to_torch(model), _rand(2, 3, 224, 224), tmp_path / "squeezenet.onnx")
    x = _rand(3, 3, 224, 224, seed=3, low=0.0)
    got, want = run_ort(path, {"x": x})[-1], run_ort(model, {"data_0": x})[-1]
    assert got.shape == (3, 1000, 1, 1) and relative_error(got, want) <= TOL


def test_constant_folding_keeps_weights_trainable_and_shapes_as_buffers():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0]),  # folded at conversion time
        helper.make_node("Gemm", ["x", "w"], ["h"], name="fc1", transB=1),
        helper.make_node("Reshape", ["h", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(_rand(4, 6), "w_t"), numpy_helper.from_array(np.array([-1, 3, 2], I64), "shape")]
    model = _graph(nodes, [("x", TensorProto.FLOAT, ["n", 4])], [("y", TensorProto.FLOAT, None)], inits)
    _check_against_ort(model, {"x": _rand(5, 4)})
    net = to_torch(model)
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == [("fc1.weight", (6, 4))]
    assert [tuple(b.shape) for b in net.constants.buffers()] == [(3,)]
    assert list(net.state_dict()) == ["fc1.weight"]


# ---------------------------------------------------------------- freezing and training
def _small_cnn():
    """conv -> BN -> relu -> conv -> GAP -> flatten -> gemm: three weight layers and a BN."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("Dropout", ["r"], ["d"], name="drop1"),
        helper.make_node("Conv", ["d", "c2w"], ["c2"], name="conv2/3x3"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fcw", "fcb"], ["y"], name="fc", transB=1),
    ]
    weights = {"c1w": rng.normal(0, 0.3, (8, 3, 3, 3)), "c1b": rng.normal(0, 0.1, 8),
               "s": rng.uniform(0.5, 1.5, 8), "b": rng.normal(0, 0.1, 8), "m": rng.normal(0, 0.1, 8),
               "v": rng.uniform(0.5, 1.5, 8), "c2w": rng.normal(0, 0.2, (6, 8, 3, 3)),
               "fcw": rng.normal(0, 0.3, (4, 6)), "fcb": rng.normal(0, 0.1, 4)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    return _graph(nodes, [("x", TensorProto.FLOAT, ["n", 3, 8, 8])], [("y", TensorProto.FLOAT, ["n", 4])], inits)


def _train_step(net, seed=0):
    x = torch.from_numpy(_rand(4, 3, 8, 8, seed=seed))
    target = torch.tensor([0, 1, 2, 3])
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5) if params else None
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x), target)
    if opt:
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


def test_frozen_on_creation_and_layers_in_graph_order():
    net = to_torch(_small_cnn())
    assert [name for name, _ in net.layers] == ["conv1", "bn1", "conv2/3x3", "fc"]
    assert net.trainable_layers() == []
    assert all(not p.requires_grad for p in net.parameters())
    assert dict(net.named_parameters()).keys() == {
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2_3x3.weight", "fc.weight", "fc.bias"}
    assert net.conv2_3x3.onnx_name == "conv2/3x3"
    assert {k for k, _ in net.bn1.named_buffers()} == {"running_mean", "running_var"}


def test_unfreeze_top_one_trains_only_the_top_layer():
    net = to_torch(_small_cnn())
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert net.unfreeze(top=1).trainable_layers() == ["fc"]
    _train_step(net)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_blocks_group_a_conv_with_its_batchnorm_and_activation():
    net = to_torch(_small_cnn())
    assert [(b.name, b.layers) for b in net.blocks] == [("conv1", ("conv1", "bn1")), ("conv2/3x3", ("conv2/3x3",)),
                                                        ("fc", ("fc",))]
    assert net.unfreeze(2, verbose=False).trainable_layers() == ["conv2/3x3", "fc"]
    assert net.unfreeze(0, verbose=False).trainable_layers() == []


def test_unfreezing_every_block_trains_batchnorm_on_batch_statistics():
    net = to_torch(_small_cnn())
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert net.unfreeze(3, verbose=False).trainable_layers() == ["conv1", "bn1", "conv2/3x3", "fc"]
    _train_step(net)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(before)  # every weight, and BatchNorm's running statistics
    net.freeze()
    assert net.trainable_layers() == []
    assert net.unfreeze(layers=["bn1"], verbose=False).trainable_layers() == ["bn1"]


def test_unfreeze_prints_how_many_parameters_train(capsys):
    net = to_torch(_small_cnn())
    net.unfreeze(1)
    line = capsys.readouterr().err.strip()
    total = sum(p.numel() for p in net.parameters())
    assert line == f"1 of 3 blocks train (fc): 28 of {total:,} parameters ({100 * 28 / total:.1f}%)"
    assert net.trainable_parameters() == 28


def test_frozen_module_in_train_mode_keeps_running_stats_and_skips_dropout():
    model = _small_cnn()
    x = _rand(5, 3, 8, 8, seed=3)
    want = run_ort(model, {"x": x})[0]
    net = to_torch(model)
    stats = net.bn1.running_mean.clone()
    net.train()
    got = net(torch.from_numpy(x))
    assert relative_error(got.detach().numpy(), want) <= TOL  # BN on running stats, dropout off
    assert torch.equal(net.bn1.running_mean, stats)
    loss = _train_step(net)  # nothing trainable: the forward still runs, nothing changes
    assert not loss.requires_grad and torch.equal(net.bn1.running_mean, stats)


def test_frozen_inference_folds_batchnorm_and_falls_back_when_trained_or_hooked():
    model = _small_cnn()
    x = _rand(3, 3, 8, 8, seed=4)
    want = run_ort(model, {"x": x})[0]
    net = to_torch(model)
    with torch.no_grad():
        assert relative_error(net(x).numpy(), want) <= TOL
    frozen = net.__dict__["_fast"].graph
    targets = [str(n.target) for n in frozen.graph.nodes if n.op in ("call_function", "call_module")]
    assert not any("bn1" in t for t in targets)  # folded into conv1
    assert sum("_convolution_pointwise" in t for t in targets) == 2
    with torch.no_grad():
        seen = []
        handle = net.bn1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        assert relative_error(net(x).numpy(), want) <= TOL and seen == [(3, 8, 8, 8)]  # the plain graph ran
        handle.remove()
        net.bn1.running_var.mul_(4.0)  # an in-place change refolds the weights
        changed = net(x).numpy()
        net.bn1.running_var.div_(4.0)
        assert relative_error(changed, want) > 1e-3 and relative_error(net(x).numpy(), want) <= TOL
    net.unfreeze(layers=["bn1"], verbose=False)
    net.eval()
    net(x).sum().backward()
    assert net.bn1.weight.grad is not None and net.conv1.weight.grad is None


def test_dropout_acts_below_a_trainable_layer_in_train_mode_only():
    net = to_torch(_small_cnn()).unfreeze(top=1)
    x = torch.from_numpy(_rand(5, 3, 8, 8, seed=3))
    net.train()
    torch.manual_seed(0)
    a, b = net(x), net(x)
    assert not torch.allclose(a, b)
    net.eval()
    assert torch.equal(net(x), net(x))


def test_gradients_reach_only_unfrozen_parameters():
    net = to_torch(_small_cnn()).unfreeze(top=2)
    net.eval()
    net(torch.from_numpy(_rand(2, 3, 8, 8))).sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad == {"conv2_3x3.weight", "fc.weight", "fc.bias"}


def test_unfreeze_bad_arguments_name_the_choices():
    net = to_torch(_small_cnn())
    with pytest.raises(UnknownLayerError, match=r"unfreeze\(9\): this module has 3 blocks.*between 0 and 3"):
        net.unfreeze(9)
    with pytest.raises(UnknownLayerError, match=r"no layer 'relu9'.*closest: relu1"):
        net.unfreeze("relu9")
    with pytest.raises(UnknownLayerError, match=r"'conv9'.*fc"):
        net.unfreeze(layers=["conv9"])
    with pytest.raises(InputError, match=r"1 input"):
        net(torch.zeros(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(InputError, match=r"'x' must have 4 dimensions \[N, 3, 8, 8\], got shape \(3, 8, 8\)"):
        net(torch.zeros(3, 8, 8))


def test_numpy_input_is_cast_to_the_declared_dtype():
    net = to_torch(_small_cnn())
    x = _rand(2, 3, 8, 8).astype(np.float64)
    with torch.no_grad():
        assert net(x).dtype == torch.float32


# ---------------------------------------------------------------- errors
def test_unsupported_ops_are_all_named_at_conversion_time():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("FusedConv", ["a"], ["b"], name="ms_1", domain="com.microsoft"),
        helper.make_node("StringNormalizer", ["b"], ["c"], name="text"),
        helper.make_node("Resize", ["c", "", "sc"], ["y"], name="up", mode="bogus"),
    ]
    model = _graph(nodes, [("x", TensorProto.FLOAT, [2, 2])], [("y", TensorProto.FLOAT, None)],
                   [onnx.numpy_helper.from_array(np.array([1, 1], np.float32), "sc")])
    with pytest.raises(UnsupportedLayerError) as err:
        to_torch(model)
    message = str(err.value)
    for needle in ("com.microsoft.FusedConv", "StringNormalizer", "Resize", "ms_1", "text", "up", "bogus"):
        assert needle in message
    assert "ok" not in message.split("unsupported nodes:")[1]


def test_unsupported_op_in_a_dead_branch_is_ignored():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("LpPool", ["x"], ["unused"], name="dead", kernel_shape=[2]),
        helper.make_node("Relu", ["x"], ["y"], name="live"),
    ]
    model = _graph(nodes, [("x", TensorProto.FLOAT, ["n", 2])], [("y", TensorProto.FLOAT, None)])
    x = _rand(3, 2)
    assert np.array_equal(to_torch(model)(x).numpy(), np.maximum(x, 0))


def test_bad_model_file_is_a_format_error(tmp_path):
    from zoo.errors import ModelFormatError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        to_torch(bad)
    with pytest.raises(ModelFormatError, match="missing.onnx"):
        to_torch(tmp_path / "missing.onnx")


# ---------------------------------------------------------------- Keras models through tf2onnx
def _keras_cnn(keras):
    inp = keras.Input((20, 20, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    x = keras.layers.SeparableConv2D(12, 3, padding="valid", name="sep")(x)
    a = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    b = keras.layers.AveragePooling2D(2, padding="same", name="avgpool")(x)
    b = keras.layers.Conv2D(12, 1, name="proj")(b)
    x = keras.layers.Add(name="add")([a, b])
    c = keras.layers.Concatenate(name="concat")([x, a])
    g = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    f = keras.layers.Flatten(name="flatten")(c)
    x = keras.layers.Concatenate(name="concat2")([g, f])
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Dense(16, activation="tanh", name="fc1")(x)
    out = keras.layers.Dense(5, activation="softmax", name="fc2")(x)
    return keras.Model(inp, out)


def _keras_mlp(keras):
    inp = keras.Input((12,))
    x = keras.layers.Dense(32, activation="relu", name="h1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(16, activation="sigmoid", name="h2")(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inp, out)


def _keras_decoder(keras):
    """Layers the CNN above lacks: padding, transposed conv, upsampling, layer norm, leaky ReLU."""
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Rescaling(1 / 2.0, offset=-0.25, name="rescale")(inp)
    x = keras.layers.ZeroPadding2D(((1, 0), (0, 2)), name="zpad")(x)
    x = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="deconv")(x)
    x = keras.layers.LeakyReLU(0.1, name="leaky")(x)
    x = keras.layers.UpSampling2D(2, name="up")(x)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="valid", activation="elu", name="conv")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    out = keras.layers.Dense(4, activation="sigmoid", name="out")(x)
    return keras.Model(inp, out)


def _to_onnx(tf, tf2onnx, model, shape):
    spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def infer(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(infer, input_signature=spec, opset=13)
    return proto


@pytest.fixture(scope="module")
def keras_models():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out = {}
    for name, build, shape in (("cnn", _keras_cnn, (20, 20, 3)), ("mlp", _keras_mlp, (12,)),
                               ("decoder", _keras_decoder, (8, 8, 4))):
        model = build(keras)
        # Random biases and BN statistics, so no weight is a zero tf2onnx could drop.
        model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if w.ndim == 1 and "bn" in name
                           else rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights()])
        x = rng.uniform(-1, 1, (3,) + shape).astype(np.float32)
        out[name] = (_to_onnx(tf, tf2onnx, model, shape), model, x, model(x, training=False).numpy())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp", "decoder"])
def test_keras_model_via_tf2onnx_matches_keras_and_onnxruntime(keras_models, name, tmp_path):
    proto, keras_model, x, want_keras = keras_models[name]
    net = to_torch(proto)
    session = ort_session(proto)
    for batch in (1, 3):
        with torch.no_grad():
            got = net(x[:batch]).numpy()
        assert relative_error(got, want_keras[:batch]) <= TOL
        assert relative_error(got, session.run(None, {net.input_names[0]: x[:batch]})[0]) <= TOL
    exported = _export(net, x[:2], tmp_path / f"{name}.onnx")
    with torch.no_grad():
        assert relative_error(run_ort(exported, {"x": x})[0], net(x).numpy()) <= TOL
    weights = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    assert sum(p.numel() for p in net.parameters()) >= weights * 0.5
    assert net.unfreeze(top=1).trainable_layers() == [net.layers[-1][0]]


# ---------------------------------------------------------------- Caffe zoo architectures
# Same layers as a listed net with other sizes (caffenet's fc8 for 200 or 20 classes; deeper resnets):
# run with ZOO_TEST_ALL_CAFFE=1 (each costs ~15 s, mostly writing and converting the random weights).
CAFFE_SAME_ARCHITECTURE = {"bvlc_reference_rcnn_ilsvrc13", "finetune_flickr_style", "resnet_101", "resnet_152"}
CAFFE_NETS = [name for name in caffe_zoo_nets()
              if os.environ.get("ZOO_TEST_ALL_CAFFE") or name not in CAFFE_SAME_ARCHITECTURE]


@pytest.mark.slow
@pytest.mark.parametrize("name", CAFFE_NETS or [None])
def test_caffe_converted_model_matches_onnxruntime(name, tmp_path):
    if name is None:
        without_shared(f"the Caffe Model Zoo nets are in {CAFFE_MODELS} (shared/ beside the checkout)")
    from converters import caffe

    prototxt = caffe_net(name)
    weights = tmp_path / f"{name}.caffemodel"
    caffe.make_random_caffemodel(prototxt, weights, seed=0)
    model = caffe.convert(prototxt, weights, verify=False).model
    net = to_torch(model)
    graph_input = next(i for i in model.graph.input if i.name == net.input_names[0])
    shape = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    want = run_ort(model, {net.input_names[0]: x}, threads=2)
    with torch.no_grad():
        got = _outputs(net(torch.from_numpy(x)))
    for g, w in zip(got, want):
        assert relative_error(g, w) <= TOL
    assert net.layers and all(not p.requires_grad for p in net.parameters())


def test_model_folders_are_present():
    # Guard: the parametrized model tests above must not silently run over nothing.
    assert all((onnx_light_models() / f"light_{n}.onnx").is_file() for n in LIGHT)
    if CAFFE_MODELS.is_dir():  # on a fresh clone with no shared/ beside it the zoo nets are skipped
        assert len(CAFFE_NETS) >= 8, f"no Caffe deploy.prototxt files under {CAFFE_MODELS}"


def test_importing_the_converter_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, converters.onnx_to_torch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from converters.onnx_to_torch import supported_ops

    assert {"Conv", "Gemm", "LRN", "BatchNormalization", "Resize"} <= set(supported_ops())


def test_deepcopy_and_state_dict_round_trip():
    import copy

    net = to_torch(_small_cnn()).unfreeze(top=1)
    twin = copy.deepcopy(net)
    assert twin.trainable_layers() == ["fc"]
    x = torch.from_numpy(_rand(2, 3, 8, 8))
    with torch.no_grad():
        twin.fc.weight.add_(1.0)
        assert not torch.equal(net(x), twin(x))
        twin.load_state_dict(net.state_dict())
        assert torch.equal(net(x), twin(x))


# ---------------------------------------------------------------- several inputs, saving, TorchScript
def _token_batch(batch=3, seq=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, (batch, seq))
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq // 2:] = 0  # a padded sentence: the mask must change its embedding
    return ids, mask


def test_text_encoder_takes_token_ids_and_mask_by_position_or_name(tmp_path):
    path = text_encoder_onnx(tmp_path / "text.onnx")
    net = to_torch(path)
    assert net.input_names == ["input_ids", "attention_mask"] and net.output_names == ["embedding"]
    for batch, seq in ((3, 9), (1, 4)):
        ids, mask = _token_batch(batch, seq, seed=seq)
        want = run_ort(path, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            positional = net(torch.from_numpy(ids), torch.from_numpy(mask))
            named = net(attention_mask=torch.from_numpy(mask), input_ids=torch.from_numpy(ids))
            mixed = net(ids.astype(np.int32), attention_mask=mask)  # numpy int32 ids are cast to int64
        assert positional.shape == (batch, 16)
        assert relative_error(positional.numpy(), want) <= TOL
        assert torch.equal(positional, named) and torch.equal(positional, mixed)
    ids, mask = _token_batch()
    unmasked = run_ort(path, {"input_ids": ids, "attention_mask": np.ones_like(mask)})[0]
    assert np.abs(unmasked[-1] - run_ort(path, {"input_ids": ids, "attention_mask": mask})[0][-1]).max() > 1e-3


def test_several_inputs_wrong_calls_name_the_inputs(tmp_path):
    net = to_torch(text_encoder_onnx(tmp_path / "text.onnx"))
    ids, mask = (torch.from_numpy(a) for a in _token_batch())
    with pytest.raises(InputError, match=r"missing input\(s\) \['attention_mask'\]"):
        net(ids)
    with pytest.raises(InputError, match="no input 'mask'; its inputs are"):
        net(ids, mask=mask)
    with pytest.raises(InputError, match="given twice"):
        net(ids, mask, input_ids=ids)
    with pytest.raises(InputError, match="takes 2 input"):
        net(ids, mask, mask)
    with pytest.raises(InputError, match="'input_ids' takes int64 values"):
        net(ids.float(), mask)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_with_a_state_input_returns_output_and_state(tmp_path, bidirectional):
    path = gru_onnx(tmp_path / "gru.onnx", bidirectional=bidirectional)
    net = to_torch(path)
    assert net.input_names == ["input", "state"] and net.output_names == ["output", "state_out"]
    assert [layer.op_type for _, layer in net.layers].count("GRU") == 2  # two stacked layers
    rng = np.random.default_rng(1)
    state = rng.standard_normal((4 if bidirectional else 2, 3, 8)).astype(np.float32)
    for x in (rng.standard_normal((6, 3, 5)).astype(np.float32), rng.standard_normal((1, 3, 5)).astype(np.float32)):
        want = run_ort(path, {"input": x, "state": state})
        with torch.no_grad():
            got = net(torch.from_numpy(x), state=torch.from_numpy(state))
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want):
            assert g.shape == w.shape and relative_error(g.numpy(), w) <= TOL
        state = want[1]  # feed the state back, as a streaming model is run


def test_torch_save_and_load_round_trip_the_whole_module(tmp_path):
    net = to_torch(_small_cnn()).unfreeze(top=1)
    with torch.no_grad():
        net.fc.weight.add_(0.5)  # a fine-tuned weight must survive, not the converted one
    torch.save(net, tmp_path / "net.pt")
    twin = torch.load(tmp_path / "net.pt", weights_only=False)
    x = torch.from_numpy(_rand(2, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(net(x), twin(x))
    assert twin.trainable_layers() == ["fc"] and twin.input_names == ["x"]
    assert dict(twin.named_parameters()).keys() == dict(net.named_parameters()).keys()


def test_torch_save_does_not_store_the_fused_conv_batchnorm_cache(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(0, 0.1, (256, 256, 3, 3)), "s": rng.uniform(0.5, 1.5, 256),
               "b": rng.normal(0, 0.1, 256), "m": rng.normal(0, 0.1, 256), "v": rng.uniform(0.5, 1.5, 256)}
    model = _graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")],
                   [("x", TensorProto.FLOAT, ["n", 256, 4, 4])], [("y", TensorProto.FLOAT, None)],
                   [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    net = to_torch(model)
    x = torch.from_numpy(_rand(1, 256, 4, 4))
    with torch.no_grad():
        want = net(x)  # fills the cache of folded weights (as big as the conv's)
    torch.save(net, tmp_path / "net.pt")
    conv_bytes = 256 * 256 * 9 * 4
    assert os.path.getsize(tmp_path / "net.pt") < 1.2 * conv_bytes
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "net.pt", weights_only=False)(x), want, atol=1e-5)


def test_torch_save_round_trips_a_multi_input_recurrent_module(tmp_path):
    path = gru_onnx(tmp_path / "gru.onnx")
    net = to_torch(path)
    torch.save(net, tmp_path / "gru.pt")
    twin = torch.load(tmp_path / "gru.pt", weights_only=False)
    x, state = torch.from_numpy(_rand(4, 2, 5)), torch.from_numpy(_rand(2, 2, 8, seed=1))
    with torch.no_grad():
        for a, b in zip(net(x, state), twin(x, state)):
            assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_module_saves_loads_and_follows_the_batch(tmp_path):
    net = to_torch(_small_cnn())
    traced = torch.jit.trace(net, torch.from_numpy(_rand(2, 3, 8, 8)))
    torch.jit.save(traced, tmp_path / "net.ts")
    loaded = torch.jit.load(tmp_path / "net.ts")
    for batch in (1, 5):
        x = torch.from_numpy(_rand(batch, 3, 8, 8, seed=batch))
        with torch.no_grad():
            assert torch.allclose(loaded(x), net(x), atol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_text_encoder_saves_and_loads_with_both_inputs(tmp_path):
    path = text_encoder_onnx(tmp_path / "text.onnx")
    net = to_torch(path)
    ids, mask = (torch.from_numpy(a) for a in _token_batch())
    traced = torch.jit.trace(net, (ids, mask))
    torch.jit.save(traced, tmp_path / "text.ts")
    loaded = torch.jit.load(tmp_path / "text.ts")
    ids, mask = (torch.from_numpy(a) for a in _token_batch(2, 6, seed=3))
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), net(ids, mask), atol=1e-6)


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_scripted_op_matches_the_eager_module(case):
    op_type, inputs, constants, attrs, opset = OP_CASES[case]
    model = single_node_model(op_type, inputs, attrs, constants, N_OUTPUTS.get(case, 1), opset,
                              INPUT_ORDER.get(case))
    net = to_torch(model)
    scripted = torch.jit.script(net)
    xs = [torch.from_numpy(inputs[name]) for name in net.input_names]
    with torch.no_grad():
        want, got = net(*xs), scripted(*xs)
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.allclose(g.double(), w.double(), atol=1e-5, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet"])  # all nine script: test_onnx_to_torch_lowering.py
def test_scripted_light_model_saves_loads_and_matches_onnxruntime(name, tmp_path):
    model = light_model_randomized(onnx_light_models() / f"light_{name}.onnx", seed=3)
    net = to_torch(model)
    scripted = torch.jit.script(net)
    assert isinstance(scripted, torch.jit.ScriptModule)
    # Same parameters under the same names: a checkpoint of one loads into the other.
    assert dict(scripted.named_parameters()).keys() == dict(net.named_parameters()).keys()
    torch.jit.save(scripted, tmp_path / "net.ts")
    loaded = torch.jit.load(tmp_path / "net.ts")
    session = ort_session(model, threads=2)
    for batch in (1, 2):
        x = np.random.default_rng(batch).random((batch, 3, 224, 224), dtype=np.float32)
        want = session.run(None, {net.input_names[0]: x})[-1]
        with torch.no_grad():
            got = loaded(torch.from_numpy(x))[-1].numpy()
        assert relative_error(got, want) <= TOL


def test_scripted_text_encoder_takes_inputs_by_name_after_save_and_load(tmp_path):
    path = text_encoder_onnx(tmp_path / "text.onnx")
    scripted = torch.jit.script(to_torch(path))
    torch.jit.save(scripted, tmp_path / "text.ts")
    loaded = torch.jit.load(tmp_path / "text.ts")
    ids, mask = _token_batch(2, 5, seed=4)
    want = run_ort(path, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        got = loaded(attention_mask=torch.from_numpy(mask), input_ids=torch.from_numpy(ids))
    assert relative_error(got.numpy(), want) <= TOL


def test_scripted_gru_returns_output_and_state_as_a_tuple(tmp_path):
    path = gru_onnx(tmp_path / "gru.onnx", bidirectional=True)
    scripted = torch.jit.script(to_torch(path))
    torch.jit.save(scripted, tmp_path / "gru.ts")
    loaded = torch.jit.load(tmp_path / "gru.ts")
    x, state = _rand(3, 2, 5), _rand(4, 2, 8, seed=1)
    want = run_ort(path, {"input": x, "state": state})
    with torch.no_grad():
        got = loaded(torch.from_numpy(x), torch.from_numpy(state))
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        assert relative_error(g.numpy(), w) <= TOL


def test_scripting_a_node_without_a_script_form_names_it_and_the_trace_alternative():
    from onnx import TensorProto, helper

    from converters.onnx_to_torch import _registry

    @_registry.eager
    def python_only(x):
        return torch.from_numpy(np.cumsum(x.numpy(), 0))

    _registry.op("ZooPythonOnly", eager_only="a NumPy call")(lambda g, node, x: g.call(python_only, x))
    try:
        model = _graph([helper.make_node("ZooPythonOnly", ["x"], ["y"], name="numpy_node")],
                       [("x", TensorProto.FLOAT, ["n", 3])], [("y", TensorProto.FLOAT, None)])
        net = to_torch(model)
        x = torch.from_numpy(_rand(4, 3))
        assert torch.allclose(net(x), x.cumsum(0))  # eager works
        with pytest.raises(UnsupportedLayerError, match=r"numpy_node \(ZooPythonOnly\).*torch.jit.trace"):
            torch.jit.script(net)
    finally:
        del _registry.OPS["ZooPythonOnly"], _registry.EAGER_ONLY["ZooPythonOnly"]


def test_submodules_are_named_like_zoo_layers_lists_them(tmp_path):
    from zoo.extract import layers

    # onnx-caffe2 calls its nodes n0, n1...; zoo layers shows the Caffe layer names, and so does torch.
    path = onnx_light_models() / "light_bvlc_alexnet.onnx"
    net = to_torch(path)
    weighted = [info.name for info in layers(path) if info.parameters]
    assert [name for name, m in net.named_children() if name not in ("constants", "ops")] == weighted
    assert net.get_submodule("fc6").onnx_name == "n16" and net.fc6.layer_name == "fc6"
    assert "conv1.weight" in dict(net.named_parameters())
    # A model exported from torch reads like the torch source: embed.weight, query.weight, query.bias...
    text = to_torch(text_encoder_onnx(tmp_path / "text.onnx"))
    assert {"embed.weight", "query.weight", "query.bias", "norm.weight"} <= dict(text.named_parameters()).keys()
    assert tuple(text.embed.weight.shape) == (50, 16)  # the embedding table is a trainable layer too
    # Two stacked GRU nodes of one torch layer: gru and gru_2; unfreezing "gru" trains both.
    gru = to_torch(gru_onnx(tmp_path / "gru.onnx"))
    assert [layer.layer_name for _, layer in gru.layers] == ["gru", "gru", "head"]
    assert gru.get_submodule("gru_2").op_type == "GRU"
    assert gru.unfreeze(layers=["gru"]).trainable_layers() == ["/gru/GRU", "/gru/GRU_1"]
