"""What the user is told is what happened: unreadable inputs are counted and named, never dropped in silence.

Built here: image folders where some files are not images (garbage bytes, a truncated PNG, a
file name with a terminal escape in it).
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zoo.cli import cli


@pytest.fixture
def digits_model():
    from helpers.transfer import register_digits_cnn

    return register_digits_cnn()


def _folder(root, good: int, bad: list[str]):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        Image.new("L", (8, 8), color=30 * i).save(root / f"{i}.png")
    for name in bad:
        (root / name).write_bytes(b"\x89PNG truncated" if name.endswith(".png") else b"not an image")
    return root


def test_zoo_extract_counts_and_names_every_skipped_file(tmp_path, digits_model):
    bad = ["broken.png", "notes.jpg", "evil\x1b]0;title\x07.png"]
    folder = _folder(tmp_path / "imgs", 1, bad)
    args = ["extract", digits_model.name, "-l", "pool2", "-i", str(folder), "-o", str(tmp_path / "f.npy")]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "skipped 3 of 4 inputs that cannot be read" in text.output
    assert "broken.png" in text.output and "notes.jpg" in text.output
    assert "\x1b" not in text.output and "\x07" not in text.output and "evil\\x1b]0;title\\x07.png" in text.output
    data = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert data["rows"] == 1 and data["skipped_count"] == 3
    assert sorted(s["path"].rsplit("/", 1)[1] for s in data["skipped"]) == sorted(bad)
    assert all(s["reason"] for s in data["skipped"])


def test_when_every_file_is_unreadable_the_error_lists_them(tmp_path, digits_model):
    folder = _folder(tmp_path / "bad", 0, ["a.png", "b.jpg"])
    result = CliRunner().invoke(cli, ["extract", digits_model.name, "-l", "pool2", "-i", str(folder),
                                      "-o", str(tmp_path / "f.npy")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: none of the 2 inputs could be read")
    assert "a.png (" in line and "b.jpg (" in line


def test_train_and_sweep_say_which_files_they_left_out(tmp_path, digits_model):
    for label, bad in (("a", ["torn.png"]), ("b", ["x.jpg", "y.jpg"])):
        _folder(tmp_path / "imgs" / label, 3, bad)
    common = ["-d", str(tmp_path / "imgs"), "--epochs", "1", "--val-fraction", "0", "-q"]
    train = CliRunner().invoke(cli, ["train", digits_model.name, "--layer", "pool2", "--name", "t", *common])
    assert train.exit_code == 0, train.output
    assert "skipped 3 inputs that cannot be read" in train.output and "torn.png" in train.output
    data = json.loads(CliRunner().invoke(cli, ["train", digits_model.name, "--layer", "pool2", "--name", "t2",
                                               *common, "--json"]).stdout)
    assert data["skipped_count"] == 3 and len(data["skipped"]) == 3
    sweep = CliRunner().invoke(cli, ["sweep", digits_model.name, "--layers", "pool1,pool2", *common, "--json"])
    assert sweep.exit_code == 0, sweep.output
    assert sorted(s["path"].rsplit("/", 1)[1] for s in json.loads(sweep.stdout)["skipped_files"]) == [
        "torn.png", "x.jpg", "y.jpg"]


def test_one_rule_for_unreadable_images_in_the_extractor_and_the_feature_cache(tmp_path, digits_model):
    import warnings

    import numpy as np

    from zoo import load_extractor
    from zoo.errors import InputError, SkippedInputsWarning
    from zoo.features import extract_features

    folder = _folder(tmp_path / "imgs", 3, ["broken.png"])
    extractor = load_extractor(digits_model.name, "pool2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = extractor(folder)
    [warning] = [w.message for w in caught if isinstance(w.message, SkippedInputsWarning)]
    cached = extract_features(extractor, folder, progress=False)
    # the same rows, the same file skipped, the same reason, whichever way the folder went in
    np.testing.assert_array_equal(rows, cached.features)
    assert [(s["path"], s["reason"]) for s in warning.skipped] == [(s["path"], s["reason"]) for s in cached.skipped]
    assert warning.skipped[0]["path"].endswith("broken.png") and "broken.png" in str(warning)
    strict = load_extractor(digits_model.name, "pool2", on_error="raise")
    for call in (lambda: strict(folder), lambda: extract_features(extractor, folder, on_error="raise", progress=False)):
        with pytest.raises(InputError, match="cannot read image .*broken.png"):
            call()
