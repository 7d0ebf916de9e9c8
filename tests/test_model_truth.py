"""The user's own models get their preprocessing, and the catalog says what is true about every model.

Input specs on add/scan/edit, a file matching a published checksum inheriting its entry's spec,
the warning for images fed to a model without one; `zoo info` showing real inputs and missing
files; `zoo verify` on a SavedModel folder; third-party chatter kept off the terminal.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from zoo.cli import cli
from zoo.errors import InputError

pytestmark = pytest.mark.usefixtures("zoo_env")

CAFFE_BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { pool: AVE global_pooling: true } }
"""


def run(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    return result


def _tiny_onnx(path, inputs):
    """A graph that sums its float inputs (each cast to float) into one output."""
    nodes, names = [], []
    for name, elem, shape in inputs:
        nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
        if len(shape) > 1:
            nodes.append(helper.make_node("ReduceSum", [f"{name}_f"], [f"{name}_s"], keepdims=0,
                                          axes=list(range(1, len(shape)))))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_f"], [f"{name}_s"]))
        names.append(f"{name}_s")
    nodes.append(helper.make_node("Sum", names, ["out"], name="sum"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(n, e, s) for n, e, s in inputs],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), path)
    return path


# ---- 6. preprocessing for the user's own models ----------------------------------------------------


def test_add_edit_and_info_carry_the_input_spec(tmp_path):
    import zoo

    path = _tiny_onnx(tmp_path / "net.onnx", [("image", TensorProto.FLOAT, ["N", 3, 8, 8])])
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 10}))
    result = run("add", path, "--input-spec", spec_file, "--scale", "0.00392", "--channel-order", "rgb", "--crop", "8")
    assert result.exit_code == 0, result.output
    spec = zoo.info("net").input
    assert (spec.mean, spec.std, spec.scale, spec.channel_order, spec.resize, spec.crop) == (
        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.00392, "RGB", 10, [8, 8])
    result = run("edit", "net", "--mean", "123.7,116.3,103.5", "--std", "58.4,57.1,57.4", "--scale", "1")
    assert result.exit_code == 0 and "edited net: mean, scale, std" in result.output
    model = zoo.info("net")
    assert model.input.mean == [123.7, 116.3, 103.5] and model.input.crop == [8, 8]  # the rest stays
    text = run("info", "net").output
    assert "edited:" in text and "mean, scale, std" in text and "mean:           [123.7, 116.3, 103.5]" in text
    assert zoo.edit("net", input_spec={"channel_order": "BGR"}).input.channel_order == "BGR"
    with pytest.raises(InputError, match="--std .* every std must be positive"):
        zoo.edit("net", input_spec={"std": [1, 0, 1]})
    bad = run("edit", "net", "--crop", "big")
    assert bad.exit_code == 1 and bad.output.strip().startswith("error: --crop 'big' must be a size")
    nothing = run("edit", "net")
    assert nothing.exit_code == 1 and "nothing to change for net" in nothing.output


