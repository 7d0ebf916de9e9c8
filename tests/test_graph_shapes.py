"""Graphs real exporters make, built here: the batch on axis 1 beside a scalar, a top-level If, jax2tf scopes.

Each is a small ONNX graph written with onnx.helper (none is a copy of a corpus model); every
result is checked against onnxruntime on the original graph.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from zoo.errors import InputError


def _save(tmp_path, name, nodes, inputs, outputs, inits=(), producer="", opset=17):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _run(path, feeds):
    from converters.onnx_model import session

    sess = session(onnx.load(path))
    return sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def _weights(name, shape, seed):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


# ---- 1. a multi-input graph whose batch is on axis 1 --------------------------------------------


def _recurrent(tmp_path, fixed: bool):
    """audio (N, 16) and a state (2, N, 4) and a scalar sr: state' = tanh(state + audio @ W * sr / 16000)."""
    batch = 1 if fixed else "N"
    nodes = [
        helper.make_node("MatMul", ["audio", "w"], ["proj"], name="proj"),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "rate"], ["gain"]),
        helper.make_node("Mul", ["proj", "gain"], ["scaled"], name="scale"),
        helper.make_node("Add", ["state", "scaled"], ["summed"], name="add"),
        helper.make_node("Tanh", ["summed"], ["new_state"], name="tanh"),
        helper.make_node("ReduceMean", ["new_state"], ["out"], name="head", axes=[0, 2], keepdims=0),
    ]
    inits = [_weights("w", [16, 4], 0), numpy_helper.from_array(np.float32(16000), "rate")]
    return _save(tmp_path, "recurrent_fixed" if fixed else "recurrent", nodes,
                 [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, 16]),
                  helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 4]),
                  helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch]),
                  helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, batch, 4])], inits)


@pytest.mark.parametrize("fixed", [False, True])
def test_a_state_batched_on_axis_1_beside_a_scalar_is_verified(tmp_path, fixed):
    from converters.onnx_model import convert, run, sample_run

    path = _recurrent(tmp_path, fixed)
    sample = sample_run(onnx.load(path))
    assert sample.axes == {"audio": 0, "state": 1, "sr": None}
    assert sample.feeds["state"].shape == (2, 2, 4) and sample.feeds["sr"].shape == ()
    conversion = convert(path)
    assert conversion.report.verified is True, conversion.report.describe_unverified()
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in conversion.model.graph.input}
    assert dims["state"][0] == 2 and dims["state"][1] == ("batch" if fixed else "N") and dims["sr"] == []
    rng = np.random.default_rng(1)
    feeds = {"audio": rng.standard_normal((3, 16)).astype(np.float32),
             "state": rng.standard_normal((2, 3, 4)).astype(np.float32), "sr": np.array(8000, np.int64)}
    got = run(conversion.model, feeds)[1]
    want = np.tanh(feeds["state"] + feeds["audio"] @ numpy_helper.to_array(onnx.load(path).graph.initializer[0]) * 0.5)
    np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-6)


def test_open_dims_the_defaults_cannot_fill_are_tried_larger(tmp_path):
    """An audio front end whose window (a 64-wide Conv) is longer than the default 16 samples."""
    from converters.onnx_model import convert

    nodes = [helper.make_node("Unsqueeze", ["audio", "axes"], ["x"]),
             helper.make_node("Conv", ["x", "window"], ["frames"], name="stft", strides=[32])]
    inits = [_weights("window", [8, 1, 64], 2), numpy_helper.from_array(np.array([1], np.int64), "axes")]
    path = _save(tmp_path, "front", nodes, [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", "T"])],
                 [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 8, None])], inits)
    report = convert(path).report
    assert report.verified is True
    assert any("open dimensions other than the batch set to 64" in n for n in report.notes), report.notes


