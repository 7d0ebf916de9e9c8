"""The README's main job: the digits walkthrough, small in-process and full as the `zoo walkthrough` command."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

SMALL = dict(labels_per_class=3, base_epochs=3, head_epochs=4, layers=("pool1", "relu3"), unfreeze=(0, 1))


@pytest.mark.slow
def test_walkthrough_small(tmp_path):
    import onnxruntime as ort

    from zoo.catalog import open_catalog
    from zoo.demos.walkthrough import BASE_NAME, TRANSFER_NAME, run

    out = tmp_path / "out"
    messages: list[str] = []
    report = run(out, echo=messages.append, **SMALL)
    assert messages and report.train_rows == 15 and report.val_rows == 150
    assert report.first_cut == "relu3" and report.best_layer in ("pool1", "relu3")
    # the best cut's test accuracy is its sweep row's; every accuracy counts whole test images
    best = next(r for r in report.sweep_rows
                if (r["layer"], r["unfreeze"]) == (report.best_layer, report.best_unfreeze))
    assert report.best_test_accuracy == best["test_accuracy"]
    for accuracy in (report.scratch_test_accuracy, report.best_test_accuracy, report.first_test_accuracy):
        assert accuracy * report.test_rows == pytest.approx(round(accuracy * report.test_rows))
    assert report.onnx_agrees
    assert [(r["layer"], r["unfreeze"]) for r in report.sweep_rows] == [("pool1", 0), ("relu3", 0), ("relu3", 1)]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["transfer_model"] == TRANSFER_NAME
    catalog = open_catalog()
    base = catalog.get(BASE_NAME)
    assert base.source == "local" and base.meta["trained_by"] == "zoo walkthrough"
    session = ort.InferenceSession(catalog.get(TRANSFER_NAME).artifact("model").path)
    assert session.get_inputs()[0].shape[0] == "batch"  # exported with a dynamic batch
    text = report.text()
    assert "trained from scratch" in text and str(out / "sweep.png") in text
    # the loop closes: the saved model predicts image files, one row per file, as `zoo predict` does
    import csv

    with open(report.predictions) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report.predict_files == 20 and {r["label"] for r in rows} == {"5", "6", "7", "8", "9"}
    right = sum(r["class_1"] == r["label"] for r in rows)
    assert report.predict_accuracy == right / 20 and f"zoo predict {TRANSFER_NAME} -i" in text
    # the files' pixels reach the model as the [0, 1] arrays it was trained on (its spec's scale)
    import numpy as np
    from PIL import Image

    from zoo import load_extractor

    pixels = np.stack([np.asarray(Image.open(r["path"]), dtype=np.float32)[None] / 255 for r in rows])
    classes = np.asarray(open_catalog().get(TRANSFER_NAME).meta["classes"])
    on_arrays = classes[load_extractor(TRANSFER_NAME, -1)(pixels).argmax(1)]
    assert [str(c) for c in on_arrays] == [r["class_1"] for r in rows]
    # the README's second example finds them: image classifiers, on disk
    from click.testing import CliRunner

    from zoo.cli import cli

    found = CliRunner().invoke(cli, ["search", "--task", "image-classification", "--local", "--json"])
    assert found.exit_code == 0, found.output
    assert {BASE_NAME, TRANSFER_NAME} <= {m["name"] for m in json.loads(found.stdout)}

    # safe to run twice: models re-registered, features reused, same numbers
    again = run(out, **SMALL)
    assert again.features_reused
    assert again.sweep_rows[0]["val_accuracy"] == report.sweep_rows[0]["val_accuracy"]
    assert again.scratch_test_accuracy == report.scratch_test_accuracy
    assert catalog.names().count(BASE_NAME) == 1


@pytest.mark.slow
def test_zoo_walkthrough_command_full(tmp_path, zoo_cmd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("ZOO_CATALOG")  # the command works in the project catalog `zoo init` made here
    init = subprocess.run([*zoo_cmd, "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    proc = subprocess.run([*zoo_cmd, "walkthrough", "--out", "wt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "catalog.db").is_file() and (tmp_path / "wt" / "sweep.png").is_file()
    assert "best cut" in proc.stdout and "trained from scratch" in proc.stdout
    report = json.loads((tmp_path / "wt" / "report.json").read_text())
    assert report["onnx_agrees"]
    # the walkthrough's point: with 5 labels per class, reusing the network beats training it from scratch
    assert report["best_test_accuracy"] > report["scratch_test_accuracy"]
