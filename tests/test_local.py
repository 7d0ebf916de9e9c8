"""`zoo.add` and `zoo.scan` of real model files in every format: hashes, names, idempotence."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import zoo
from zoo.catalog import open_catalog
from zoo.errors import DuplicateModelError, ModelFormatError
from zoo.local import scan


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)
    return dest


def snapshot() -> list[dict]:
    return [m.to_dict() for m in open_catalog().search(limit=None)]


def test_add_onnx_records_path_size_and_sha256(light, tmp_path):
    path = copy(light["onnx"], tmp_path / "cats.onnx")
    model = zoo.add(path, task="image-classification", dataset="cats", tags=["pets", "tiny"],
                    description="A cat classifier")
    assert (model.name, model.framework, model.format, model.source) == ("cats", "onnx", "onnx", "local")
    (artifact,) = model.artifacts
    assert artifact.role == "model" and artifact.path == str(path)
    assert artifact.size == path.stat().st_size and artifact.sha256 == sha256(path)
    assert model.is_local
    assert zoo.info("cats").to_dict() == model.to_dict()
    assert [m.name for m in zoo.search(tag="pets")] == ["cats"]
    assert [m.name for m in zoo.search("cat classifier", source="local")] == ["cats"]


def test_add_caffe_pair_from_either_file(light):
    model = zoo.add(light["caffe_graph"])
    assert model.name == "lenet" and model.framework == "caffe"
    roles = {a.role: a for a in model.artifacts}
    assert set(roles) == {"graph", "weights"}
    assert roles["weights"].sha256 == sha256(light["caffe_weights"])
    again = zoo.add(light["caffe_weights"], name="lenet_again")
    assert {a.path for a in again.artifacts} == {a.path for a in model.artifacts}


def test_add_torchscript_and_refuse_a_pickle(light):
    assert zoo.add(light["torchscript"]).format == "torchscript"
    before = snapshot()
    with pytest.raises(ModelFormatError, match="never unpickles"):
        zoo.add(light["torch_checkpoint"])
    assert snapshot() == before


@pytest.mark.slow
def test_add_every_tensorflow_format(tf_files):
    expected = {"keras": ("keras", "keras"), "h5": ("keras", "h5"),
                "h5_weights": ("keras", "h5_weights"), "frozen_graph": ("tensorflow", "frozen_graph"),
                "saved_model": ("tensorflow", "saved_model"), "tflite": ("tflite", "tflite")}
    for kind, (framework, fmt) in expected.items():
        model = zoo.add(tf_files[kind], name=f"tiny_{kind}")
        assert (model.framework, model.format) == (framework, fmt), kind
        assert model.is_local and all(a.sha256 and a.size for a in model.artifacts), kind
    saved = zoo.info("tiny_saved_model").artifacts[0]
    assert saved.path == str(tf_files["saved_model"]) and saved.meta["sha256_of"] == "folder"
    assert zoo.info("tiny_h5_weights").artifacts[0].role == "weights"
    assert zoo.add(tf_files["h5_weights"]).name == "tiny"  # tiny.weights.h5 -> tiny


def test_duplicate_name_suggests_name_and_changes_nothing(light, tmp_path):
    zoo.add(light["onnx"])
    before = snapshot()
    with pytest.raises(DuplicateModelError, match="--name"):
        zoo.add(copy(light["onnx"], tmp_path / "tiny.onnx"))
    with pytest.raises(DuplicateModelError, match="bvlc_alexnet"):
        zoo.add(light["onnx"], name="bvlc_alexnet")  # a built-in's name is taken too
    with pytest.raises(ModelFormatError, match="--name"):
        zoo.add(light["onnx"], name="my model")
    assert snapshot() == before


def test_corrupt_and_missing_files_change_nothing(light, tmp_path):
    before = snapshot()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(light["onnx"].read_bytes()[:40])
    for path in (broken, tmp_path / "absent.tflite", tmp_path):
        with pytest.raises(ModelFormatError):
            zoo.add(path)
    assert snapshot() == before


@pytest.fixture
def tree(light, tmp_path) -> Path:
    root = tmp_path / "models"
    copy(light["onnx"], root / "a" / "one.onnx")
    copy(light["caffe_graph"], root / "b" / "lenet.prototxt")
    copy(light["caffe_weights"], root / "b" / "lenet.caffemodel")
    copy(light["torchscript"], root / "c" / "net.pt")
    (root / "c" / "notes.txt").write_text("not a model\n")
    broken = root / "broken.tflite"
    broken.write_bytes(b"garbage that is not a flatbuffer")
    return root


def test_scan_adds_once_and_reports_problems(tree):
    result = zoo.scan(tree)
    assert sorted(result.added) == ["lenet", "net", "one"]
    assert [Path(p).name for p, _ in result.problems] == ["broken.tflite"]
    assert zoo.info("lenet").framework == "caffe"
    before = snapshot()
    again = scan(tree)
    assert again.added == [] and sorted(again.unchanged) == ["lenet", "net", "one"]
    assert snapshot() == before


def test_scan_notices_moved_and_changed_files(tree, light):
    scan(tree)
    zoo.add(tree / "a" / "one.onnx", name="tagged", tags=["mine"])  # same file, second entry
    # move: same content at a new path -> the entry follows it, keeping what the user said
    (tree / "c" / "net.pt").rename(tree / "moved.pt")
    # change: same path, new content -> new sha256
    from helpers.formats import onnx_file

    onnx_file(tree / "a" / "one.onnx", scale=3.0)
    result = scan(tree)
    assert result.moved == ["net"] and not result.added
    assert sorted(result.changed) == ["one", "tagged"]
    moved = zoo.info("net").artifacts[0]
    assert moved.path == str(tree / "moved.pt") and moved.sha256 == sha256(tree / "moved.pt")
    # the entry is re-pointed, not a new revision beside an empty one (nothing there to fetch)
    assert [r.digest[:12] for r in open_catalog().revisions("net")] == [zoo.info("net").revision]
    changed = zoo.info("one").artifacts[0]
    assert changed.sha256 == sha256(tree / "a" / "one.onnx")
    assert zoo.info("tagged").tags == ["mine"]
    assert sorted(scan(tree).unchanged) == ["lenet", "net", "one", "tagged"]


def test_scan_copies_become_new_entries_and_missing_files_are_reported(tree):
    scan(tree)
    copy(tree / "a" / "one.onnx", tree / "d" / "one.onnx")
    (tree / "b" / "lenet.caffemodel").unlink()
    result = scan(tree)
    assert result.added == ["one-2"] and result.missing == ["lenet"]
    assert zoo.info("one-2").artifacts[0].path == str(tree / "d" / "one.onnx")


def test_scan_of_a_file_or_missing_folder_is_an_error(tree):
    before = snapshot()
    with pytest.raises(ModelFormatError, match="zoo add"):
        scan(tree / "a" / "one.onnx")
    with pytest.raises(ModelFormatError):
        scan(tree / "nope")
    assert snapshot() == before


@pytest.mark.slow
def test_scan_tensorflow_folder(tf_files, tmp_path):
    copy(tf_files["saved_model"], tmp_path / "exported" / "1")
    copy(tf_files["tflite"], tmp_path / "m.tflite")
    copy(tf_files["keras"], tmp_path / "k.keras")
    result = scan(tmp_path)
    assert sorted(result.added) == ["1", "k", "m"]
    # a file changed inside the SavedModel folder changes its tree hash
    variables = next((tmp_path / "exported" / "1" / "variables").glob("*.data-*"))
    variables.write_bytes(variables.read_bytes()[::-1])
    assert scan(tmp_path).changed == ["1"]


# ---- two-file Caffe models, and files that are not regular files (issues 11, 12) ---------------


def test_add_caffe_pair_given_as_two_files_in_either_order(light, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    # Names that share nothing, in a folder with another net: only the two paths say which pair.
    graph = copy(light["caffe_graph"], tmp_path / "deploy.prototxt")
    copy(light["caffe_graph"], tmp_path / "other_deploy.prototxt")
    weights = copy(light["caffe_weights"], tmp_path / "snapshot_iter_500.caffemodel")
    result = CliRunner().invoke(cli, ["add", str(graph), str(weights), "--name", "my_net", "--json"])
    assert result.exit_code == 0, result.output
    roles = {a["role"]: a["path"] for a in __import__("json").loads(result.stdout)["artifacts"]}
    assert roles == {"graph": str(graph), "weights": str(weights)}
    model = zoo.add(weights, graph, name="my_net_2")  # weights first works too
    assert {a.role: a.path for a in model.artifacts} == roles
    before = snapshot()
    for paths, message in [((graph, tmp_path / "other_deploy.prototxt"), "give one .prototxt and one .caffemodel"),
                           ((graph, light["onnx"]), "neither a Caffe net definition"),
                           ((graph, weights, light["onnx"]), "got 3 paths")]:
        result = CliRunner().invoke(cli, ["add", *map(str, paths)])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert snapshot() == before


@pytest.mark.timeout(60)
def test_add_refuses_a_fifo_without_opening_it(light, tmp_path):
    import os

    copy(light["caffe_graph"], tmp_path / "deploy.prototxt")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: the test would hang
    before = snapshot()
    with pytest.raises(ModelFormatError, match=r"is a FIFO \(named pipe\), not a regular file"):
        zoo.add(fifo)
    with pytest.raises(ModelFormatError, match="FIFO"):
        zoo.add(tmp_path / "deploy.prototxt", fifo)  # nor as half of a Caffe pair
    assert snapshot() == before


def test_scan_skips_fifos_and_sockets_with_a_note(tree, zoo_cmd, zoo_env):
    import json
    import os
    import socket
    import subprocess

    os.mkfifo(tree / "a" / "pipe.onnx")
    os.mkfifo(tree / "b" / "lenet2.prototxt")  # a FIFO beside a Caffe pair is no partner either
    os.mkfifo(tree / "c" / "fifo.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "c" / "server.pt"))
    try:
        out = subprocess.run([*zoo_cmd, "scan", str(tree), "--json"], capture_output=True, text=True,
                             timeout=120, check=False, env={**os.environ})
    finally:
        sock.close()
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert sorted(data["added"]) == ["lenet", "net", "one"]
    skipped = {Path(p["path"]).name: p["error"] for p in data["problems"]}
    assert "FIFO" in skipped["pipe.onnx"] and "FIFO" in skipped["fifo.txt"] and "FIFO" in skipped["lenet2.prototxt"]
    assert "a socket" in skipped["server.pt"] and "broken.tflite" in skipped


def test_a_missing_file_is_said_to_come_back_the_way_it_came(tmp_path, zoo_env, zoo_cmd, light):
    """Fresh processes: the user's own file that moved is found again by `zoo scan` (it has no URL to
    fetch), a conversion removed from the cache is converted again, never fetched."""
    import subprocess

    def zoo_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*zoo_cmd, *args], capture_output=True, text=True, timeout=120)

    path = tmp_path / "mine.onnx"
    shutil.copy(light["onnx"], path)
    assert zoo_run("convert", str(path)).returncode == 0
    path.rename(tmp_path / "moved.onnx")
    for command in (["verify", "mine"], ["fetch", "mine"], ["convert", "mine"]):
        out = zoo_run(*command)
        said = out.stdout + out.stderr  # verify reports on stdout, the others fail on stderr
        assert out.returncode == 1 and "find it again with `zoo scan FOLDER` where it is now" in said, said
        assert "zoo fetch" not in said, (command, said)
    (tmp_path / "moved.onnx").rename(path)
    path.write_bytes(path.read_bytes() + b"\0")
    assert f"register what it is now with `zoo scan {tmp_path}`" in zoo_run("verify", "mine").stdout
    shutil.copy(light["onnx"], path)
    assert zoo_run("cache", "rm", "onnx/mine").returncode == 0
    out = zoo_run("verify", "mine")
    assert out.returncode == 1 and out.stdout.strip().endswith("convert it again with `zoo convert mine`"), out.stdout


def test_a_crop_larger_than_every_resized_image_is_refused_when_given(tmp_path, zoo_env, zoo_cmd, light):
    """Fresh processes: `zoo edit --crop 300 --resize 256` is refused then, not by every later extract."""
    import subprocess

    def zoo_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*zoo_cmd, *args], capture_output=True, text=True, timeout=120)

    assert zoo_run("add", str(light["onnx"]), "--name", "net", "--resize", "256", "--crop", "224").returncode == 0
    out = zoo_run("edit", "net", "--crop", "300")
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: --crop 300x300 is larger than every image after --resize 256; give a crop no larger than the "
        "resize, e.g. --resize 256 --crop 224"), out.stderr
    assert zoo_run("edit", "net", "--crop", "300x200").returncode == 0  # fits a landscape image
    assert zoo_run("edit", "net", "--resize", "224x224", "--crop", "224").returncode == 0
    assert zoo_run("add", str(light["onnx"]), "--name", "other", "--resize", "10x10", "--crop", "11x9").returncode == 1


def test_zoo_add_of_a_hub_ref_pins_it_as_zoo_add_does_on_the_command_line(hub):
    """`zoo.add("hf://...")` (the Python API) is `zoo add hf://...`, not a missing file "hf:/..." in the working folder."""
    hub.repo("acme/net", {"model.onnx": b"\x08\x07" + bytes(64)})
    model = zoo.add("hf://acme/net", name="net.hf")
    assert model.name == "net.hf" and model.meta["hub"]["repo"] == "acme/net" and model.revision
    with pytest.raises(zoo.errors.InputError, match=r"hf://acme/net is a Hub model: it takes only name=.*not task"):
        zoo.add("hf://acme/net", task="classification")