def test_no_onnx_conversion_ends_in_a_traceback(tmp_path, zoo_env):
    """A graph onnxruntime rejects at run time: one line naming the model, the step and the cause."""
    import subprocess
    import sys

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    inits = [numpy_helper.from_array(np.array([7, -1], np.int64), "shape")]  # 7 rows divide no batch
    path = _save(tmp_path, "broken", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, None])], inits)
    done = subprocess.run([sys.executable, "-c", "from zoo.cli import main; main()", "convert", "-q", str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error: onnxruntime cannot run the original model on sample inputs")
    assert "x ['N', 3] float32" in line


# ---- 4. a top-level If on a scalar the user passes ------------------------------------------------


def _branching(tmp_path):
    """if sr == 16000: a 2-layer encoder on the audio, else a 1-layer one; plus an If on a static size."""
    then = helper.make_graph(
        [helper.make_node("MatMul", ["audio", "w1"], ["h1"], name="/encoder/0/MatMul"),
         helper.make_node("Relu", ["h1"], ["r1"], name="/encoder/0/Relu"),
         helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="/encoder/1/MatMul"),
         helper.make_node("Relu", ["h2"], ["then_out"], name="/encoder/1/Relu")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["N", 4])],
        [_weights("w1", [8, 6], 3), _weights("w2", [6, 4], 4)])
    other = helper.make_graph(
        [helper.make_node("MatMul", ["audio", "w8k"], ["else_out"], name="/encoder8k/MatMul")],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["N", 4])], [_weights("w8k", [8, 4], 5)])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16k"], name="Equal_0"),
             helper.make_node("If", ["is16k"], ["enc"], name="If_0", then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["enc"], ["prob"], name="head")]
    inits = [numpy_helper.from_array(np.int64(16000), "rate")]
    return _save(tmp_path, "branching", nodes,
                 [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", 8]),
                  helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4])], inits)


