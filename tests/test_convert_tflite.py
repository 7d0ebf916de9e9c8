"""TFLite: quantized models (three kinds) verified by their own quantization; corrupt files never crash zoo."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.convert import QUANTIZATION_KINDS, build_quantized_tflite, local_model

from zoo.errors import ModelFormatError


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    return build_quantized_tflite(tmp_path_factory.mktemp("quantized"))


def _built_in_another_process(folder: Path, kind: str) -> Path:
    """`build_quantized_tflite` in a fresh Python: a fork of a process in which TFLite's calibration ran
    (full-integer quantization) can die with SIGSEGV, and `convert_tflite` forks its interpreter child.
    `zoo.convert` never meets that (its converter is a fork of a zygote that ran no graph)."""
    import sys

    code = ("import sys; from pathlib import Path; from helpers.convert import build_quantized_tflite; "
            "print(build_quantized_tflite(Path(sys.argv[1]), sys.argv[2]))")
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [tests, os.environ.get("PYTHONPATH", "")] if p)}
    done = subprocess.run([sys.executable, "-c", code, str(folder), kind], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def hostile(tf_models, tmp_path) -> dict[str, Path]:
    """A real model cut short (as by an interrupted download) and a file that only starts like one."""
    data = Path(tf_models["tflite"]).read_bytes()
    files = {"truncated": tmp_path / "truncated.tflite", "fake": tmp_path / "fake.tflite"}
    files["truncated"].write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    files["fake"].write_bytes(b"\x1c\x00\x00\x00TFL3" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return files


# ---- quantized models --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", QUANTIZATION_KINDS)
def test_each_kind_of_quantized_tflite_is_verified_by_its_own_quantization(kind, tmp_path):
    from converters import tensorflow as ct
    from converters.quantization import NOISE_FACTOR
    from converters.report import DEFAULT_RTOL, ConversionReport

    report = ct.convert_tflite(_built_in_another_process(tmp_path, kind)).report
    (diff,) = report.outputs
    # The float tolerance would refuse each of them: TFLite's int8 and hybrid kernels round
    # differently from onnxruntime (and quantize activations the ONNX graph keeps float).
    assert diff.max_rel > DEFAULT_RTOL
    assert report.verified is True, report.quantization
    expected = "dynamic-range" if kind == "dynamic-range" else "full-integer"
    assert report.quantization["kind"] == expected
    (out,) = report.quantization["outputs"]
    assert out["within"] is True and out["argmax_agree"] == "2/2"
    assert out["noise"] is not None and out["tolerance_abs"] >= NOISE_FACTOR * out["noise"]
    assert diff.max_abs <= out["tolerance_abs"]
    if kind == "int8-io":  # an int8 output: its own steps, never less than 4 of them
        assert out["scale"] == 1.0 and out["tolerance_abs"] >= 4
    assert any(note.startswith(f"{expected} model checked against its own quantization") for note in report.notes)
    assert ConversionReport.from_dict(report.to_dict()).quantization == report.quantization


@pytest.mark.slow
def test_int8_tflite_through_the_catalog_and_info(quantized, zoo_env):
    import zoo
    from zoo.catalog import open_catalog

    cat = open_catalog()
    cat.add_model(local_model("tiny.int8", "tflite", quantized, fmt="tflite"))
    artifact = zoo.convert("tiny.int8")
    stored = cat.get("tiny.int8").artifact("onnx").meta["report"]
    assert artifact.meta["verified"] is True and stored["quantization"]["outputs"][0]["within"] is True
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["convert", "tiny.int8"])
    assert result.exit_code == 0 and "(full-integer model: largest difference" in result.stdout
    assert "input layout" in result.stdout
    result = CliRunner().invoke(cli, ["info", "tiny.int8"])
    assert "verified:   yes" in result.stdout
    assert "full-integer model checked against its own quantization" in result.stdout


def test_quantized_verdict_refuses_more_than_its_noise_and_another_top_class():
    from converters.quantization import NOISE_FACTOR, QUANTIZED_LSB, verify_quantized
    from converters.report import ConversionReport, compare_outputs

    noise = 0.01
    reference = np.array([[0.50, 0.20, 0.10], [0.30, 0.295, 0.0]], dtype="float32")

    def verdict(converted: np.ndarray, steps=(None,)) -> ConversionReport:
        report = ConversionReport(source_format="tflite")
        report.outputs = compare_outputs(["logits"], [reference], [converted])
        verify_quantized(report, [reference], [converted], steps, [noise], "dynamic-range")
        return report

    assert verdict(reference + 2 * noise).verified is True
    refused = verdict(reference + (NOISE_FACTOR + 0.5) * noise)
    assert refused.verified is False
    # The note follows the outcome: never "verified" beside a refusal.
    assert "NOT within the tolerance its own quantization allows" in refused.notes[-1]
    assert "checked against its own quantization" not in refused.notes[-1]
    # A quantized output's own steps can allow more than its noise
    assert verdict(reference + (NOISE_FACTOR + 0.5) * noise, steps=(0.01,)).verified is True
    assert verdict(reference + (QUANTIZED_LSB + 0.5) * 0.01, steps=(0.01,)).verified is False
    flipped = reference.copy()
    flipped[1] = [0.295, 0.30, 0.0]  # the second row's two best are half a noise apart: a tie
    report = verdict(flipped)
    assert report.verified is True and report.quantization["outputs"][0]["argmax_ties"] == 1
    flipped[0] = [0.20, 0.23, 0.10]  # the first row's winner changes: another class
    report = verdict(flipped)
    assert report.verified is False and report.quantization["outputs"][0]["argmax_agree"] == "0/2"


def test_float_reference_removes_activation_quantization_only():
    """The dequantized float form keeps int8 weights dequantized and drops the activations' Q/DQ."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converters.onnx_model import run
    from converters.quantization import float_reference, hybrid_emulation, noise, quantization_kind

    weights = np.array([[3, -2], [1, 4]], np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weights, "w_q"), numpy_helper.from_array(np.float32(0.5), "w_scale"),
             numpy_helper.from_array(np.float32(0.25), "x_scale"), numpy_helper.from_array(np.int8(0), "x_zero")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = np.array([[0.1, 0.37]], np.float32)
    assert quantization_kind(model) == "full-integer"
    (exact,) = run(float_reference(model), {"x": x}, optimize=False)[1]
    np.testing.assert_allclose(exact, x @ (weights * 0.5), rtol=1e-6)  # x no longer rounded to 0.25 steps
    (rounded,) = run(model, {"x": x}, optimize=False)[1]
    np.testing.assert_allclose(noise(model, {"x": x}), [np.abs(rounded - exact).max()], rtol=1e-6)
    # Without the activation Q/DQ it is a dynamic-range graph; the emulation quantizes x on the fly.
    del model.graph.node[1:3]
    model.graph.node[-1].input[0] = "x"
    assert quantization_kind(model) == "dynamic-range"
    emulated = hybrid_emulation(model)
    assert [n.op_type for n in emulated.graph.node].count("DynamicQuantizeLinear") == 1
    assert noise(model, {"x": x})[0] > 0


