"""Every Caffe Model Zoo deploy net in shared/caffe, with random weights: onnxruntime vs OpenCV per layer."""
from __future__ import annotations

import pytest

from helpers.caffe import RTOL, assert_close
from helpers.zoo_nets import CAFFE_MODELS, caffe_net, caffe_zoo_nets, without_shared

pytest.importorskip("cv2")
if not caffe_zoo_nets():
    without_shared(f"the Caffe Model Zoo nets are in {CAFFE_MODELS} (shared/ beside the checkout)", module=True)

FAST = ["lenet", "cifar10_quick", "squeezenet_v1.0", "squeezenet_v1.1", "bvlc_googlenet"]
# Over a few seconds each here (60M-parameter fully connected layers, or 50+ conv layers).
SLOW = ["bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_reference_rcnn_ilsvrc13", "finetune_flickr_style",
        "resnet_50", "resnet_101", "resnet_152"]
# Layer types worth comparing at; in-place ones (ReLU, BatchNorm, Scale) are sampled separately.
CHECKED_TYPES = {"Convolution", "Pooling", "LRN", "InnerProduct", "Concat", "Eltwise", "Softmax"}
MAX_CHECKED = 40


def test_every_zoo_net_is_covered():
    assert caffe_zoo_nets() == sorted(FAST + SLOW)


def _checked_layers(net, graph_outputs: list[str]) -> list[str]:
    """A spread of layers through the net, the first of each in-place type, and the net outputs."""
    candidates = [layer.name for layer in net.layers if layer.type in CHECKED_TYPES]
    step = max(1, len(candidates) // MAX_CHECKED)
    names = candidates[::step]
    for kind in ("ReLU", "BatchNorm", "Scale", "Dropout"):
        names += [layer.name for layer in net.layers if layer.type == kind][:1]
    names += [n for n in ("pool5", "fc7", "fc6", "pool5/7x7_s1") if n in {layer.name for layer in net.layers}]
    return list(dict.fromkeys(names + graph_outputs))


def _check_zoo_net(model: str, tmp_path, verify: bool):
    from converters.caffe import convert, make_random_caffemodel
    from converters.caffe.opencv_check import run_onnx, run_opencv, sample_inputs
    from converters.caffe.parse import read_prototxt

    prototxt = caffe_net(model)
    caffemodel = tmp_path / f"{model}.caffemodel"
    make_random_caffemodel(prototxt, caffemodel, seed=3)
    # The report's own OpenCV check loads the weights into OpenCV a second time: only on the small nets.
    conversion = convert(prototxt, caffemodel, verify=verify)
    report = conversion.report
    if verify:
        assert report.verified is True, report.notes
        assert report.reference.startswith("opencv 4.")
        assert report.outputs and all(o.max_rel <= RTOL for o in report.outputs)
    assert report.input_layout == "NCHW" and report.opset == 17
    assert set(report.source_files) == {str(prototxt), str(caffemodel)}

    net = read_prototxt(prototxt)
    outputs = [o.name for o in conversion.model.graph.output]
    names = _checked_layers(net, outputs)
    # Two items in the batch: the graph's batch axis is dynamic whatever the prototxt says.
    inputs = sample_inputs(net, batch=2, seed=11)
    reference = run_opencv(str(prototxt), str(caffemodel), inputs, [(n, 0) for n in names])
    got = run_onnx(conversion.model, inputs, names)
    for name, ref, out in zip(names, reference, got):
        assert_close(f"{model}:{name}", ref, out)
    # The comparison is not vacuous: the checked layers carry signal, and the random weights keep it on
    # the input's scale (+-128) through 150+ layers instead of vanishing or exploding.
    scales = [float(abs(r).max()) for name, r in zip(names, reference) if name not in outputs or "prob" not in name]
    assert 0.1 < min(scales) and max(scales) < 1e5, dict(zip(names, scales))


@pytest.mark.parametrize("model", FAST)
def test_zoo_net_matches_opencv(model, tmp_path):
    _check_zoo_net(model, tmp_path, verify=True)


@pytest.mark.slow
@pytest.mark.parametrize("model", SLOW)
def test_big_zoo_net_matches_opencv(model, tmp_path):
    _check_zoo_net(model, tmp_path, verify=model == "resnet_50")


def test_googlenet_pool1_uses_caffe_ceil_rounding(tmp_path):
    # 112 -> 56 with Caffe's ceil rounding (floor would give 55): the fact converters get wrong.
    import numpy as np

    from converters.caffe import convert, make_random_caffemodel
    from converters.caffe.layers import pooled_size
    from converters.caffe.opencv_check import run_onnx

    assert pooled_size(112, 3, 2, 0, ceil=True, any_pad=False) == 56
    assert pooled_size(112, 3, 2, 0, ceil=False, any_pad=False) == 55
    prototxt = caffe_net("bvlc_googlenet")
    caffemodel = tmp_path / "googlenet.caffemodel"
    make_random_caffemodel(prototxt, caffemodel)
    conversion = convert(prototxt, caffemodel, verify=False)
    x = np.zeros([1, 3, 224, 224], np.float32)
    pool1, pool5 = run_onnx(conversion.model, {"data": x}, ["pool1/3x3_s2", "pool5/7x7_s1"])
    assert pool1.shape == (1, 64, 56, 56) and pool5.shape == (1, 1024, 1, 1)