def test_a_top_level_if_folds_given_the_scalar_and_its_layers_are_cut_points(tmp_path, zoo_env):
    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.extract import branch_hints, layers, load_extractor

    path = _branching(tmp_path)
    plain = layers(path)
    assert [layer.op_type for layer in plain] == ["Equal", "If", "Sigmoid"]
    assert branch_hints(path) == ["If 'If_0' branches on input sr"]
    folded = {layer.name: layer for layer in layers(path, args={"sr": 16000})}
    assert list(folded) == ["encoder.0", "encoder.1", "head"]  # torch-style scopes group the branch's nodes
    assert all(layer.is_cut_point for layer in folded.values())
    assert [layer.name for layer in layers(path, args={"sr": 8000})] == ["encoder8k", "head"]

    audio = np.random.default_rng(6).standard_normal((5, 8)).astype(np.float32)
    extractor = load_extractor(path, "encoder.0", args={"sr": 16000})
    assert extractor.input_names == ["audio"]
    then = next(a.g for a in onnx.load(path).graph.node[1].attribute if a.name == "then_branch")
    w1 = numpy_helper.to_array(then.initializer[0])
    np.testing.assert_allclose(extractor(audio), np.maximum(audio @ w1, 0), rtol=1e-5)
    np.testing.assert_allclose(extractor(audio=audio, sr=16000), extractor(audio))  # passing it again agrees
    with pytest.raises(InputError, match="sr is baked into this extractor .* as 16000 .* but 8000 was passed"):
        extractor(audio=audio, sr=8000)
    whole = load_extractor(path, -1, args={"sr": 16000})
    np.testing.assert_allclose(whole(audio), _run(path, {"audio": audio, "sr": np.array(16000, np.int64)})[0], rtol=1e-5)

    result = CliRunner().invoke(cli, ["layers", str(path)])
    assert result.exit_code == 0 and "If 'If_0' branches on input sr" in result.stdout
    result = CliRunner().invoke(cli, ["layers", str(path), "--arg", "sr=16000"])
    assert result.exit_code == 0 and "encoder.1" in result.stdout and "sr" not in result.stdout.split("input")[-1]
    np.save(tmp_path / "audio.npy", audio)
    result = CliRunner().invoke(cli, ["extract", str(path), "-l", "encoder.1", "-i", f"audio={tmp_path / 'audio.npy'}",
                                      "-i", "sr=16000", "-o", str(tmp_path / "f.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "f.npy").shape == (5, 4)


def test_an_if_on_a_size_the_graph_fixes_folds_without_being_asked(tmp_path):
    from zoo.extract import layers

    then = helper.make_graph([helper.make_node("Relu", ["x"], ["a"], name="wide/Relu")], "t", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"], name="narrow/Neg")], "e", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
             helper.make_node("Equal", ["width", "eight"], ["wide"]),
             helper.make_node("If", ["wide"], ["y"], name="If_size", then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(np.int64(1), "one"), numpy_helper.from_array(np.int64(8), "eight")]
    path = _save(tmp_path, "size_if", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    assert [layer.op_type for layer in layers(path)] == ["Relu"]
    # The same test on the batch size (a squeeze when N == 1) depends on the input: it stays an If.
    inits[0] = numpy_helper.from_array(np.int64(0), "one")
    path = _save(tmp_path, "batch_if", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    assert "If" in [layer.op_type for layer in layers(path)]


# ---- 5. jax2tf / flax scopes ---------------------------------------------------------------------


def _jax_scoped(tmp_path):
    """A flax-style classifier as jax2tf + tf2onnx name it, with Reshape targets computed from Shape(input)."""
    top = "jax2tf_predict_/pjit_predict_/Classifier"
    nodes = [
        helper.make_node("Shape", ["tokens"], ["shape"], name="jax2tf_predict_/Shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"], name="jax2tf_predict_/strided_slice"),
        helper.make_node("Concat", ["batch", "flat"], ["target"], name=f"{top}/Reshape/shape_Concat__7", axis=0),
        helper.make_node("MatMul", ["tokens", "w0"], ["d0"], name=f"{top}/Dense_0/einsum/Einsum"),
        helper.make_node("Add", ["d0", "b0"], ["d0b"], name=f"{top}/Dense_0/AddV2"),
        helper.make_node("Tanh", ["d0b"], ["act"], name=f"{top}/ApplyActivation_0/Tanh"),
        helper.make_node("ReduceMean", ["act"], ["mu"], name=f"{top}/LayerNorm_0/Mean", axes=[-1]),
        helper.make_node("Sub", ["act", "mu"], ["centred"], name=f"{top}/LayerNorm_0/Sub"),
        helper.make_node("Mul", ["centred", "gamma"], ["normed"], name=f"{top}/LayerNorm_0/Mul"),
        helper.make_node("Reshape", ["normed", "target"], ["flat_out"], name=f"{top}/Reshape"),
        helper.make_node("MatMul", ["flat_out", "w1"], ["logits"], name=f"{top}/Dense_1/MatMul"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="jax2tf_predict_/pjit_predict_/Softmax"),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"), _weights("w0", [6, 5], 7), _weights("b0", [5], 8),
             _weights("gamma", [5], 9), _weights("w1", [20, 3], 10)]
    return _save(tmp_path, "scoped", nodes, [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 4, 6])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])], inits,
                 producer="tf2onnx")


def test_jax2tf_scopes_are_layers_and_cut_points(tmp_path):
    from zoo.extract import layers, load_extractor

    path = _jax_scoped(tmp_path)
    found = layers(path)
    assert [layer.name for layer in found] == ["Dense_0", "ApplyActivation_0", "LayerNorm_0", "Reshape", "Dense_1",
                                               "predict"]
    assert found[0].parameters == 6 * 5 + 5
    # The input also reaches the Reshape through Shape (the batch size): that is no way around the layers.
    assert all(layer.is_cut_point for layer in found)
    x = np.random.default_rng(11).standard_normal((3, 4, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normed = load_extractor(path, "LayerNorm_0")(x)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    act = np.tanh(x @ init["w0"] + init["b0"])
    np.testing.assert_allclose(normed, (act - act.mean(-1, keepdims=True)) * init["gamma"], rtol=1e-5, atol=1e-6)


def test_a_tensor_whose_only_other_reader_is_a_shape_is_a_cut_point(tmp_path):
    from zoo.extract import layers

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape_of_r"),
             helper.make_node("Sigmoid", ["r"], ["g"], name="gate"),
             helper.make_node("Reshape", ["g", "s"], ["y"], name="reshape")]
    path = _save(tmp_path, "shape_reader", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    found = {layer.name: layer for layer in layers(path)}
    assert found["relu"].is_cut_point and found["gate"].is_cut_point


def test_a_fixed_batch_the_graph_depends_on_is_kept(tmp_path):
    """A Reshape target that reaches the node through an Identity pins the batch: no rewrite can free it."""
    from converters.onnx_model import convert, run

    nodes = [helper.make_node("Identity", ["target"], ["pinned"]),
             helper.make_node("Reshape", ["x", "pinned"], ["flat"], name="flat"),
             helper.make_node("Relu", ["flat"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(np.array([1, 12], np.int64), "target")]
    path = _save(tmp_path, "pinned", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])], inits)
    conversion = convert(path)
    assert conversion.report.verified is True
    assert any(n.startswith("batch kept fixed at 1") for n in conversion.report.notes), conversion.report.notes
    assert conversion.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = np.random.default_rng(12).standard_normal((1, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(conversion.model, {"x": x})[1][0], np.maximum(x.reshape(1, 12), 0))
