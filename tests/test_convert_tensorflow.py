"""TensorFlow conversions (SavedModel, Keras, frozen graph, TFLite), each compared with TensorFlow itself."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.errors import ModelFormatError, UnsupportedLayerError

pytestmark = pytest.mark.slow  # TensorFlow takes seconds to start; the models are shared per session


def _batch_is_dynamic(model) -> bool:
    return all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in model.graph.input) and all(
        o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in model.graph.output)


def _assert_verified(conversion, outputs: int | None = None):
    report = conversion.report
    assert report.verified is True, report.outputs
    assert report.outputs and all(o.max_rel <= report.tolerance for o in report.outputs)
    assert all(o.shape[0] == 2 for o in report.outputs)  # compared at batch 2
    if outputs is not None:
        assert len(report.outputs) == outputs
    assert _batch_is_dynamic(conversion.model)
    assert report.source_files and all(len(h) == 64 for h in report.source_files.values())
    assert {"tensorflow", "tf2onnx", "onnxruntime"} <= set(report.versions)


def _run(model, feeds):
    from converters.onnx_model import run

    return run(model, feeds)[1]


def test_keras_functional_keeps_layer_names_and_matches_keras(tf_models):
    import keras

    from converters import tensorflow as ct

    conversion = ct.convert_keras(tf_models["keras"])
    _assert_verified(conversion, outputs=1)
    model = conversion.model
    assert conversion.report.input_layout == "NHWC"
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["predictions"]
    layers = json.loads({p.key: p.value for p in model.metadata_props}["zoo:layers"])
    produced = {o for n in model.graph.node for o in n.output}
    for name in ("conv5_block3_out", "block4_pool", "block5_conv1", "avg_pool"):
        assert layers[name] in ("same", "NCHW") and name in produced, layers
    # The renamed tensors hold the Keras layers' values (block4_pool is channels-first in ONNX).
    import onnx

    source = keras.models.load_model(tf_models["keras"], compile=False)
    x = np.random.default_rng(5).standard_normal((3, 32, 32, 3)).astype("float32")
    cut = onnx.utils.Extractor(model).extract_model(["image"], ["block4_pool", "avg_pool"])
    pool, avg = _run(cut, {"image": x})
    probe = keras.Model(source.inputs, [source.get_layer("block4_pool").output, source.get_layer("avg_pool").output])
    want_pool, want_avg = (t.numpy() for t in probe(x))
    if layers["block4_pool"] == "NCHW":
        pool = pool.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(pool, want_pool, atol=1e-5)
    np.testing.assert_allclose(avg, want_avg, atol=1e-5)


def test_keras_h5_with_nchw_inputs(tf_models):
    from converters import tensorflow as ct

    conversion = ct.convert_keras(tf_models["h5"], nchw=True)
    _assert_verified(conversion)
    dims = [d.dim_value for d in conversion.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 32, 32] and conversion.report.input_layout == "NCHW"


def test_keras_sequential(tf_models):
    from converters import tensorflow as ct

    conversion = ct.convert_keras(tf_models["sequential"])
    _assert_verified(conversion, outputs=1)
    assert conversion.report.input_layout == "NC"
    assert "hidden" in {o for n in conversion.model.graph.node for o in n.output}


def test_keras_application_from_weights_only_h5(tf_models):
    from converters import tensorflow as ct

    path, options = tf_models["application"], tf_models["application_options"]
    assert ct.is_weights_only(path)
    conversion = ct.convert_keras(path, architecture="MobileNet", options=options)
    _assert_verified(conversion, outputs=1)
    layers = json.loads({p.key: p.value for p in conversion.model.metadata_props}["zoo:layers"])
    assert layers["conv_pw_13_relu"] in ("same", "NCHW")
    folder = path.parent
    name = conversion.model.graph.input[0].name
    (got,) = _run(conversion.model, {name: np.load(folder / "mobilenet_probe_in.npy")})
    np.testing.assert_allclose(got, np.load(folder / "mobilenet_probe_out.npy"), atol=1e-5)
    with pytest.raises(ModelFormatError, match="holds only weights"):
        ct.convert_keras(path)
    with pytest.raises(ModelFormatError, match="not a Keras Applications architecture"):
        ct.convert_keras(path, architecture="ResNet9000")
    with pytest.raises(ModelFormatError, match="does not hold MobileNetV2 weights"):
        ct.convert_keras(path, architecture="MobileNetV2", options=options)


def test_saved_model_custom_signature(tf_models):
    from converters import tensorflow as ct

    path = tf_models["saved_model"]
    assert ct.saved_model_signatures(path) == {"serve": ["embed"]}
    with pytest.raises(ModelFormatError, match=r"no signature 'serving_default'.*it has embed"):
        ct.convert_saved_model(path)
    with pytest.raises(ModelFormatError, match=r"no MetaGraph with tags 'train'.*tags \[serve\]"):
        ct.convert_saved_model(path, tag="train", signature="embed")
    conversion = ct.convert_saved_model(path, signature="embed")
    _assert_verified(conversion, outputs=2)
    assert sorted(o.name for o in conversion.model.graph.output) == ["embedding", "norm"]
    assert [i.name for i in conversion.model.graph.input] == ["tokens"]
    assert any("encoder" in n.name for n in conversion.model.graph.node)  # TF op scopes survive


def test_saved_model_with_optimizer_slots_converts_both_ways(tf_models):
    """A TF1 SavedModel with Adam slots: through tf.saved_model.load, and through the TF1 loader."""
    from converters import tensorflow as ct

    path = tf_models["saved_model_adam"]
    for loader in ("auto", "v1"):
        conversion = ct.convert_saved_model(path, loader=loader)
        _assert_verified(conversion, outputs=1)
        assert [o.name for o in conversion.model.graph.output] == ["scores"]
        assert [i.name for i in conversion.model.graph.input] == ["features"]
    assert "TF1 loader" in " ".join(conversion.report.notes)
    # Trained weights, not the initial ones: the outputs are not all zero.
    assert conversion.report.outputs[0].scale > 0


def test_saved_model_that_tf_saved_model_load_rejects(tf_models):
    """Optimizer slot variables whose optimizer cannot be revived: v2 fails, auto converts."""
    import tempfile
    from pathlib import Path

    from converters import tensorflow as ct
    from zoo.errors import ConversionError

    path = tf_models["saved_model_slots"]
    before = set(Path(tempfile.gettempdir()).glob("zoo-savedmodel-*"))
    with pytest.raises(ConversionError, match="add_slot"):
        ct.convert_saved_model(path, loader="v2")
    conversion = ct.convert_saved_model(path)
    _assert_verified(conversion, outputs=1)
    assert "without its optimizer slot variables" in " ".join(conversion.report.notes)
    # The trained weights were restored: the output matches the one computed before saving.
    probe = np.arange(8, dtype="float32").reshape(2, 4) / 8
    (got,) = _run(conversion.model, {"x": probe})
    np.testing.assert_allclose(got, np.load(path.parent / "slots_probe_out.npy"), atol=1e-6)
    # The temporary slot-free copy is gone; the original still carries its slots.
    assert set(Path(tempfile.gettempdir()).glob("zoo-savedmodel-*")) == before
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    assert sum(len(n.slot_variables) for n in proto.meta_graphs[0].object_graph_def.nodes) == 2


def test_frozen_graph_detects_and_overrides_io(tf_models):
    from converters import tensorflow as ct

    path = tf_models["frozen"]
    conversion = ct.convert_frozen_graph(path)
    _assert_verified(conversion, outputs=1)
    assert [i.name for i in conversion.model.graph.input] == ["input"]
    # Cut at an inner tensor by naming it as the output.
    inner = next(n.name for n in conversion.model.graph.node if n.name.startswith("features/"))
    assert inner
    override = ct.convert_frozen_graph(path, inputs=["input"], outputs=["features/Relu"])
    _assert_verified(override, outputs=1)
    assert override.report.outputs[0].shape == [2, 16, 16, 4]
    with pytest.raises(ModelFormatError, match="'nope:0' is not in"):
        ct.convert_frozen_graph(path, outputs=["nope"])


def test_tflite(tf_models):
    from converters import tensorflow as ct

    conversion = ct.convert_tflite(tf_models["tflite"])
    _assert_verified(conversion, outputs=1)
    assert conversion.report.reference.startswith("tflite interpreter")


def test_files_that_are_not_their_format(tf_models, tmp_path):
    from converters import tensorflow as ct

    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        ct.convert_tflite(tf_models["frozen"])
    with pytest.raises(ModelFormatError, match="not a frozen TensorFlow GraphDef"):
        ct.convert_frozen_graph(tf_models["keras"])
    with pytest.raises(ModelFormatError, match="give the folder instead"):
        ct.convert_frozen_graph(tf_models["saved_model"] / "saved_model.pb")
    with pytest.raises(ModelFormatError, match="not a TensorFlow SavedModel"):
        ct.convert_saved_model(tmp_path)
    with pytest.raises(ModelFormatError, match="not a Keras model"):
        ct.convert_keras(tf_models["tflite"])
    assert ct.detect_format(tf_models["tflite"]) == "tflite"
    assert ct.detect_format(tf_models["saved_model"]) == "saved_model"
    assert ct.detect_format(tf_models["h5"]) == "keras"


def test_ops_without_onnx_mapping_are_named(tmp_path):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from converters import tensorflow as ct

    def freeze(fn, name):
        spec = [tf.TensorSpec([None, 4], tf.float32, name="x")]
        graph = convert_variables_to_constants_v2(tf.function(fn, input_signature=spec).get_concrete_function())
        path = tmp_path / name
        path.write_bytes(graph.graph.as_graph_def().SerializeToString())
        return path

    with pytest.raises(UnsupportedLayerError, match=r"'Lgamma'.*no ONNX mapping for it at any opset"):
        ct.convert_frozen_graph(freeze(lambda x: tf.math.lgamma(x), "lgamma.pb"))
    w = tf.constant(np.ones((4, 3), "float32"))
    with pytest.raises(UnsupportedLayerError, match=r"'Einsum'.*retry with --opset 12"):
        ct.convert_frozen_graph(freeze(lambda x: tf.einsum("bi,ij->bj", x, w), "einsum.pb"), opset=11)


def test_corrupt_frozen_graphs_are_one_line_errors(tmp_path, zoo_cmd, zoo_env):
    """Constants whose bytes do not match their shape or dtype: an error naming the file, no traceback."""
    import os
    import subprocess

    import tensorflow as tf

    paths = []
    for case in ("short", "dtype"):
        graph = tf.compat.v1.GraphDef()
        x = graph.node.add(name="x", op="Placeholder")
        x.attr["dtype"].type = 1
        const = graph.node.add(name="w", op="Const")
        const.attr["dtype"].type = 1
        tensor = const.attr["value"].tensor
        tensor.dtype = 1 if case == "short" else 99
        tensor.tensor_shape.dim.add().size = 1000 if case == "short" else 2
        tensor.tensor_content = b"\0" * 8
        add = graph.node.add(name="y", op="AddV2", input=["x", "w"])
        add.attr["T"].type = 1
        paths.append(tmp_path / f"{case}.pb")
        paths[-1].write_bytes(graph.SerializeToString())
    for path in paths:
        out = subprocess.run([*zoo_cmd, "convert", str(path)], capture_output=True, text=True, timeout=300,
                             check=False, env={**os.environ})
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 1 and last.startswith("error: ") and str(path) in last, out.stderr[-1500:]
        assert "Traceback" not in out.stderr
