"""Layers, cuts, extractors and the sklearn transformer, checked against onnx's own extract_model + onnxruntime."""
from __future__ import annotations

import json
import os
import pickle
import sqlite3  # noqa: F401  bind the system SQLite (with FTS5) before tensorflow loads its own
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers.extract import light_path, randomized, run_onnx, save_randomized, save_tiny, tiny_resnet
from zoo.errors import ConversionError, InputError, UnknownLayerError, ZooError
from zoo.options import ExtractorOptions


@pytest.fixture(scope="module")
def light_dir(tmp_path_factory):
    """Randomized copies of the light models, written once for the module."""
    return tmp_path_factory.mktemp("light")


def _light(light_dir, name):
    path = light_dir / f"{name}.onnx"
    if not path.exists():
        save_randomized(name, light_dir)
    return path


def _images(n, seed=0, shape=(3, 224, 224)):
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


# --- layers and cut points ------------------------------------------------------------------

def test_resnet50_layers_names_shapes_params_and_cut_points():
    import onnx

    from zoo.extract import layers

    found = layers(light_path("resnet50"))
    by_name = {layer.name: layer for layer in found}
    # onnx-caffe2 names nodes n0..; the Caffe layer names come back from the weight names.
    assert found[0].name == "conv1" and found[0].op_type == "Conv"
    assert found[0].parameters == 64 * 3 * 7 * 7
    assert found[0].shape == [None, 64, 112, 112]
    assert found[-2].name == "pred" and found[-2].parameters == 2048 * 1000 + 1000
    assert found[-1].op_type == "Softmax" and found[-1].shape == [None, 1000]
    # Every weight is counted once, in the layer that uses it.
    model = onnx.load(light_path("resnet50"))
    weights = {n.output[0] for n in model.graph.node if n.op_type == "ConstantOfShape"}
    assert sum(layer.parameters for layer in found) > 25_000_000
    assert len(weights) > 200
    # Inside a residual block nothing separates the graph; the block's output (Sum -> Relu) does.
    inner = by_name["res2_0_branch2a"]
    assert inner.op_type == "Conv" and not inner.is_cut_point
    block_out = next(layer for layer in found if layer.op_type == "Relu" and layer.index > inner.index
                     and found[layer.index - 1].op_type == "Sum")
    assert block_out.is_cut_point
    assert found[layer_index(found, "Sum")].is_cut_point  # the sum itself is too
    assert by_name["pred"].is_cut_point and found[-3].is_cut_point
    # No shape arithmetic or constant nodes are layers.
    assert {layer.op_type for layer in found} <= {
        "Conv", "BatchNormalization", "Relu", "MaxPool", "Sum", "AveragePool", "Reshape", "Gemm", "Softmax"}


def layer_index(found, op):
    return next(layer.index for layer in found if layer.op_type == op)


def test_squeezenet_fire_branches_are_not_cut_points_and_concat_is():
    from zoo.extract import layers

    found = layers(light_path("squeezenet"))
    by_name = {layer.name: layer for layer in found}
    assert not by_name["fire2/expand1x1"].is_cut_point
    assert not by_name["fire2/expand3x3"].is_cut_point
    assert by_name["fire2/squeeze1x1"].is_cut_point
    concat = next(layer for layer in found if layer.op_type == "Concat")
    assert concat.is_cut_point and concat.shape == [None, 128, 55, 55]


def test_inception_branches_and_alexnet_chain():
    from zoo.extract import layers

    inception = layers(light_path("inception_v1"))
    names = {layer.name: layer for layer in inception}
    assert not names["inception_3a/3x3"].is_cut_point
    assert names["conv2/3x3"].is_cut_point
    alexnet = layers(light_path("bvlc_alexnet"))
    # A plain chain: every layer is a cut point.
    assert all(layer.is_cut_point for layer in alexnet)
    assert [layer.name for layer in alexnet if layer.op_type == "Gemm"] == ["fc6", "fc7", "fc8"]


