"""Format detection from content: real files of every framework, renamed files, corrupt files."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from helpers.formats import LENET_PROTOTXT, write_caffemodel
from helpers.zoo_nets import caffe_net

from zoo.errors import ModelFormatError
from zoo.formats import detect_format, find_models, tree_sha256


def copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)
    return dest


def test_onnx_and_torchscript(light):
    info = detect_format(light["onnx"])
    assert (info.framework, info.format, info.files) == ("onnx", "onnx", {"model": light["onnx"]})
    info = detect_format(light["torchscript"])
    assert (info.framework, info.format) == ("pytorch", "torchscript")


def test_caffe_pair_from_either_half(light):
    graph, weights = light["caffe_graph"], light["caffe_weights"]
    for path in (graph, weights):
        info = detect_format(path)
        assert (info.framework, info.format) == ("caffe", "caffe")
        assert info.files == {"graph": graph, "weights": weights}
        assert info.path == weights


def test_caffe_pair_by_the_only_weights_and_the_deploy_prototxt(light, tmp_path):
    copy(light["caffe_graph"], tmp_path / "deploy.prototxt")
    copy(light["caffe_graph"], tmp_path / "train_val.prototxt")
    (tmp_path / "solver.prototxt").write_text('net: "train_val.prototxt"\nbase_lr: 0.01\n')
    copy(light["caffe_weights"], tmp_path / "bvlc_lenet_iter_10000.caffemodel")
    info = detect_format(tmp_path / "bvlc_lenet_iter_10000.caffemodel")
    assert info.files["graph"] == tmp_path / "deploy.prototxt"
    assert detect_format(tmp_path / "deploy.prototxt").files["weights"].name.startswith("bvlc_")
    with pytest.raises(ModelFormatError, match="solver"):
        detect_format(tmp_path / "solver.prototxt")


def test_caffe_pair_by_shared_prefix(light, tmp_path):
    """The MSRA ResNet files as published: ResNet-50-model.caffemodel, ResNet-50-deploy.prototxt."""
    for depth in (50, 101):
        # The pairing is by file name: ResNet-50's net serves for both depths.
        copy(caffe_net("resnet_50"), tmp_path / f"ResNet-{depth}-deploy.prototxt")
        copy(light["caffe_weights"], tmp_path / f"ResNet-{depth}-model.caffemodel")
    info = detect_format(tmp_path / "ResNet-101-model.caffemodel")
    assert info.files["graph"].name == "ResNet-101-deploy.prototxt"
    assert detect_format(tmp_path / "ResNet-50-deploy.prototxt").files["weights"].name == (
        "ResNet-50-model.caffemodel")


def test_old_v1_caffe_weights(tmp_path):
    """A V1 net (`layers`, field 2) with net-level input dims (field 4) is still Caffe."""
    copy(caffe_net("resnet_50"), tmp_path / "net.prototxt")
    v1 = tmp_path / "net.caffemodel"
    body = b"\x0a\x03net"  # name (field 1), then two V1 layers (field 2)
    layer = b"\x0a\x05conv1"
    body += (b"\x12" + bytes([len(layer)]) + layer) * 2
    v1.write_bytes(body)
    assert detect_format(v1).framework == "caffe"


def test_content_wins_over_extension(light, tmp_path):
    renamed = copy(light["onnx"], tmp_path / "model.pb")
    assert detect_format(renamed).framework == "onnx"
    renamed = copy(light["torchscript"], tmp_path / "model.bin")
    assert detect_format(renamed).format == "torchscript"
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"<html><body>404 Not Found</body></html>")
    with pytest.raises(ModelFormatError, match="fake.onnx"):
        detect_format(fake)


@pytest.mark.slow
def test_tensorflow_family(tf_files, tmp_path):
    expected = {
        "keras": ("keras", "keras", "model"),
        "h5": ("keras", "h5", "model"),
        "h5_weights": ("keras", "h5_weights", "weights"),
        "frozen_graph": ("tensorflow", "frozen_graph", "model"),
        "saved_model": ("tensorflow", "saved_model", "model"),
        "tflite": ("tflite", "tflite", "model"),
    }
    for kind, (framework, fmt, role) in expected.items():
        info = detect_format(tf_files[kind])
        assert (info.framework, info.format) == (framework, fmt), kind
        assert info.files == {role: tf_files[kind]}, kind
    # the saved_model.pb inside names its folder; a renamed TFLite file is still TFLite
    inner = detect_format(tf_files["saved_model"] / "saved_model.pb")
    assert inner.files == {"model": tf_files["saved_model"]}
    assert detect_format(copy(tf_files["tflite"], tmp_path / "x.dat")).framework == "tflite"
    assert detect_format(copy(tf_files["frozen_graph"], tmp_path / "g.onnx")).format == "frozen_graph"


def _truncate(src: Path, dest: Path, keep: float) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def test_corrupt_and_wrong_files(light, tmp_path):
    cases = {
        "truncated onnx": _truncate(light["onnx"], tmp_path / "cut.onnx", 0.6),
        "empty": tmp_path / "empty.onnx",
        "random bytes": tmp_path / "noise.pb",
        "damaged zip": tmp_path / "broken.pt",
        "hdf5 without keras": tmp_path / "broken.h5",
        "pickle": tmp_path / "obj.pkl",
        "torch.save checkpoint": light["torch_checkpoint"],
        "plain text": tmp_path / "labels.txt",
    }
    cases["empty"].write_bytes(b"")
    cases["random bytes"].write_bytes(bytes(range(7, 256)) * 3)
    cases["damaged zip"].write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    cases["hdf5 without keras"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    cases["pickle"].write_bytes(pickle.dumps({"a": 1}, protocol=4))
    cases["plain text"].write_text("cat\ndog\n")
    for what, path in cases.items():
        with pytest.raises(ModelFormatError) as caught:
            detect_format(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, what
    assert "never unpickles" in _message(cases["torch.save checkpoint"])
    assert "torch.jit" in _message(cases["pickle"])


def _message(path: Path) -> str:
    with pytest.raises(ModelFormatError) as caught:
        detect_format(path)
    return str(caught.value)


def test_caffe_halves_alone_and_corrupt_weights(light, tmp_path):
    lonely = copy(light["caffe_graph"], tmp_path / "a" / "net.prototxt")
    assert "no .caffemodel" in _message(lonely)
    weights = copy(light["caffe_weights"], tmp_path / "b" / "w.caffemodel")
    assert "no deploy .prototxt" in _message(weights)
    copy(light["caffe_graph"], tmp_path / "c" / "net.prototxt")
    _truncate(light["caffe_weights"], tmp_path / "c" / "net.caffemodel", 0.5)
    assert "net.caffemodel" in _message(tmp_path / "c" / "net.prototxt")


def test_folders_and_missing_paths(tmp_path):
    assert "zoo scan" in _message(tmp_path)
    assert "does not exist" in _message(tmp_path / "nope.onnx")


def test_find_models_in_a_tree(light, tmp_path):
    copy(light["onnx"], tmp_path / "a" / "one.onnx")
    copy(light["caffe_graph"], tmp_path / "b" / "lenet.prototxt")
    copy(light["caffe_weights"], tmp_path / "b" / "lenet.caffemodel")
    copy(light["torchscript"], tmp_path / "c" / "d" / "net.pt")
    (tmp_path / "c" / "README.md").write_text("# models\n")
    (tmp_path / "c" / "labels.txt").write_text("cat\n")
    _truncate(light["onnx"], tmp_path / "broken.onnx", 0.5)
    copy(light["onnx"], tmp_path / ".hidden" / "h.onnx")
    found, problems = find_models(tmp_path)
    assert sorted((i.framework, i.path.name) for i in found) == [
        ("caffe", "lenet.caffemodel"), ("onnx", "one.onnx"), ("pytorch", "net.pt")]
    assert [p.name for p, _ in problems] == ["broken.onnx"]
    with pytest.raises(ModelFormatError, match="not a folder"):
        find_models(tmp_path / "a" / "one.onnx")


@pytest.mark.slow
def test_find_models_treats_a_saved_model_as_one(tf_files, tmp_path):
    copy(tf_files["saved_model"], tmp_path / "exported")
    copy(tf_files["tflite"], tmp_path / "m.tflite")
    found, problems = find_models(tmp_path)
    assert sorted(i.format for i in found) == ["saved_model", "tflite"] and not problems
    # a damaged saved_model.pb is reported, not registered
    pb = tmp_path / "exported" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    found, problems = find_models(tmp_path)
    assert [i.format for i in found] == ["tflite"]
    assert problems[0][0] == tmp_path / "exported" and "saved_model.pb" in problems[0][1]
    assert "not a valid SavedModel" in _message(tmp_path / "exported")


def test_tree_sha256_follows_content(light, tmp_path):
    folder = tmp_path / "m"
    copy(light["onnx"], folder / "x.onnx")
    before = tree_sha256(folder)
    assert tree_sha256(folder) == before
    (folder / "x.onnx").write_bytes(b"changed")
    assert tree_sha256(folder) != before


def test_hand_written_caffemodel_is_caffe(tmp_path):
    write_caffemodel(tmp_path / "w.caffemodel", [("ip", "InnerProduct", [[2, 3], [2]])])
    copy(LENET_PROTOTXT, tmp_path / "w.prototxt")
    assert detect_format(tmp_path / "w.caffemodel").format == "caffe"


@pytest.mark.timeout(60)
def test_special_files_are_named_never_opened(light, tmp_path):
    import os
    import socket

    from zoo.formats import special_file_kind

    os.mkfifo(tmp_path / "pipe.tflite")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.onnx"))
    try:
        assert special_file_kind(tmp_path / "pipe.tflite") == "a FIFO (named pipe)"
        assert special_file_kind(tmp_path / "sock.onnx") == "a socket"
        assert special_file_kind("/dev/null") == "a character device"
        assert special_file_kind(light["onnx"]) is None and special_file_kind(tmp_path) is None
        for path in (tmp_path / "pipe.tflite", tmp_path / "sock.onnx", Path("/dev/zero")):
            with pytest.raises(ModelFormatError, match="not a regular file; zoo never opens those"):
                detect_format(path)
        (tmp_path / "link.onnx").symlink_to(tmp_path / "pipe.tflite")  # a link to one is no better
        with pytest.raises(ModelFormatError, match="FIFO"):
            detect_format(tmp_path / "link.onnx")
        found, problems = find_models(tmp_path)
        assert found == [] and sorted(p.name for p, _ in problems) == ["pipe.tflite", "sock.onnx"]
    finally:
        sock.close()


def test_detect_files_pairs_caffe_halves_in_either_order(light, tmp_path):
    from zoo.formats import detect_files

    graph = copy(light["caffe_graph"], tmp_path / "a" / "net_definition.prototxt")
    weights = copy(light["caffe_weights"], tmp_path / "b" / "weights.caffemodel")  # another folder
    for paths in ([graph, weights], [weights, graph]):
        info = detect_files(paths)
        assert (info.framework, info.files) == ("caffe", {"graph": graph, "weights": weights})
    assert detect_files([light["onnx"]]).format == "onnx"
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\n')
    for paths, message in [([graph, graph], "like net_definition.prototxt"), ([weights, solver], "solver"),
                           ([graph, tmp_path / "none.caffemodel"], "does not exist"),
                           ([graph, tmp_path], "is a folder"), ([], "got 0 paths")]:
        with pytest.raises(ModelFormatError, match=message):
            detect_files(paths)