# ---- corrupt files -----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_truncation_is_refused_without_tensorflow(tf_models):
    from zoo.tflite_structure import validate_tflite

    good = Path(tf_models["tflite"])
    summary = validate_tflite(good)
    assert summary["subgraphs"] == 1 and summary["operators"] > 0
    data = good.read_bytes()
    scratch = good.with_name("cut.tflite")
    for cut in range(8, len(data), max(1, len(data) // 400)):
        scratch.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="is not a valid TFLite model"):
            validate_tflite(scratch)
    scratch.unlink()


@pytest.mark.slow
def test_an_interpreter_crash_in_the_child_is_an_error(hostile, tf_models, tmp_path):
    """Without the structural check, the truncated file does kill the interpreter: only its child dies."""
    import json

    from converters.tflite_check import _spawned, run_interpreter

    # The interpreter reads past the end of the mapped file: what lies there depends on the address
    # layout (ASLR), so it usually dies (SIGSEGV/SIGBUS) and sometimes reads garbage and says so.
    crashed_or_refused = r"crashed \(SIG[A-Z]+\).*child process|the TFLite interpreter cannot load or run it"
    with pytest.raises(ModelFormatError, match=crashed_or_refused):
        run_interpreter(hostile["truncated"])  # a fork of this process
    good = run_interpreter(tf_models["tflite"])
    (values,) = good["values"].values()
    assert values.shape == (2, 3) and good["quantized"] is False
    # Where there is no fork, a new Python process: the same verdicts.
    failure = _spawned(str(hostile["truncated"]), str(tmp_path / "bad"), 0, 300)
    assert failure is not None and failure.startswith(("the TFLite interpreter crashed (SIG",
                                                       "the TFLite interpreter cannot load or run it"))
    assert _spawned(str(tf_models["tflite"]), str(tmp_path / "good"), 0, 300) is None
    assert json.loads((tmp_path / "good.json").read_text())["outputs"][0]["name"] in good["values"]


@pytest.mark.slow
def test_cli_convert_layers_and_add_of_corrupt_tflite_exit_1(hostile, zoo_cmd, zoo_env):
    from zoo.catalog import open_catalog

    cat = open_catalog()
    for kind, path in hostile.items():
        cat.add_model(local_model(f"{kind}.tflite", "tflite", path, fmt="tflite"))
    commands = [["convert", str(hostile["truncated"])], ["add", str(hostile["fake"])],
                ["convert", "truncated.tflite"], ["layers", "fake.tflite"]]
    for command in commands:
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=300,
                             check=False, env={**os.environ})
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1, (command, out.returncode, out.stderr[-2000:])
        assert lines[-1].startswith("error: ") and "not a valid TFLite model" in lines[-1]
        assert "Traceback" not in out.stderr
    assert not cat.exists("truncated")  # `zoo convert PATH` adopted nothing