# --- cutting --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,picks", [
    ("squeezenet", ["fire5/expand3x3", "fire9/squeeze1x1", -3]),
    ("resnet50", ["res2_1_branch2b", "res3_0_branch1"]),
    ("inception_v1", ["inception_3b/5x5", -4]),
    pytest.param("bvlc_alexnet", ["fc7", "conv3"], marks=pytest.mark.slow),  # 60M weights
])
def test_cut_matches_onnx_extract_model(light_dir, tmp_path, name, picks):
    import onnx
    from onnx.utils import extract_model

    from zoo.graph import GraphInfo, cut, list_layers, resolve

    path = _light(light_dir, name)
    model = onnx.load(path)
    info = GraphInfo(model)
    found = resolve(list_layers(model, info), picks, name, info)
    outputs = [layer.output for layer in found]
    sub = cut(model, outputs, info)
    onnx.checker.check_model(sub)
    assert [o.name for o in sub.graph.output] == outputs
    assert len(sub.graph.node) < len(model.graph.node)
    # extract_model drops initializers from the inputs, which IR 3 forbids: give it an IR 4 copy.
    modern = _ir4(model, tmp_path / "ir4.onnx")
    reference = tmp_path / "reference.onnx"
    extract_model(str(modern), str(reference), [info.inputs[0]], outputs)
    x = _images(1, seed=3)
    ours = run_onnx(sub, {info.inputs[0]: x})
    theirs = run_onnx(reference, {info.inputs[0]: x})
    for a, b, layer in zip(ours, theirs, found):
        assert a.shape == b.shape
        assert list(a.shape[1:]) == layer.shape[1:]
        assert a.std() > 0  # random weights: a wrong tensor would not match
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Output value_info carries the shape inference gave.
    dims = [d.dim_value for d in sub.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == found[0].shape[1:]


def _ir4(model, path):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {t.name for t in copy.graph.initializer}
    kept = [i for i in copy.graph.input if i.name not in inits]
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    copy.ir_version = max(copy.ir_version, 4)
    onnx.save(copy, path)
    return path


def test_cut_keeps_dynamic_batch_and_only_needed_nodes(tmp_path):
    import onnx

    from zoo.graph import cut

    model = tiny_resnet("batch_size")
    sub = cut(model, ["block_a"])
    assert [n.name for n in sub.graph.node] == ["stem", "stem_relu", "block_a"]
    assert {t.name for t in sub.graph.initializer} == {"stem_w", "stem_b", "a_w"}
    dims = sub.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch_size" and [d.dim_value for d in dims[1:]] == [6, 8, 8]
    onnx.checker.check_model(sub)
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    (got,) = run_onnx(sub, {"x": x})
    (want,) = run_onnx(_with_output(model, "block_a"), {"x": x}, ["block_a"])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(UnknownLayerError):
        cut(model, ["nope"])


def _with_output(model, name):
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def test_fixed_batch_is_made_dynamic_and_checked(light_dir):
    import onnx

    from zoo.graph import batch_dim, make_batch_dynamic

    # inception_v1 flattens with Reshape(shape=[1, 1024]) before its classifier.
    model = onnx.load(_light(light_dir, "inception_v1"))
    assert batch_dim(model) == 1
    dynamic = make_batch_dynamic(model)
    assert dynamic is not None and batch_dim(dynamic) == "batch"
    x = _images(2, seed=1)
    (together,) = run_onnx(dynamic, {"data_0": x})
    one_by_one = np.concatenate([run_onnx(model, {"data_0": x[i:i + 1]})[0] for i in range(2)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-7)
    # A graph that pins the batch another way (Expand to a constant shape) is left alone.
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "pinned", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.array([2, 4], np.int64), "shape")],
    )
    pinned = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert make_batch_dynamic(pinned) is None
    # Unproven, as converters ask for it (their verification on batch 2 proves it instead).
    notes: list[str] = []
    unproven = make_batch_dynamic(pinned, check=False, notes=notes)
    assert batch_dim(unproven) == "batch" and notes == ["batch dimension was fixed at [2]; made dynamic"]
    assert unproven.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# --- resolving layer specs --------------------------------------------------------------------

