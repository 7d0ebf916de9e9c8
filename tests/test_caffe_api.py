"""The Caffe converter's public API and file formats: V1 nets, legacy blobs, inputs, naming, report, opset."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from helpers.caffe import assert_close, check_against_opencv, layer_blobs, make_net, net_text, random_input
from helpers.zoo_nets import caffe_net

V1_NET = """name: "v1net"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 12
input_dim: 12
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 } }
layers { name: "fc6" type: INNER_PRODUCT bottom: "norm1" top: "fc6" inner_product_param { num_output: 10 } }
layers { name: "relu6" type: RELU bottom: "fc6" top: "fc6" }
layers { name: "drop6" type: DROPOUT bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layers { name: "fc7" type: INNER_PRODUCT bottom: "fc6" top: "fc7" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc7" top: "prob" }
"""


def _v1_caffemodel(path, blobs: dict[str, list[np.ndarray]]) -> None:
    """Write a caffemodel the old way: V1 `layers` with num/channels/height/width blob shapes."""
    from converters.caffe import schema

    m = schema.messages()
    net = m.NetParameter(name="v1net")
    kinds = {"conv1": "CONVOLUTION", "fc6": "INNER_PRODUCT", "fc7": "INNER_PRODUCT"}
    for name, arrays in blobs.items():
        layer = net.layers.add(name=name)
        layer.type = m.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_name[kinds[name]].number
        for array in arrays:
            legacy = [1] * (4 - array.ndim) + list(array.shape)
            blob = layer.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())


def test_v1_net_matches_opencv(tmp_path):
    pytest.importorskip("cv2")
    prototxt = tmp_path / "v1.prototxt"
    prototxt.write_text(V1_NET)
    from converters.caffe import make_random_caffemodel

    caffemodel = tmp_path / "v1.caffemodel"
    make_random_caffemodel(prototxt, caffemodel)
    check_against_opencv(prototxt, caffemodel, random_input([2, 3, 12, 12]), ["conv1", "relu1", "pool1", "norm1",
                                                                             "fc6", "drop6", "fc7", "prob"])


def test_v1_caffemodel_with_legacy_blob_shapes(tmp_path):
    from converters.caffe import convert, make_random_caffemodel
    from converters.caffe.opencv_check import run_onnx

    prototxt = tmp_path / "v1.prototxt"
    prototxt.write_text(V1_NET)
    modern = tmp_path / "modern.caffemodel"
    make_random_caffemodel(prototxt, modern, seed=5)
    blobs = layer_blobs(modern)
    legacy = tmp_path / "legacy.caffemodel"
    _v1_caffemodel(legacy, blobs)
    x = random_input([2, 3, 12, 12])
    a = convert(prototxt, modern, verify=False)
    b = convert(prototxt, legacy, verify=False)
    assert any("V1" in note for note in b.report.notes)
    (fc7_a,) = run_onnx(a.model, {"data": x}, ["fc7"])
    (fc7_b,) = run_onnx(b.model, {"data": x}, ["fc7"])
    np.testing.assert_array_equal(fc7_a, fc7_b)
    pytest.importorskip("cv2")
    check_against_opencv(prototxt, legacy, x, ["conv1", "fc6", "fc7"])


@pytest.mark.parametrize("style", ["input_shape", "input_dim", "Input"])
def test_input_styles_and_dynamic_batch(style, tmp_path):
    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    body = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }'
    prototxt, caffemodel = make_net(tmp_path, [1, 2, 7, 7], body, style=style)
    model = convert(prototxt, caffemodel, verify=False).model
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "data"
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [2, 7, 7]
    x = random_input([5, 2, 7, 7])
    (batched,) = run_onnx(model, {"data": x}, ["c"])
    (single,) = run_onnx(model, {"data": x[3:4]}, ["c"])
    assert batched.shape == (5, 3, 5, 5)
    np.testing.assert_allclose(batched[3:4], single, rtol=1e-5, atol=1e-5)


def test_in_place_chain_gives_each_layer_its_own_output(tmp_path):
    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    body = (
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 1 } }\n'
        'layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
        'layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }\n'
        'layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
    )
    prototxt, caffemodel = make_net(tmp_path, [2, 3, 5, 5], body)
    model = convert(prototxt, caffemodel, verify=False).model
    assert [o.name for o in model.graph.output] == ["conv1_relu"]
    names = ["conv1", "bn_conv1", "scale_conv1", "conv1_relu"]
    assert set(names) <= {o for node in model.graph.node for o in node.output}
    x = random_input([2, 3, 5, 5])
    conv, bn, sc, relu = run_onnx(model, {"data": x}, names)
    blobs = layer_blobs(caffemodel)
    w, b = blobs["conv1"]
    assert_close("conv1", np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b.reshape(1, 4, 1, 1), conv)
    mean, var, factor = blobs["bn_conv1"]
    assert factor.reshape(()) != 1.0  # random weights exercise Caffe's scale factor
    mean, var = mean / factor.reshape(()), var / factor.reshape(())
    assert_close("bn_conv1", (conv - mean.reshape(1, 4, 1, 1)) / np.sqrt(var.reshape(1, 4, 1, 1) + 1e-5), bn)
    gamma, beta = blobs["scale_conv1"]
    assert_close("scale_conv1", bn * gamma.reshape(1, 4, 1, 1) + beta.reshape(1, 4, 1, 1), sc)
    assert_close("conv1_relu", np.maximum(sc, 0), relu)


def test_batchnorm_zero_scale_factor_means_zero_statistics(tmp_path):
    from converters.caffe import convert, write_caffemodel
    from converters.caffe.opencv_check import run_onnx

    prototxt = tmp_path / "bn.prototxt"
    prototxt.write_text(net_text([1, 2, 3, 3], 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                                               'batch_norm_param { eps: 0.25 } }'))
    caffemodel = tmp_path / "bn.caffemodel"
    ones = np.ones(2, np.float32)
    write_caffemodel(caffemodel, "t", [("bn", "BatchNorm", [ones * 5, ones * 7, np.zeros(1, np.float32)])])
    x = random_input([1, 2, 3, 3])
    (got,) = run_onnx(convert(prototxt, caffemodel, verify=False).model, {"data": x}, ["bn"])
    assert_close("bn", x / np.sqrt(0.25), got)


def test_naming_rule_for_multi_top_and_duplicate_layer_names(tmp_path):
    from converters.caffe import convert

    body = (
        'layer { name: "s" type: "Slice" bottom: "data" top: "left" top: "right" slice_param { axis: 1 } }\n'
        'layer { name: "act" type: "ReLU" bottom: "left" top: "left" }\n'
        'layer { name: "act" type: "Sigmoid" bottom: "right" top: "right" }\n'
    )
    prototxt, caffemodel = make_net(tmp_path, [1, 4, 3, 3], body)
    model = convert(prototxt, caffemodel, verify=False).model
    assert [o.name for o in model.graph.output] == ["act", "act_1"]
    split = next(node for node in model.graph.node if node.op_type == "Split")
    assert list(split.output) == ["left", "right"] and split.name == "s"
    assert len({node.name for node in model.graph.node}) == len(model.graph.node)


def test_report_and_verification(tmp_path):
    pytest.importorskip("cv2")
    from converters.caffe import convert

    prototxt = caffe_net("lenet")
    from converters.caffe import make_random_caffemodel

    caffemodel = tmp_path / "lenet.caffemodel"
    make_random_caffemodel(prototxt, caffemodel)
    conversion = convert(prototxt, caffemodel)
    report = conversion.report
    assert report.source_format == "caffe" and report.converter == "converters.caffe"
    assert report.source_files[str(caffemodel)] == hashlib.sha256(caffemodel.read_bytes()).hexdigest()
    assert report.verified is True and [o.name for o in report.outputs] == ["prob"]
    assert {"onnx", "protobuf", "numpy", "onnxruntime", "opencv"} <= set(report.versions)
    assert report.seconds > 0 and report.input_layout == "NCHW"
    from converters.report import ConversionReport

    assert ConversionReport.from_dict(report.to_dict()) == report
    out = tmp_path / "out" / "lenet.onnx"
    conversion.save(out)
    import onnx

    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_without_opencv_verified_is_none(tmp_path, monkeypatch):
    import sys

    from converters.caffe import convert

    prototxt, caffemodel = make_net(tmp_path, [1, 1, 4, 4], 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    monkeypatch.setitem(sys.modules, "cv2", None)  # what `import cv2` does when OpenCV is not installed
    report = convert(prototxt, caffemodel).report
    assert report.verified is None and report.outputs == []
    assert any("OpenCV is not installed" in note for note in report.notes)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opset_is_selectable(opset, tmp_path):
    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    body = ('layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" }\n'
            'layer { name: "sm" type: "Softmax" bottom: "a" top: "sm" softmax_param { axis: 2 } }\n'
            'layer { name: "p" type: "Pooling" bottom: "b" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n'
            'layer { name: "am" type: "ArgMax" bottom: "b" top: "am" argmax_param { axis: 1 } }\n')
    prototxt, caffemodel = make_net(tmp_path, [1, 4, 6, 6], body)
    model = convert(prototxt, caffemodel, opset=opset, verify=False).model
    assert model.opset_import[0].version == opset
    x = random_input([1, 4, 6, 6])
    got = run_onnx(model, {"data": x}, ["sm", "p", "am"])
    reference = run_onnx(convert(prototxt, caffemodel, verify=False).model, {"data": x}, ["sm", "p", "am"])
    for g, r in zip(got, reference):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_input_spec_with_mean_file(tmp_path):
    from converters.caffe import convert, input_spec, make_random_caffemodel, schema

    prototxt = caffe_net("bvlc_alexnet")
    assert input_spec(prototxt) == {
        "name": "data", "shape": [None, 3, 227, 227], "dtype": "float32", "layout": "NCHW",
        "channel_order": "BGR", "pixel_range": [0, 255],
    }
    mean = np.stack([np.full((4, 5), v, np.float32) for v in (104.0, 117.0, 123.0)])
    mean[0, 0, 0] += 20.0  # a mean image, not a constant: the spec holds its per-channel average
    blob = schema.messages().BlobProto(num=1, channels=3, height=4, width=5)
    blob.data.extend(mean.ravel().tolist())
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(blob.SerializeToString())
    spec = input_spec(prototxt, mean_file)
    assert spec["mean"] == pytest.approx([105.0, 117.0, 123.0])
    from zoo.records import InputSpec

    assert InputSpec.from_dict(spec).to_dict() == spec

    small, caffemodel = make_net(tmp_path, [1, 3, 4, 4], 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    report = convert(small, caffemodel, mean_file=mean_file, verify=False).report
    assert str(mean_file) in report.source_files
    assert any("mean [105.0, 117.0, 123.0]" in note for note in report.notes)


def test_lenient_prototxt_parsing(tmp_path):
    from converters.caffe import convert

    # Training-only layers, unknown parameters and solver-era fields must not stop a deploy conversion.
    body = (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" param { lr_mult: 1 } '
        'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } engine: CAFFE } '
        'some_future_param { knob: 3 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "label" top: "loss" include { phase: TRAIN } }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "c" bottom: "label" top: "acc" exclude { phase: TEST } }\n'
    )
    prototxt, caffemodel = make_net(tmp_path, [1, 3, 4, 4], body)
    model = convert(prototxt, caffemodel, verify=False).model
    assert [o.name for o in model.graph.output] == ["c"]


def test_supported_layers_lists_the_issue_types():
    from converters.caffe import SUPPORTED_LAYERS

    wanted = {"Input", "Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "ELU",
              "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL", "LRN", "Dropout", "Softmax", "Concat",
              "Eltwise", "BatchNorm", "Scale", "Bias", "Flatten", "Reshape", "Split", "Slice", "Crop", "Permute",
              "ArgMax"}
    assert isinstance(SUPPORTED_LAYERS, tuple) and set(SUPPORTED_LAYERS) == wanted


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_unpacked_float_blobs_are_read(tmp_path):
    # Caffe writes packed floats; some third-party writers emit one tagged float per value.
    import struct

    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    prototxt = tmp_path / "s.prototxt"
    prototxt.write_text(net_text([1, 2, 2, 2], 'layer { name: "s" type: "Scale" bottom: "data" top: "s" }'))
    blob = _field(7, b"\x0a" + _varint(1) + _varint(2))  # shape { dim: 2 } (packed int64 dims)
    blob += b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in (2.0, -3.0))
    layer = _field(1, b"s") + _field(2, b"Scale") + _field(7, blob)
    caffemodel = tmp_path / "s.caffemodel"
    caffemodel.write_bytes(_field(100, layer))
    x = random_input([1, 2, 2, 2])
    (got,) = run_onnx(convert(prototxt, caffemodel, verify=False).model, {"data": x}, ["s"])
    np.testing.assert_allclose(got, x * np.array([2.0, -3.0], np.float32).reshape(1, 2, 1, 1))


def test_weights_written_inline_in_the_prototxt(tmp_path):
    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    prototxt = tmp_path / "inline.prototxt"
    prototxt.write_text(net_text([1, 2, 2, 2], 'layer { name: "b" type: "Bias" bottom: "data" top: "b" '
                                               'blobs { shape { dim: 2 } data: 0.5 data: -1 } }'))
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    x = random_input([1, 2, 2, 2])
    (got,) = run_onnx(convert(prototxt, empty, verify=False).model, {"data": x}, ["b"])
    np.testing.assert_allclose(got, x + np.array([0.5, -1.0], np.float32).reshape(1, 2, 1, 1))


def test_layers_where_opencv_is_not_caffe_are_not_claimed_verified(tmp_path):
    pytest.importorskip("cv2")
    from converters.caffe import convert

    body = 'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 3 alpha: 0.5 k: 2 } }'
    prototxt, caffemodel = make_net(tmp_path, [1, 3, 4, 4], body)
    report = convert(prototxt, caffemodel).report
    assert report.verified is None
    assert report.outputs and report.outputs[0].max_rel > report.tolerance  # OpenCV really differs here
    assert any("layer 'n' (LRN k=2" in note for note in report.notes)


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, converters.caffe; heavy = [m for m in ('numpy', 'onnx', 'onnxruntime', 'cv2', "
            "'google.protobuf', 'torch', 'tensorflow') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_inputs_and_verification(tmp_path):
    pytest.importorskip("cv2")
    from converters.caffe import convert, make_random_caffemodel

    prototxt = tmp_path / "two.prototxt"
    prototxt.write_text(
        'name: "two"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
        'input: "aux"\ninput_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
        'layer { name: "cat" type: "Concat" bottom: "data" bottom: "aux" top: "cat" }\n'
        'layer { name: "conv" type: "Convolution" bottom: "cat" top: "conv" '
        'convolution_param { num_output: 4 kernel_size: 3 } }\n'
    )
    caffemodel = tmp_path / "two.caffemodel"
    make_random_caffemodel(prototxt, caffemodel)
    conversion = convert(prototxt, caffemodel)
    assert [i.name for i in conversion.model.graph.input] == ["data", "aux"]
    assert conversion.report.verified is True, conversion.report.notes


def test_v0_net_is_refused_with_the_fix(tmp_path):
    from converters.caffe import input_spec
    from zoo.errors import ModelFormatError

    prototxt = tmp_path / "v0.prototxt"
    prototxt.write_text('name: "v0"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
                        'layers { layer { name: "conv1" type: "conv" num_output: 4 } bottom: "data" top: "conv1" }\n')
    with pytest.raises(ModelFormatError, match="V0 format.*upgrade_net_proto_text"):
        input_spec(prototxt)


def test_model_can_be_cut_at_a_layer_name(tmp_path):
    import onnx.utils

    from converters.caffe import convert
    from converters.caffe.opencv_check import run_onnx

    body = (
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n'
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
        'layer { name: "pool5" type: "Pooling" bottom: "conv1" top: "pool5" pooling_param { kernel_size: 2 stride: 2 } }\n'
        'layer { name: "fc7" type: "InnerProduct" bottom: "pool5" top: "fc7" inner_product_param { num_output: 6 } }\n'
        'layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }\n'
        'layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 3 } }\n'
    )
    prototxt, caffemodel = make_net(tmp_path, [1, 3, 9, 9], body)
    full = tmp_path / "full.onnx"
    convert(prototxt, caffemodel, verify=False).save(full)
    cut = tmp_path / "cut.onnx"
    onnx.utils.extract_model(str(full), str(cut), ["data"], ["fc7"])
    model = onnx.load(cut)
    assert {n.name for n in model.graph.node} == {"conv1", "relu1", "pool5", "fc7", "fc7/Reshape"}
    x = random_input([2, 3, 9, 9])
    (cut_fc7,) = run_onnx(model, {"data": x}, ["fc7"])
    (full_fc7,) = run_onnx(onnx.load(full), {"data": x}, ["fc7"])
    np.testing.assert_array_equal(cut_fc7, full_fc7)
    assert (cut_fc7 < 0).any()  # fc7 is the layer's own output, before relu7 rewrites the blob