# ---- custom ops that are built-ins in disguise ------------------------------------------------


def _as_mediapipe_transpose_conv(path, out):
    """Rewrite a model's TRANSPOSE_CONV (with bias) as MediaPipe's Convolution2DTransposeBias custom op."""
    import struct

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = b"Convolution2DTransposeBias"
    code.version = 1
    model.operatorCodes.append(code)
    rewritten = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            kind = model.operatorCodes[op.opcodeIndex]
            if max(kind.builtinCode, kind.deprecatedBuiltinCode) != schema.BuiltinOperator.TRANSPOSE_CONV:
                continue
            options = op.builtinOptions
            padding = 1 if options.padding == schema.Padding.SAME else 2
            if len(op.inputs) < 4 or op.inputs[3] < 0:  # no bias input: the custom op needs one
                channels = int(graph.tensors[op.outputs[0]].shape[-1])
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(np.full(channels, 0.25, np.float32).tobytes(), np.uint8)
                model.buffers.append(buffer)
                bias = schema.TensorT()
                bias.shape, bias.type = np.asarray([channels], np.int32), schema.TensorType.FLOAT32
                bias.buffer, bias.name = len(model.buffers) - 1, b"up/bias"
                graph.tensors.append(bias)
                op.inputs = np.asarray([*op.inputs[:3], len(graph.tensors) - 1], np.int32)
            op.inputs = np.asarray([op.inputs[2], op.inputs[1], op.inputs[3]], np.int32)
            op.opcodeIndex = len(model.operatorCodes) - 1
            op.builtinOptionsType, op.builtinOptions = 0, None
            op.customOptions = np.frombuffer(struct.pack("<iii", padding, options.strideW, options.strideH), np.uint8)
            rewritten += 1
    assert rewritten == 1
    flatbuffer_utils.write_model(model, str(out))


@pytest.mark.slow
def test_a_custom_op_that_is_a_builtin_in_disguise_is_rewritten_and_verified(tmp_path):
    import keras
    import tensorflow as tf

    from converters import tensorflow as ct

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Conv2DTranspose(2, 2, strides=2, padding="same", name="up")(x)
    builtin = tmp_path / "builtin.tflite"
    builtin.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert())
    custom = tmp_path / "custom.tflite"
    _as_mediapipe_transpose_conv(builtin, custom)
    conversion = ct.convert_tflite(custom)
    assert conversion.report.verified is True, conversion.report.describe_unverified()
    assert any("(Convolution2DTransposeBias) rewritten for tf2onnx" in n for n in conversion.report.notes)
    assert "ConvTranspose" in {n.op_type for n in conversion.model.graph.node}


@pytest.mark.slow
def test_sparse_weights_are_made_dense_for_tf2onnx(tmp_path):
    """A pruned conv stored sparse (TFLite DENSIFY): tf2onnx alone fails to reshape its values."""
    import keras
    import tensorflow as tf

    from converters import tensorflow as ct
    from converters.tflite_rewrite import densify

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 8))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, name="head")(keras.layers.Conv2D(16, 1, name="pruned")(inp)))
    weights, bias = model.get_layer("pruned").get_weights()
    weights[np.random.default_rng(0).random(weights.shape) < 0.8] = 0
    model.get_layer("pruned").set_weights([weights, bias])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path = tmp_path / "sparse.tflite"
    path.write_bytes(converter.convert())
    conversion = ct.convert_tflite(path)
    assert conversion.report.verified is True, conversion.report.describe_unverified()
    assert any("(DENSIFY) rewritten for tf2onnx" in n for n in conversion.report.notes), conversion.report.notes
    # The expansion itself: a 2 x 3 matrix with its rows dense and its columns stored sparse.
    dense = densify(np.array([5.0, 7.0, 9.0], np.float32), [2, 3], [0, 1],
                    [("dense", 2), ("sparse", [0, 2, 3], [0, 2, 1])])
    np.testing.assert_array_equal(dense, [[5, 0, 7], [0, 9, 0]])