def test_layer_specs_by_name_position_list_and_errors():
    from zoo.graph import list_layers, resolve

    found = list_layers(tiny_resnet())
    names = [layer.name for layer in found]
    assert names == ["stem", "stem_relu", "block_a", "block_a_relu", "block_b", "add", "block_out",
                     "pool", "flat", "fc", "prob"]
    assert [layer.name for layer in resolve(found, -1, "tiny")] == ["prob"]
    assert [layer.name for layer in resolve(found, -2, "tiny")] == ["fc"]
    assert [layer.name for layer in resolve(found, "3", "tiny")] == ["block_a_relu"]
    assert [layer.name for layer in resolve(found, ["pool", -2, "pool"], "tiny")] == ["pool", "fc"]
    with pytest.raises(UnknownLayerError) as err:
        resolve(found, "blok_a", "tiny")
    message = str(err.value)
    assert "'blok_a' is not in tiny" in message and "block_a" in message and "`zoo layers tiny`" in message
    with pytest.raises(UnknownLayerError, match=r"position 11 is out of range .* 11 layers"):
        resolve(found, 11, "tiny")
    with pytest.raises(UnknownLayerError, match="position -12"):
        resolve(found, -12, "tiny")
    with pytest.raises(UnknownLayerError, match="no layer given"):
        resolve(found, [], "tiny")
    assert {layer.name for layer in found if layer.is_cut_point} == {
        "stem", "stem_relu", "add", "block_out", "pool", "flat", "fc", "prob"}
    from zoo.graph import GraphInfo

    info = GraphInfo(tiny_resnet())
    with pytest.raises(UnknownLayerError, match=r"'a_w' in tiny is a weight \(constant\).*pick a layer"):
        resolve(found, "a_w", "tiny", info)


def test_macs_count_conv_and_gemm_from_shapes():
    from zoo.graph import cut, macs

    model = tiny_resnet()
    # 8x8x6 outputs per conv: stem sums 3x3x3 inputs, the block convs 6x3x3; fc is 6 x 4.
    assert macs(model) == 384 * 27 + 2 * 384 * 54 + 6 * 4
    assert macs(cut(model, ["block_a"])) == 384 * 27 + 384 * 54


def test_a_cut_that_needs_two_inputs_takes_them_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from zoo.extract import load_extractor

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["rx"], name="relu_x"),
         helper.make_node("Add", ["rx", "y"], ["sum"], name="add")],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    y = np.array([[1.0, 2.0, 3.0]], np.float32)
    both = load_extractor(path, "add")
    assert both.input_names == ["x", "y"]
    np.testing.assert_array_equal(both(x=x, y=y), np.maximum(x, 0) + y)
    np.testing.assert_array_equal(both({"x": x, "y": y}), np.maximum(x, 0) + y)
    with pytest.raises(InputError, match=r"missing input\(s\) y: .* needs x float32 \(N, 3\), y float32 \(N, 3\)"):
        both(x)
    import warnings

    with warnings.catch_warnings():  # y is another input, not a path around relu_x: x has no way past it
        warnings.simplefilter("error")
        extractor = load_extractor(path, "relu_x")
    np.testing.assert_array_equal(extractor(x), np.maximum(x, 0))


# --- the extractor ------------------------------------------------------------------------------

