"""The torch.fx lowering's consumers (eager, TorchScript, torch.compile, torch.export), control flow,
sequences, quantized models, the frozen-inference graph, and fine-tuning by block."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.onnx_to_torch import (
    control_flow_onnx,
    light_model_randomized,
    ort_session,
    quantized_onnx,
    relative_error,
    run_ort,
    small_float_cnn_onnx,
)
from helpers.zoo_nets import onnx_light_models

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from converters.onnx_to_torch import to_torch
from zoo.errors import UnknownLayerError

TOL = 1e-4
LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]


def _as_list(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ---------------------------------------------------------------- one graph, four consumers
@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_eager_frozen_scripted_and_compiled_light_models_agree(name):
    """The eager module (its frozen-inference graph), the plain graph, TorchScript and torch.compile
    (dynamo capture, eager backend) compute the same outputs as onnxruntime."""
    model = light_model_randomized(onnx_light_models() / f"light_{name}.onnx", seed=5)
    net = to_torch(model)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    want = ort_session(model, threads=2).run(None, {net.input_names[0]: x})
    xt = torch.from_numpy(x)
    scripted = torch.jit.script(net)
    compiled = torch.compile(net, backend="eager")
    with torch.no_grad():
        results = {"eager": net(xt), "plain": net.graph_module(xt), "scripted": scripted(xt), "compiled": compiled(xt)}
    assert net.__dict__["_fast"].graph is not None  # the eager call ran the frozen-inference graph
    for how, result in results.items():
        got = _as_list(result)
        assert [g.shape for g in got] == [w.shape for w in want], how
        # Compare the logits (the last output): softmax of random deep nets saturates.
        assert relative_error(got[-1].numpy(), want[-1]) <= TOL, how
        assert float(np.abs(want[-1]).std()) > 0  # random weights: outputs are not all equal
    if name not in ("vgg19", "zfnet512", "bvlc_alexnet"):  # hundreds of MB of weights: batch 1 only
        x3 = np.random.default_rng(3).random((3, 3, 224, 224), dtype=np.float32)
        want3 = ort_session(model, threads=2).run(None, {net.input_names[0]: x3})[-1]
        with torch.no_grad():
            got3 = _as_list(net(torch.from_numpy(x3)))[-1].numpy()
        assert got3.shape == want3.shape and relative_error(got3, want3) <= TOL


def test_torch_export_takes_the_module():
    model = light_model_randomized(onnx_light_models() / "light_squeezenet.onnx", seed=2)
    net = to_torch(model)
    x = torch.from_numpy(_rand(2, 3, 224, 224))
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        got, want = exported.module()(x), net(x)
    for g, w in zip(_as_list(got), _as_list(want)):
        assert relative_error(g.numpy(), w.numpy()) <= TOL


def test_compile_option_returns_a_compiled_module_that_keeps_the_api():
    model = light_model_randomized(onnx_light_models() / "light_squeezenet.onnx", seed=2)
    compiled = to_torch(model, compile={"backend": "eager"})
    assert type(compiled).__name__ == "OptimizedModule"
    assert compiled.input_names == ["data_0"]
    compiled.unfreeze(1, verbose=False)
    assert [layer.layer_name for _, layer in compiled.layers if layer.trainable] == ["conv10"]
    x = _rand(1, 3, 224, 224)
    with torch.no_grad():
        got = _as_list(compiled(torch.from_numpy(x)))[-1].numpy()
    assert relative_error(got, run_ort(model, {"data_0": x})[-1]) <= TOL


# ---------------------------------------------------------------- control flow, sequences, optionals
def test_if_loop_and_scan_run_eagerly_scripted_and_compiled():
    model = control_flow_onnx()
    net = to_torch(model)
    scripted = torch.jit.script(net)
    compiled = torch.compile(net, backend="eager")
    for x in (_rand(3, 4, seed=1) + 1.0, _rand(2, 4, seed=2) - 1.0):  # both If branches
        want = run_ort(model, {"x": x})
        xt = torch.from_numpy(x)
        with torch.no_grad():
            for how, result in (("eager", net(xt)), ("scripted", scripted(xt)), ("compiled", compiled(xt))):
                got = _as_list(result)
                assert len(got) == len(want), how
                for g, w in zip(got, want):
                    assert g.shape == w.shape and relative_error(g.numpy(), w) <= 1e-5, how


def _sequence_model():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("SplitToSequence", ["x", "parts"], ["seq"], axis=1),
        helper.make_node("SequenceAt", ["seq", "one"], ["second"]),
        helper.make_node("SequenceErase", ["seq", "zero"], ["rest"]),
        helper.make_node("SequenceLength", ["rest"], ["count"]),
        helper.make_node("SequenceConstruct", ["second", "second"], ["pair"]),
        helper.make_node("ConcatFromSequence", ["pair"], ["stacked"], axis=0),
        helper.make_node("SequenceEmpty", [], ["empty"]),
        helper.make_node("SequenceInsert", ["empty", "second"], ["single"]),
        helper.make_node("ConcatFromSequence", ["single"], ["fresh"], axis=1, new_axis=1),
        helper.make_node("Optional", ["x"], ["maybe"]),
        helper.make_node("OptionalHasElement", ["maybe"], ["present"]),
        helper.make_node("OptionalGetElement", ["maybe"], ["again"]),
        helper.make_node("GlobalLpPool", ["image"], ["lp"], p=3),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "parts": np.array([2, 1, 3], np.int64), "one": np.array(1, np.int64), "zero": np.array(0, np.int64)}.items()]
    graph = helper.make_graph(
        nodes, "sequences",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 5, 5])],
        [helper.make_tensor_value_info("stacked", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("count", TensorProto.INT64, None),
         helper.make_tensor_value_info("fresh", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("present", TensorProto.BOOL, None),
         helper.make_tensor_value_info("again", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("lp", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_sequence_and_optional_ops_match_onnxruntime_eager_and_scripted():
    model = _sequence_model()
    x, image = _rand(4, 6), np.abs(_rand(4, 3, 5, 5, seed=3))
    want = run_ort(model, {"x": x, "image": image})
    net = to_torch(model)
    scripted = torch.jit.script(net)
    for how, module in (("eager", net), ("scripted", scripted)):
        with torch.no_grad():
            got = _as_list(module(torch.from_numpy(x), torch.from_numpy(image)))
        assert len(got) == len(want), how
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.numpy().dtype == w.dtype, how
            assert relative_error(g.numpy().astype(np.float64), w.astype(np.float64)) <= 1e-5, how


# ---------------------------------------------------------------- quantized models
@pytest.mark.parametrize("kind", ["qdq", "qoperator", "dynamic"])
def test_models_quantized_by_onnxruntime_match_it(tmp_path, kind):
    float_path = small_float_cnn_onnx(tmp_path / "float.onnx")
    path = quantized_onnx(float_path, tmp_path / f"{kind}.onnx", kind)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    expected = {"qdq": {"QuantizeLinear", "DequantizeLinear"}, "qoperator": {"QLinearConv"},
                "dynamic": {"DynamicQuantizeLinear", "ConvInteger"}}[kind]
    assert expected <= ops, ops
    net = to_torch(path)
    x = np.random.default_rng(7).standard_normal((3, 3, 12, 12)).astype(np.float32)
    want = run_ort(path, {"x": x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    # Integer kernels round the same way; float rescaling may differ by one quantization step.
    step = float(np.abs(want).max()) / 127
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1.01 * step + 1e-6
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert float((scripted(torch.from_numpy(x)) - torch.from_numpy(got)).abs().max()) <= 1.01 * step + 1e-6


# ---------------------------------------------------------------- frozen inference
def test_frozen_graph_is_rebuilt_after_training_and_skipped_while_training():
    model = light_model_randomized(onnx_light_models() / "light_resnet50.onnx", seed=4)
    net = to_torch(model)
    x = torch.from_numpy(_rand(1, 3, 224, 224, seed=1))
    with torch.no_grad():
        before = net(x)[-1]
    first = net.__dict__["_fast"]
    assert first.graph is not None
    net.unfreeze(1, verbose=False)
    net.train()
    loss = net(x)[-1].square().mean()  # trainable: the plain graph, with autograd
    loss.backward()
    fc = net.layers[-1][1]
    assert net.__dict__["_fast"] is first and fc.weight.grad is not None
    with torch.no_grad():
        fc.weight.sub_(0.1 * fc.weight.grad)
    net.freeze().eval()
    with torch.no_grad():
        after = net(x)[-1]
        plain = net.graph_module(x.contiguous(memory_format=torch.channels_last))[-1]
    assert net.__dict__["_fast"] is not first  # rebuilt from the changed weights
    assert not torch.allclose(before, after) and relative_error(after.numpy(), plain.numpy()) <= TOL


def test_frozen_graph_is_not_saved(tmp_path):
    model = light_model_randomized(onnx_light_models() / "light_squeezenet.onnx", seed=2)
    net = to_torch(model)
    x = torch.from_numpy(_rand(1, 3, 224, 224))
    with torch.no_grad():
        want = net(x)
    torch.save(net, tmp_path / "net.pt")
    size = (tmp_path / "net.pt").stat().st_size
    weights = sum(p.numel() * 4 for p in net.parameters())
    assert size < 1.2 * weights  # no second, packed copy of the convolutions
    twin = torch.load(tmp_path / "net.pt", weights_only=False)
    with torch.no_grad():
        for g, w in zip(_as_list(twin(x)), _as_list(want)):
            assert torch.allclose(g, w, atol=1e-6)


# ---------------------------------------------------------------- fine-tuning by block
def test_caffe_style_resnet_counts_blocks_not_nodes():
    """light_resnet50 is a Caffe2 ResNet: each conv has a BatchNorm (a weight layer of its own)."""
    net = to_torch(onnx_light_models() / "light_resnet50.onnx")
    assert len(net.layers) == 107 and len(net.blocks) == 54  # 53 conv + BN blocks and fc1000
    net.unfreeze(1, verbose=False)
    assert net.trainable_layers() == [net.blocks[-1].layers[0]]
    assert net.trainable_parameters() == 2048 * 1000 + 1000
    net.unfreeze(2, verbose=False)
    conv, bn = net.blocks[-2].layers
    assert net.trainable_layers() == [conv, bn, net.blocks[-1].layers[0]]


def test_unfreeze_above_a_cut_point_trains_what_it_feeds_and_gradients_reach_only_that():
    net = to_torch(onnx_light_models() / "light_resnet50.onnx")
    cut = net.cut_points[-6]  # a ReLU between res5 blocks (its Caffe2 node name)
    net.unfreeze(cut, verbose=False)
    trained = net.trainable_layers()
    assert trained and len(trained) < len(net.layers) - 10
    first_trained = next(i for i, (name, _) in enumerate(net.layers) if name == trained[0])
    assert all(name in trained for name, _ in net.layers[first_trained:])  # everything above the cut
    net.eval()
    x = torch.from_numpy(_rand(1, 3, 224, 224))
    net(x).sum().backward()
    with_grad = {name for name, layer in net.layers if any(p.grad is not None for p in layer.parameters())}
    assert with_grad == set(trained)
    with pytest.raises(UnknownLayerError, match="no layer"):
        net.unfreeze("res9z")
