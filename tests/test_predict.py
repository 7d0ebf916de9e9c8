"""The last step of the loop and outputs that line up: `zoo predict` on a model trained here, and
`zoo extract`'s row -> file index.

Built here: the walkthrough's CNN (briefly trained on digits 0-4) registered as the user's own
model, a class folder of digits 5-9 as PNG files with a broken PNG and a text file among them.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from zoo.cli import cli


@pytest.fixture
def digits_model():
    from helpers.transfer import register_digits_cnn

    return register_digits_cnn(train_epochs=3)


@pytest.fixture
def folder(tmp_path):
    """digits 5-7 as 8x8 PNGs, one sub-folder per class, with two files that are not images."""
    from PIL import Image

    from zoo.demos.walkthrough import digits

    x, y = digits()
    keep = np.isin(y, [5, 6, 7])
    for i, (image, label) in enumerate(zip(x[keep][:45], y[keep][:45])):
        sub = tmp_path / "imgs" / f"digit{label}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).astype(np.uint8), mode="L").save(sub / f"{i:02d}.png")
    (tmp_path / "imgs" / "digit6" / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "imgs" / "digit7" / "notes.jpg").write_bytes(b"not an image")
    return tmp_path / "imgs"


def test_zoo_predict_on_a_model_trained_here(digits_model, folder, tmp_path):
    from zoo.catalog import open_catalog

    runner = CliRunner()
    trained = runner.invoke(cli, ["train", digits_model.name, "--layer", "pool2", "-d", str(folder), "--name", "pets",
                                  "--epochs", "30", "--lr", "0.01", "-q"])
    assert trained.exit_code == 0, trained.output
    assert "torn.png" in trained.output  # -q still names what it left out
    meta = open_catalog().get("pets").meta
    assert meta["outputs"] == "logits" and meta["classes"] == ["digit5", "digit6", "digit7"]
    assert meta["standardized"] is True and meta["converged"] in (True, False)

    result = runner.invoke(cli, ["predict", "pets", "-i", str(folder), "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    rows = table["rows"]
    assert len(rows) == 47 and [r["input"] for r in rows] == list(range(47))  # one row per file, in order
    skipped = {r["path"].rsplit("/", 1)[1]: r["skipped"] for r in rows if r["skipped"]}
    assert sorted(skipped) == ["notes.jpg", "torn.png"] and all(skipped.values())
    assert table["skipped_count"] == 2 and table["scores"] == "softmax of logits"
    read = [r for r in rows if not r["skipped"]]
    assert all(r["class_1"] in meta["classes"] and r["class_2"] in meta["classes"] for r in read)
    assert all(1 >= r["probability_1"] >= r["probability_2"] >= 0 for r in read)
    assert all(r["label"] == r["path"].split("/")[-2] for r in rows)  # a class folder labels its rows
    assert table["accuracy"] > 0.6  # a real head, not noise: three classes

    # the probabilities are the softmax of what the saved model outputs for that file
    import zoo

    first = read[0]
    logits = zoo.load_extractor("pets", layer=-1)([first["path"]])[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert first["probability_1"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert first["class_1"] == meta["classes"][int(logits.argmax())]

    text = runner.invoke(cli, ["predict", "pets", "-i", str(folder)])
    assert text.exit_code == 0, text.output
    assert "skipped 2 of 47 inputs that cannot be read (their rows say why)" in text.stdout
    assert "accuracy" in text.stdout and "notes.jpg" in text.stdout

    for suffix in ("csv", "json", "parquet"):
        out = tmp_path / f"preds.{suffix}"
        written = runner.invoke(cli, ["predict", "pets", "-i", str(folder), "-o", str(out), "--top", "2"])
        assert written.exit_code == 0, written.output
        assert f"wrote 47 predictions to {out}" in written.stdout
    with open(tmp_path / "preds.csv") as f:
        lines = list(csv.DictReader(f))
    assert [r["path"] for r in lines] == [r["path"] for r in rows]
    assert [r["skipped"] for r in lines if r["skipped"]] == [r["skipped"] for r in rows if r["skipped"]]
    assert json.loads((tmp_path / "preds.json").read_text())["rows"] == rows
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "preds.parquet").column("class_1").to_pylist() == [r["class_1"] for r in rows]

    strict = runner.invoke(cli, ["predict", "pets", "-i", str(folder), "--on-error", "raise"])
    assert strict.exit_code == 1 and "cannot read image" in strict.output and "--on-error skip" in strict.output
    refused = runner.invoke(cli, ["predict", "pets", "-i", str(folder), "-o", str(tmp_path / "preds.txt")])
    assert refused.exit_code == 1 and "give a file ending in .csv, .json, .parquet" in refused.output


def test_zoo_predict_in_python_returns_a_table(digits_model):
    import zoo
    from zoo.demos.walkthrough import digits

    x, y = digits()
    fit = zoo.train(digits_model.name, x[y >= 5][:100], y[y >= 5][:100], name="digits59", layer="pool2",
                    epochs=20, lr=0.01, progress=False)
    table = zoo.predict("digits59", x[y >= 5][100:140], y[y >= 5][100:140], top=3, progress=False)
    assert len(table) == 40 and table.columns[:3] == ["input", "path", "label"]
    assert table["class_1"][:3] == [r["class_1"] for r in table][:3]
    assert set(table["class_1"]) <= set(fit.fit.classes) and table.accuracy > 0.5
    assert table["path"] == [None] * 40 and table.skipped == []  # array rows: no files
    frame = table.to_pandas()
    assert list(frame.columns) == table.columns and len(frame) == 40
    with pytest.raises(KeyError, match="no column 'klass'"):
        table["klass"]


def test_extract_lines_its_rows_up_with_the_files(digits_model, folder, tmp_path):
    runner = CliRunner()
    npz = tmp_path / "f.npz"
    done = runner.invoke(cli, ["extract", digits_model.name, "-l", "pool2", "-i", str(folder), "-o", str(npz)])
    assert done.exit_code == 0, done.output
    assert "skipped 2 of 47 inputs that cannot be read" in done.stdout and "torn.png" in done.stdout
    with np.load(npz) as data:
        assert data["features"].shape == (45, 32, 2, 2) and len(data["paths"]) == 45
        assert list(data["classes"]) == ["digit5", "digit6", "digit7"]
        # row i is file paths[i] of class classes[labels[i]]
        assert all(str(p).split("/")[-2] == data["classes"][k] for p, k in zip(data["paths"], data["labels"]))
        assert sorted(str(p).rsplit("/", 1)[1] for p in data["skipped_paths"]) == ["notes.jpg", "torn.png"]
        assert all(data["skipped_reasons"])
        features = data["features"]

    npy, index = tmp_path / "f.npy", tmp_path / "rows.csv"
    done = runner.invoke(cli, ["extract", digits_model.name, "-l", "pool2", "-i", str(folder), "-o", str(npy),
                               "--index-out", str(index), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["index"] == str(index)
    with open(index) as f:
        lines = list(csv.DictReader(f))
    assert [line["input"] for line in lines] == [str(i) for i in range(47)]  # every input file, in order
    assert [line["row"] for line in lines if line["skipped"]] == ["", ""]
    rows = [line for line in lines if not line["skipped"]]
    assert [int(line["row"]) for line in rows] == list(range(45))
    np.testing.assert_array_equal(np.load(npy), features)
    default = runner.invoke(cli, ["extract", digits_model.name, "-l", "pool2", "-i", str(folder),
                                  "-o", str(tmp_path / "g.npy")])
    assert default.exit_code == 0 and (tmp_path / "g.index.csv").is_file()


def test_a_cataloged_classifier_gets_its_published_labels_and_its_softmax_is_not_applied_twice(
        fault_server, tmp_path):
    import hashlib

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import zoo
    from zoo.catalog import open_catalog
    from zoo.records import Artifact, Model

    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"], name="fc"), helper.make_node("Softmax", ["z"], ["p"], name="prob")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])], [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cls.onnx")
    labels = b"tabby cat\ngolden retriever\nsports car\n"
    fault_server.add("/synset.txt", labels)
    open_catalog().add_model(Model(name="three.onnx", framework="onnx", format="onnx", artifacts=[
        Artifact(role="model", filename="cls.onnx", path=str(tmp_path / "cls.onnx"),
                 sha256=hashlib.sha256((tmp_path / "cls.onnx").read_bytes()).hexdigest()),
        Artifact(role="labels", filename="synset.txt", urls=[fault_server.url("/synset.txt")],
                 checksum="sha256:" + hashlib.sha256(labels).hexdigest())]))
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    table = zoo.predict("three.onnx", x, top=3, progress=False)
    assert table.scores == "probabilities" and table.classes == ["tabby cat", "golden retriever", "sports car"]
    expected = np.exp(x @ weights) / np.exp(x @ weights).sum(1, keepdims=True)
    assert table["probability_1"] == pytest.approx(list(expected.max(1)), abs=1e-5)  # the model's own, as is
    assert table["class_1"] == [table.classes[i] for i in expected.argmax(1)]


def test_several_files_each_with_its_own_input_flag(digits_model, folder, tmp_path):
    files = sorted(str(p) for p in (folder / "digit5").glob("*.png"))[:2] + [str(folder / "digit6" / "torn.png")]
    argv = ["predict", digits_model.name, "--json"] + [arg for f in files for arg in ("-i", f)]
    done = CliRunner().invoke(cli, argv)
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)["rows"]
    assert [r["path"] for r in rows] == files and [bool(r["skipped"]) for r in rows] == [False, False, True]
    extracted = CliRunner().invoke(cli, ["extract", digits_model.name, "-l", "pool2", "-i", files[0], "-i", files[1],
                                         "-o", str(tmp_path / "two.npy")])
    assert extracted.exit_code == 0 and np.load(tmp_path / "two.npy").shape == (2, 32, 2, 2), extracted.output
    mixed = CliRunner().invoke(cli, ["predict", digits_model.name, "-i", files[0], "-i", str(tmp_path / "two.npy")])
    assert mixed.exit_code == 1 and "several --input files must be images" in mixed.output
    gone = CliRunner().invoke(cli, ["predict", digits_model.name, "-i", files[0], "-i", str(tmp_path / "gone.png")])
    assert gone.exit_code == 1 and "gone.png: no such file" in gone.output


def test_a_multi_layer_extract_lines_up_and_names_its_skipped_files(digits_model, folder, tmp_path):
    out = tmp_path / "two.npz"
    done = CliRunner().invoke(cli, ["extract", digits_model.name, "-l", "pool1", "-l", "pool2", "-i",
                                    str(folder / "digit6"), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "skipped 1 of" in done.stdout and "torn.png" in done.stdout
    with np.load(out) as data:
        assert len(data["paths"]) == len(data["pool1"]) == len(data["pool2"]) == 15
        assert [str(p).rsplit("/", 1)[1] for p in data["skipped_paths"]] == ["torn.png"]