def test_extractor_matches_reference_and_batches(light_dir, tmp_path):
    from onnx.utils import extract_model

    from zoo.extract import load_extractor

    path = _light(light_dir, "squeezenet")
    extractor = load_extractor(path, -4, options=ExtractorOptions(batch_size=2))
    assert extractor.layer == "conv10"
    x = _images(5, seed=2)
    features = extractor(x)
    reference = tmp_path / "ref.onnx"
    out = extractor.meta.outputs[0]
    import onnx

    extract_model(str(_ir4(onnx.load(path), tmp_path / "ir4.onnx")), str(reference), ["data_0"], [out])
    want = np.concatenate([run_onnx(reference, {"data_0": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)
    assert extractor.output_shape == (None, *want.shape[1:])
    assert extractor.input_spec.shape == [None, 3, 224, 224] and extractor.input_spec.layout == "NCHW"
    assert extractor.meta.fixed_batch is None  # the batch-1 export was made dynamic
    assert len(extractor(x[:0])) == 0


def test_several_layers_give_a_dict(tmp_path):
    from zoo.extract import load_extractor

    extractor = load_extractor(save_tiny(tmp_path), ["block_a", "pool", -2])
    assert extractor.layer == ["block_a", "pool", "fc"]
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = extractor(x)
    assert list(out) == ["block_a", "pool", "fc"]
    assert out["block_a"].shape == (3, 6, 8, 8) and out["pool"].shape == (3, 6, 1, 1) and out["fc"].shape == (3, 4)
    assert extractor.output_shape == {"block_a": (None, 6, 8, 8), "pool": (None, 6, 1, 1), "fc": (None, 4)}
    model = tiny_resnet()
    for name in out:
        (want,) = run_onnx(_with_output(model, name), {"x": x}, [name])
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6)


def test_fixed_batch_graph_is_fed_full_padded_batches(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from zoo.extract import load_extractor

    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="expand"),
         helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "pinned", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.array([2, 4], np.int64), "shape")],
    )
    path = tmp_path / "pinned.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    extractor = load_extractor(path, -1, options=ExtractorOptions(batch_size=64))
    assert extractor.meta.fixed_batch == 2
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(extractor(x), np.maximum(x, 0))
    assert extractor(x[:0]).shape == (0, 4)