def test_a_file_matching_a_published_checksum_inherits_its_spec(tmp_path):
    """The same Caffe weights added by hand and published in an index see the same pixels."""
    import zoo
    from helpers.caffe import make_net

    prototxt, caffemodel = make_net(tmp_path, [1, 3, 12, 12], CAFFE_BODY, name="published")
    sha1 = hashlib.sha1(caffemodel.read_bytes()).hexdigest()
    index = {"format": "zoo-index/1", "name": "acme", "models": [{
        "name": "acme_net.caffe", "framework": "caffe", "format": "caffe", "license": "CC-BY-4.0",
        "description": "A tiny published Caffe net.", "task": "image-classification",
        "input": {"name": "data", "shape": [None, 3, 12, 12], "layout": "NCHW", "mean": [104.0, 117.0, 123.0],
                  "channel_order": "BGR", "pixel_range": [0, 255]},
        "files": [{"role": "graph", "filename": "deploy.prototxt", "url": "https://acme.example/deploy.prototxt",
                   "checksum": None},
                  {"role": "weights", "filename": "acme.caffemodel", "url": "https://acme.example/acme.caffemodel",
                   "sha1": sha1}]}]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    zoo.add_source("acme", str(tmp_path / "index.json"))
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(prototxt, mine / "deploy.prototxt")
    shutil.copy(caffemodel, mine / "weights.caffemodel")
    result = run("add", mine / "deploy.prototxt", mine / "weights.caffemodel", "--name", "by_hand")
    assert result.exit_code == 0 and "recognised as acme_net.caffe" in result.output, result.output
    model = zoo.info("by_hand")
    published = zoo.info("acme_net.caffe")
    assert model.input.mean == [104.0, 117.0, 123.0] and model.input.channel_order == "BGR"
    assert (model.license, model.description, model.task) == (published.license, published.description,
                                                              published.task)
    assert model.meta["same_as"]["model"] == "acme_net.caffe"
    assert "recognised as:  acme_net.caffe" in run("info", "by_hand").output
    # An own spec given on add wins over the published one; a file matching nothing gets none.
    other = zoo.add(mine / "deploy.prototxt", mine / "weights.caffemodel", name="own_spec",
                    input_spec={"mean": [1, 2, 3]})
    assert other.input.mean == [1.0, 2.0, 3.0] and other.input.channel_order is None
    _, unrelated = make_net(tmp_path, [1, 3, 12, 12], CAFFE_BODY, name="unrelated", seed=5)
    assert "same_as" not in zoo.add(prototxt, unrelated, name="unrelated").meta


def test_images_fed_to_a_model_without_a_spec_warn_how_to_set_one(tmp_path):
    from PIL import Image

    import zoo

    path = _tiny_onnx(tmp_path / "plain.onnx", [("image", TensorProto.FLOAT, ["N", 3, 8, 8])])
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "a.png")
    zoo.add(path)
    with pytest.warns(UserWarning, match=r"plain has no input spec: .*zoo edit plain --mean R,G,B"):
        zoo.load_extractor("plain", -1)(str(tmp_path / "a.png"))
    zoo.edit("plain", input_spec={"mean": [100, 100, 100]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = zoo.load_extractor("plain", -1)(str(tmp_path / "a.png"))
    np.testing.assert_allclose(features, [3 * 8 * 8 * 100.0])


# ---- 7. the catalog tells the truth ---------------------------------------------------------------


def test_info_shows_every_real_input_and_no_default_dtype(tmp_path):
    path = _tiny_onnx(tmp_path / "multi.onnx", [("bytes", TensorProto.INT32, ["N", 2048]),
                                                 ("mask", TensorProto.BOOL, ["N", 2048]),
                                                 ("scale", TensorProto.FLOAT, [])])
    assert run("add", path).exit_code == 0
    text = run("info", "multi").output
    lines = text.split("  inputs:\n")[1].splitlines()[:3]
    assert [line.split() for line in lines] == [["bytes", "int32", "(N,", "2048)"], ["mask", "bool", "(N,", "2048)"],
                                                ["scale", "float32", "()"]]
    assert "dtype:" not in text
    converted = run("convert", "multi")
    assert converted.exit_code == 0 and "layout None" not in converted.output and "None" not in converted.output


def test_local_turns_false_when_a_file_is_gone(tmp_path):
    path = _tiny_onnx(tmp_path / "gone.onnx", [("x", TensorProto.FLOAT, ["N", 4])])
    run("add", path)
    assert "yes: every file is on disk" in run("info", "gone").output
    path.unlink()
    text = run("info", "gone").output
    assert f"local:          no: {path} is gone; find it again with `zoo scan FOLDER`" in text
    assert "gone" in run("list", "--source", "local").output.split("missing")[0]


@pytest.mark.slow
def test_verify_hashes_a_saved_model_folder(tf_files, tmp_path):
    import zoo

    folder = tmp_path / "exported"
    shutil.copytree(tf_files["saved_model"], folder)
    zoo.add(folder, name="saved")
    result = run("verify", "saved")
    assert result.exit_code == 0 and "all fetched files verify" in result.output, result.output
    with open(folder / "saved_model.pb", "ab") as fh:
        fh.write(b"\0")
    result = run("verify", "saved")
    assert result.exit_code == 1 and "changed" in result.output


# ---- 8. quiet by default ----------------------------------------------------------------------------

_CHATTER = ("oneDNN", "absl::InitializeLog", "XNNPACK", "cpu_feature_guard", "tf.lite.Interpreter is deprecated",
            "To enable the following instructions")


@pytest.mark.slow
def test_third_party_chatter_stays_off_the_terminal_unless_verbose(tf_models, tmp_path, zoo_cmd):
    model = tmp_path / "tiny.tflite"
    shutil.copy(tf_models["tflite"], model)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ZOO_LOG_LEVEL")}
    quiet = subprocess.run([*zoo_cmd, "convert", str(model)], capture_output=True, text=True, env=env, check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.strip()] == [f"converting {model}..."
                                                                            ] + [line for line in quiet.stderr.splitlines()
                                                                                 if line.startswith("added")]
    assert not any(word in quiet.stdout + quiet.stderr for word in _CHATTER)
    verbose = subprocess.run([*zoo_cmd, "--verbose", "convert", str(model), "--force"], capture_output=True,
                             text=True, env={**env, "ZOO_CATALOG": str(tmp_path / "other.db")}, check=False)
    assert verbose.returncode == 0, verbose.stderr
    assert any(word in verbose.stderr for word in _CHATTER), verbose.stderr