def test_wrong_input_shape_and_dtype_say_what_was_expected(tmp_path):
    from zoo.extract import load_extractor

    extractor = load_extractor(save_tiny(tmp_path), "pool")
    with pytest.raises(InputError, match=r"shape \(2, 3, 9, 8\).*expects \(N, 3, 8, 8\) in NCHW"):
        extractor(np.zeros((2, 3, 9, 8), np.float32))
    with pytest.raises(InputError, match=r"add a batch axis"):
        extractor(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"dtype int64.*float32.*astype"):
        extractor(np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(InputError, match="dtype <U1"):
        extractor(np.array([["a"]]))
    # Other float precisions are cast, not refused.
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    np.testing.assert_allclose(extractor(x), extractor(x.astype(np.float32)), rtol=1e-6)


def test_non_cut_point_warns_but_still_cuts(light_dir):
    from zoo.extract import load_extractor

    path = _light(light_dir, "resnet50")
    with pytest.warns(UserWarning, match="'res2_0_branch2a' .* is not a cut point"):
        extractor = load_extractor(path, "res2_0_branch2a")
    assert extractor.output_shape == (None, 64, 56, 56)
    with pytest.warns(UserWarning, match="not a cut point"):  # again from the cached cut
        load_extractor(path, "res2_0_branch2a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_extractor(path, "res_conv1_bn")


def test_cut_is_cached_and_reused(tmp_path, zoo_env):
    from zoo.extract import load_extractor

    path = save_tiny(tmp_path)
    first = load_extractor(path, "pool")
    assert first.model_path.is_relative_to(zoo_env / "cache" / "cuts")
    stat = first.model_path.stat()
    second = load_extractor(path, "pool", options=ExtractorOptions(batch_size=7))
    assert second.model_path == first.model_path
    after = second.model_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert second.fingerprint == first.fingerprint
    # Another spec for the same tensor shares features (same fingerprint), another layer does not.
    assert load_extractor(path, 7).fingerprint == first.fingerprint
    assert load_extractor(path, "fc").fingerprint != first.fingerprint
    assert load_extractor(path, "pool", options=ExtractorOptions(preprocess=True)).fingerprint != first.fingerprint
    # A different model file (other weights) gets another folder.
    other = load_extractor(save_tiny(tmp_path, seed=1), "pool")
    assert other.model_path.parent != first.model_path.parent and other.fingerprint != first.fingerprint
    assert not list(first.model_path.parent.glob("*.part"))
    # The file's hash is remembered by size and mtime; new content in place is noticed.
    import onnx

    onnx.save(tiny_resnet(seed=2), path)
    changed = load_extractor(path, "pool")
    assert changed.fingerprint != first.fingerprint and changed.model_path.parent != first.model_path.parent


def test_pickled_extractor_rebuilds_its_session(tmp_path):
    from zoo.extract import load_extractor

    extractor = load_extractor(save_tiny(tmp_path), "fc")
    x = np.random.default_rng(2).normal(size=(4, 3, 8, 8)).astype(np.float32)
    want = extractor(x)
    assert extractor._session is not None
    blob = pickle.dumps(extractor)
    copy = pickle.loads(blob)
    assert copy._session is None and copy.fingerprint == extractor.fingerprint
    np.testing.assert_allclose(copy(x), want, rtol=1e-6)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "extractor.pkl").write_bytes(blob)
    code = (
        "import pickle, sys, numpy as np; e = pickle.load(open(sys.argv[1], 'rb'));"
        "np.save(sys.argv[3], e(np.load(sys.argv[2])))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "extractor.pkl"), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-6)


# --- the catalog side ----------------------------------------------------------------------------

def _register(name, path, **input_fields):
    from zoo.catalog import open_catalog
    from zoo.hashes import file_hash
    from zoo.records import Artifact, InputSpec, Model

    open_catalog().add_model(Model(
        name=name, framework="onnx",
        artifacts=[Artifact(role="model", filename=path.name, path=str(path), sha256=file_hash(path))],
        input=InputSpec(**input_fields),
    ))


def test_cataloged_model_with_preprocessing(tmp_path):
    from zoo.extract import layers, load_extractor

    path = save_tiny(tmp_path)
    _register("tiny.onnx", path, mean=[100.0, 110.0, 120.0], std=[50.0, 60.0, 70.0], scale=1.0,
              channel_order="BGR", layout="NCHW")
    assert [layer.name for layer in layers("tiny.onnx")][-2:] == ["fc", "prob"]
    raw = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)  # NHWC RGB
    plain = load_extractor("tiny.onnx", "fc")
    cooked = load_extractor("tiny.onnx", "fc", options=ExtractorOptions(preprocess=True))
    assert cooked.input_spec.mean == [100.0, 110.0, 120.0]
    x = raw[..., ::-1].astype(np.float32)  # to BGR
    x = (x - np.array([100, 110, 120], np.float32)) / np.array([50, 60, 70], np.float32)
    want = plain(x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(cooked(raw), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cooked(raw.transpose(0, 3, 1, 2)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="preprocess=True takes a batch of images"):
        cooked(raw[0])


def test_model_without_onnx_that_cannot_be_converted(monkeypatch):
    from zoo.catalog import open_catalog
    from zoo.extract import load_extractor
    from zoo.records import Artifact, Model

    monkeypatch.setenv("ZOO_OFFLINE", "1")
    open_catalog().add_model(Model(
        name="ghost.caffe", framework="caffe",
        artifacts=[Artifact(role="graph", filename="deploy.prototxt", urls=["http://127.0.0.1:9/deploy.prototxt"]),
                   Artifact(role="weights", filename="w.caffemodel", urls=["http://127.0.0.1:9/w.caffemodel"])],
    ))
    with pytest.raises(ZooError) as err:
        load_extractor("ghost.caffe")
    assert "ghost.caffe" in str(err.value) and "ONNX" in str(err.value)
    from zoo.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="closest: ghost.caffe"):
        load_extractor("ghost.cafe")
    with pytest.raises(UnknownModelError, match="missing/model.onnx does not exist"):
        load_extractor("missing/model.onnx")


# --- scikit-learn ---------------------------------------------------------------------------------

def test_sklearn_pipeline_clone_and_pickle(tmp_path):
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from zoo.extract import ExtractorTransformer, load_extractor

    path = save_tiny(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3, 8, 8)).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(int)  # the red channel's mean: a learnable rule
    x[:, 0] += np.where(y, 1.0, -1.0)[:, None, None]
    pipe = make_pipeline(ExtractorTransformer(str(path), layer="block_out"), LogisticRegression(max_iter=2000))
    pipe.fit(x[:60], y[:60])
    assert pipe.score(x[60:], y[60:]) > 0.8
    features = pipe[0].transform(x[:2])
    assert features.shape == (2, 6 * 8 * 8)
    params = pipe[0].get_params()
    assert params["layer"] == "block_out" and params["model"] == str(path)
    cloned = clone(pipe).fit(x[:60], y[:60])
    np.testing.assert_allclose(cloned.predict_proba(x[60:]), pipe.predict_proba(x[60:]), rtol=1e-5)
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_allclose(restored.predict_proba(x[60:]), pipe.predict_proba(x[60:]), rtol=1e-6)
    # An Extractor instance works too, and survives clone (deep copy without its session).
    extractor = load_extractor(path, ["pool", "fc"])
    transformer = clone(ExtractorTransformer(extractor))
    assert transformer.transform(x[:3]).shape == (3, 6 + 4)


# --- torch --------------------------------------------------------------------------------------

def test_to_torch_matches_onnxruntime(tmp_path):
    import torch

    from zoo.extract import load_extractor

    extractor = load_extractor(save_tiny(tmp_path), "fc")
    module = extractor.to_torch()
    assert isinstance(module, torch.nn.Module)
    assert all(not p.requires_grad for p in module.parameters())
    x = np.random.default_rng(3).normal(size=(4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    got = got[0] if isinstance(got, (tuple, list)) else got
    want = extractor(x)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


# --- command line ---------------------------------------------------------------------------------

def test_cli_layers_and_extract(tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.extract import load_extractor

    path = save_tiny(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["#", "-#", "layer", "op"]
    block_a = next(line for line in lines if " block_a " in line)
    assert "(N, 6, 8, 8)" in block_a and "324" in block_a and not block_a.rstrip().endswith("*")
    assert next(line for line in lines if " add " in line).rstrip().endswith("*")
    data = json.loads(runner.invoke(cli, ["layers", str(path), "--json"]).output)
    assert data[-1]["name"] == "prob" and data[-1]["shape"] == [None, 4] and data[0]["parameters"] == 168

    x = np.random.default_rng(0).normal(size=(5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out" / "f.npy"
    result = runner.invoke(cli, ["extract", str(path), "--layer", "pool", "--input", str(tmp_path / "x.npy"),
                                 "--output", str(out), "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert f"warning: created {out.parent} for --output {out}" in result.stderr  # outside the working directory
    report = json.loads(result.stdout)
    assert report["shape"] == [5, 6, 1, 1] and report["rows"] == 5 and report["reused"] is False
    np.testing.assert_allclose(np.load(out), load_extractor(path, "pool")(x), rtol=1e-6)
    # the second run of the same extraction comes from the feature cache
    again = runner.invoke(cli, ["extract", str(path), "--layer", "pool", "--input", str(tmp_path / "x.npy"),
                                "--output", str(tmp_path / "g.npy"), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["reused"] is True
    assert json.loads(again.output)["cache_key"] == report["cache_key"]
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), np.load(out))
    several = tmp_path / "f.npz"
    result = runner.invoke(cli, ["extract", str(path), "-l", "pool", "-l", "-2", "-i", str(tmp_path / "x.npy"),
                                 "-o", str(several)])
    assert result.exit_code == 0, result.output
    with np.load(several) as archive:
        assert sorted(archive.files) == ["fc", "pool"] and archive["fc"].shape == (5, 4)
    result = runner.invoke(cli, ["extract", str(path), "--layer", "pol", "-i", str(tmp_path / "x.npy"), "-o", str(out)])
    assert result.exit_code == 1
    assert "layer 'pol' is not in" in result.output and "closest: pool" in result.output
    assert "Traceback" not in result.output
    np.save(tmp_path / "bad.npy", x[:, :2])
    result = runner.invoke(cli, ["extract", str(path), "-i", str(tmp_path / "bad.npy"), "-o", str(out)])
    assert result.exit_code == 1 and "expects (N, 3, 8, 8)" in result.output


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_zoo_extract_subprocess(tmp_path, zoo_cmd):
    path = save_tiny(tmp_path)
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "f.npy"
    run = subprocess.run([*zoo_cmd, "extract", str(path), "--layer", "-2", "--input", str(tmp_path / "x.npy"),
                          "--output", str(out)], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "fc" in run.stdout
    assert np.load(out).shape == (3, 4)
    run = subprocess.run([*zoo_cmd, "layers", str(tmp_path / "nope.onnx")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr


# --- a real Keras model through tf2onnx --------------------------------------------------------------

@pytest.mark.slow
def test_keras_layers_are_grouped_by_scope_and_cut_like_keras(tmp_path):
    """tf2onnx turns one Keras layer into several nodes; `layers` gives back the Keras layers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    import onnx

    from zoo.extract import layers, load_extractor

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((16, 16, 3))
    # Non-zero biases: tf2onnx drops an all-zero bias, and then the parameter count would differ.
    x = tf.keras.layers.Conv2D(8, 3, activation="relu", bias_initializer="random_normal", name="block1_conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="block1_bn")(x)
    x = tf.keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(16, activation="relu", bias_initializer="random_normal", name="fc1")(x)
    outputs = tf.keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    model = tf.keras.Model(inputs, outputs, name="tinynet")
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    path = tmp_path / "tinynet.onnx"
    onnx.save(proto, path)

    found = layers(path)
    assert [layer.name for layer in found] == [
        "block1_conv", "block1_bn", "block1_pool", "flatten", "fc1", "predictions"]
    assert found[0].parameters == 8 * 3 * 3 * 3 + 8
    assert found[4].parameters == 7 * 7 * 8 * 16 + 16 and found[4].shape == [None, 16]
    assert all(layer.is_cut_point for layer in found)

    data = np.random.default_rng(0).normal(size=(5, 16, 16, 3)).astype(np.float32)
    for name in ("fc1", "flatten"):
        want = tf.keras.Model(inputs, model.get_layer(name).output)(data).numpy()
        got = load_extractor(path, name, options=ExtractorOptions(batch_size=2))(data)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # tf2onnx computes convolutions in NCHW: a conv layer's features come out channels-first.
    want = tf.keras.Model(inputs, model.get_layer("block1_pool").output)(data).numpy()
    got = load_extractor(path, "block1_pool")(data)
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), want, rtol=1e-4, atol=1e-5)


# --- a cataloged Caffe model, converted on demand -------------------------------------------------

def test_caffe_model_is_converted_on_demand_and_cut_like_opencv(tmp_path):
    """LeNet's real deploy.prototxt with random weights: Caffe layer names, one ONNX conversion,
    features equal to OpenCV's own Caffe importer at the same layer."""
    import shutil

    cv2 = pytest.importorskip("cv2")
    from helpers.zoo_nets import caffe_net
    from converters.caffe import make_random_caffemodel

    import zoo
    from zoo.catalog import open_catalog
    from zoo.extract import layers, load_extractor

    folder = tmp_path / "lenet"
    folder.mkdir()
    prototxt = folder / "deploy.prototxt"
    shutil.copyfile(caffe_net("lenet"), prototxt)
    caffemodel = folder / "lenet.caffemodel"
    make_random_caffemodel(prototxt, caffemodel, seed=0)
    zoo.add(caffemodel, name="lenet.caffe")
    assert open_catalog().get("lenet.caffe").artifact("onnx") is None

    found = layers("lenet.caffe")  # converts: the catalog now has the ONNX artifact
    assert [layer.name for layer in found] == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"]
    assert found[4].op_type == "Reshape+Gemm" and found[4].parameters == 800 * 500 + 500
    assert open_catalog().get("lenet.caffe").artifact("onnx").path

    extractor = load_extractor("lenet.caffe", "ip1", options=ExtractorOptions(batch_size=4))
    assert extractor.meta.fixed_batch is None  # the prototxt's batch of 64 was made dynamic
    x = np.random.default_rng(0).uniform(0, 1, (6, 1, 28, 28)).astype(np.float32)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    want = net.forward("ip1").reshape(6, -1)
    got = extractor(x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-4 * scale


# --- a PyTorch module through torch.onnx -------------------------------------------------------------

@pytest.mark.slow
def test_torch_export_layers_are_module_paths(tmp_path):
    """torch.onnx names nodes '/layer1/layer1.0/conv1/Conv': layers come back as module paths."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from zoo.extract import layers, load_extractor

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv1(x) + x)

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    net.add_module("layer1", nn.Sequential(Block(), Block()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(8, 4))
    net.eval()
    path = tmp_path / "net.onnx"
    example = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    found = {layer.name: layer for layer in layers(path)}
    modules = dict(net.named_modules())
    assert {"stem.0", "layer1.0.conv1", "layer1.1.relu", "pool", "flatten", "fc"} <= set(found)
    assert set(found) - {"layer1.0", "layer1.1"} <= set(modules)  # the blocks' own Add is in their forward
    assert found["layer1.0.conv1"].parameters == 8 * 8 * 9 + 8 and not found["layer1.0.conv1"].is_cut_point
    assert found["layer1.0.relu"].is_cut_point

    captured = {}

    def keep(module, inputs, output):  # returns None: the forward stays untouched
        captured["relu"] = output.detach().numpy()

    modules["layer1.0.relu"].register_forward_hook(keep)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        net(x)
    got = load_extractor(path, "layer1.0.relu")(x.numpy())
    np.testing.assert_allclose(got, captured["relu"], rtol=1e-4, atol=1e-5)


def test_importing_zoo_extract_stays_light():
    code = (
        "import sys, zoo.extract, zoo.graph, zoo.cli.extract\n"
        "heavy = {'onnx', 'onnxruntime', 'sklearn', 'torch', 'tensorflow', 'numpy'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"


@pytest.mark.slow
def test_keras_conv_layers_cut_in_keras_layout(tmp_path):
    """zoo's TensorFlow converter marks layers tf2onnx moved to NCHW; cuts there give Keras's NHWC."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    import onnx

    from converters.tensorflow import convert_keras_model
    from zoo.extract import load_extractor

    tf.keras.utils.set_random_seed(1)
    inputs = tf.keras.Input((12, 12, 3))
    x = tf.keras.layers.Conv2D(6, 3, activation="relu", name="block1_conv")(inputs)
    x = tf.keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = tf.keras.layers.Conv2D(5, 3, padding="same", name="block2_conv")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = tf.keras.layers.Dense(3, name="predictions")(x)
    model = tf.keras.Model(inputs, outputs)
    path = tmp_path / "k.onnx"
    onnx.save(convert_keras_model(model).model, path)

    from zoo.extract import layers

    shapes = {layer.name: layer.shape for layer in layers(path)}
    assert shapes["block1_conv"] == [None, 10, 10, 6] and shapes["block1_pool"] == [None, 5, 5, 6]
    data = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype(np.float32)
    # block1_conv and block1_pool are marked NCHW by the converter; gap is 2-D ("same").
    for name in ("block1_conv", "block1_pool", "gap"):
        want = tf.keras.Model(inputs, model.get_layer(name).output)(data).numpy()
        extractor = load_extractor(path, name, options=ExtractorOptions(batch_size=3))
        got = extractor(data)
        assert got.shape == want.shape, name
        assert list(extractor.output_shape[1:]) == list(want.shape[1:]), name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Two layers at once, one feeding the other: the inner one is renamed, both come out NHWC.
    both = load_extractor(path, ["block1_conv", "block1_pool"])(data)
    for name in ("block1_conv", "block1_pool"):
        want = tf.keras.Model(inputs, model.get_layer(name).output)(data).numpy()
        np.testing.assert_allclose(both[name], want, rtol=1e-4, atol=1e-5)


def test_layers_of_a_caffe_graph_without_its_weights_says_so(tmp_path, zoo_cmd, light):
    """A fresh `zoo layers deploy.prototxt` with no .caffemodel beside it: the Caffe error, not an ONNX parse error."""
    graph = tmp_path / "deploy.prototxt"
    graph.write_bytes(light["caffe_graph"].read_bytes())
    run = subprocess.run([*zoo_cmd, "layers", str(graph)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no .caffemodel is beside it" in run.stderr and "ONNX" not in run.stderr, run.stderr
