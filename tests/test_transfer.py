"""Heads on cached features: the seed's loop, equality with training through the frozen base, saving."""
from __future__ import annotations

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.options import ExtractorOptions, TrainingConfig


@pytest.fixture(scope="module")
def base_and_onnx(tmp_path_factory):
    """A frozen torch base and the same network exported to ONNX."""
    import torch

    from helpers.transfer import export_mlp

    path = export_mlp(tmp_path_factory.mktemp("base") / "base.onnx", inputs=16, hidden=12, outputs=8)
    torch.manual_seed(0)  # export_mlp builds its net from seed 0: rebuild the same weights
    base = torch.nn.Sequential(
        torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU()
    ).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base, path


@pytest.fixture
def blobs():
    """Three separable classes in 16 dimensions."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = (centers[y] + rng.standard_normal((300, 16))).astype(np.float32)
    return x, y


def test_head_on_cached_features_equals_head_through_the_frozen_base(base_and_onnx, blobs):
    import torch

    from helpers.transfer import OrtExtractor
    from zoo import cache_features, fit_head
    from zoo.transfer import make_head

    base, path = base_and_onnx
    x, y = blobs
    features = cache_features(OrtExtractor(path), x, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(features, base(torch.from_numpy(x)).numpy(), atol=1e-5)
    config = TrainingConfig(epochs=6, batch_size=16, seed=3, patience=None)
    cached = fit_head(features, y, config, head=make_head(8, 3, (5,), seed=1))
    through = fit_head(x, y, config, base=base, head=make_head(8, 3, (5,), seed=1))
    for a, b in zip(cached.head.parameters(), through.head.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert [h["epoch"] for h in cached.history] == list(range(1, 7))
    assert cached.best_epoch == through.best_epoch
    for a, b in zip(cached.history, through.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]
    # the base never changed
    fresh = base_and_onnx[0]
    assert all(not p.requires_grad for p in fresh.parameters())


def test_fit_head_learns_and_stops_early(blobs):
    from zoo import fit_head

    # few noisy rows and a hidden layer: the validation loss turns up after a few epochs
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16))
    y = rng.integers(0, 3, 90)
    x = (centers[y] + rng.standard_normal((90, 16))).astype(np.float32)
    result = fit_head(x, y + 5, config=TrainingConfig(hidden=(64,), epochs=200, lr=0.01, patience=3, seed=0))
    assert result.classes == [5, 6, 7]
    assert result.val_accuracy > 0.8
    assert result.stopped_early and len(result.history) < 200
    assert len(result.history) == result.best_epoch + 3
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best
    assert result.accuracy(x, y + 5) > 0.8
    assert set(np.unique(result.predict(x[:20]))) <= {5, 6, 7}


def test_fit_head_is_deterministic(blobs):
    import torch

    from zoo import fit_head

    x, y = blobs
    a = fit_head(x, y, config=TrainingConfig(epochs=3, seed=7))
    b = fit_head(x, y, config=TrainingConfig(epochs=3, seed=7))
    for p, q in zip(a.head.parameters(), b.head.parameters()):
        assert torch.equal(p, q)
    assert a.history == b.history


def test_the_validation_split_is_stratified_and_explicit_validation_works(blobs):
    from zoo import fit_head
    from zoo.transfer import _split

    x, y = blobs
    train, val = _split(y, 0.2, 0)
    assert not set(train) & set(val) and len(train) + len(val) == len(y)
    for c in range(3):
        share = np.mean(y[val] == c) - np.mean(y == c)
        assert abs(share) < 0.05
    result = fit_head(x[:200], y[:200], validation=(x[200:], y[200:]), config=TrainingConfig(epochs=3))
    assert len(result.history) == 3 and "val_accuracy" in result.history[0]


def test_bad_labels_are_input_errors(blobs):
    from zoo import fit_head

    x, y = blobs
    with pytest.raises(InputError, match="299 labels for 300 rows"):
        fit_head(x, y[:-1])
    with pytest.raises(InputError, match="single class"):
        fit_head(x, np.zeros(len(x), int))
    with pytest.raises(InputError, match="validation label 9"):
        fit_head(x, y, validation=(x[:5], np.array([0, 1, 2, 9, 0])))
    with pytest.raises(InputError, match="1-D"):
        fit_head(x, y.reshape(-1, 1).repeat(2, 1)[:300])


def test_save_model_registers_an_onnx_model_that_matches_torch(base_and_onnx, tmp_path):
    import onnxruntime as ort
    import torch

    from zoo.catalog import open_catalog
    from zoo.transfer import compose, make_head, save_model

    base, _ = base_and_onnx
    model = compose(base, make_head(8, 3))
    record = save_model(model, "mine.mlp", input_shape=[16], classes=["a", "b", "c"], layout="NC")
    assert record.source == "local" and record.framework == "onnx"
    artifact = record.artifact("model")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    got = ort.InferenceSession(artifact.path).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-5)
    stored = open_catalog().get("mine.mlp")
    assert stored.meta["classes"] == ["a", "b", "c"] and stored.input.shape == [None, 16]
    from zoo.errors import DuplicateModelError

    with pytest.raises(DuplicateModelError):
        save_model(model, "mine.mlp", input_shape=[16])
    save_model(model, "mine.mlp", input_shape=[16], replace=True)
    # Names are checked as `zoo add` checks them, before anything is exported or written.
    with pytest.raises(InputError, match="model name '../mine' is not usable"):
        save_model(model, "../mine", input_shape=[16])
    from zoo import config

    assert not (config.cache_dir() / "mine.onnx").exists() and not open_catalog().exists("../mine")


@pytest.fixture
def digits_model():
    from helpers.transfer import register_digits_cnn

    return register_digits_cnn()


@pytest.fixture(scope="module")
def digits59():
    from zoo.demos.walkthrough import digits

    x, y = digits()
    return x[y >= 5][:120], y[y >= 5][:120]


def test_transfer_model_freezes_the_base_and_adds_a_head(digits_model):
    import torch

    from zoo import transfer_model

    model = transfer_model(digits_model.name, layer="relu3", num_classes=3, unfreeze=1)
    out = model(torch.zeros(4, 1, 8, 8))
    assert out.shape == (4, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or "fc1" in n for n in trainable)
    assert any("fc1" in n for n in trainable)
    assert not any("conv" in n for n in trainable)
    with pytest.raises(InputError, match="num_classes"):
        transfer_model(digits_model.name, layer="relu3")


def test_fine_tuning_on_cached_features_equals_training_the_unfrozen_model(digits_model, digits59):
    """unfreeze=1: features cached below fc1, fc1 + head trained on them == the whole model trained end to end."""
    import torch

    from zoo import fit_head, transfer_model
    from zoo.features import cache_features
    from zoo.extract import load_extractor
    from zoo.transfer import fine_tune_parts, make_head, trainable_head

    x, y = digits59
    cut, top = fine_tune_parts(digits_model.name, "relu3", 1)
    assert cut == "flatten" and top.trainable_layers() == ["/fc1/Gemm"]
    features = cache_features(load_extractor(digits_model.name, layer=cut), x, progress=False)
    config = TrainingConfig(epochs=4, batch_size=16, seed=0, patience=None, lr=3e-3)
    cached = fit_head(features, y, config, head=trainable_head(top, make_head(64, 5, seed=0)))
    whole = transfer_model(digits_model.name, layer="relu3", num_classes=5, unfreeze=1, seed=0)
    through = fit_head(x, y, config, head=whole)
    fc1_cached = dict(cached.head.top.named_parameters())
    fc1_whole = {n: p for n, p in whole.base.named_parameters() if p.requires_grad}
    assert fc1_cached.keys() == fc1_whole.keys()
    for n in fc1_cached:
        torch.testing.assert_close(fc1_cached[n], fc1_whole[n], atol=1e-4, rtol=1e-4)
    for a, b in zip(cached.head.head.parameters(), whole.head.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_unfreeze_counts_blocks_or_names_a_cut_point_and_says_what_trains(digits_model, capsys):
    from zoo import transfer_model
    from zoo.transfer import fine_tune_parts

    cut, top = fine_tune_parts(digits_model.name, "relu3", "pool2")  # everything above pool2
    assert cut == "pool2" and top.trainable_layers() == ["/fc1/Gemm"]
    cut, top = fine_tune_parts(digits_model.name, "relu3", 2)  # two blocks: conv2 and fc1
    assert cut == "pool1" and top.trainable_layers() == ["/conv2/Conv", "/fc1/Gemm"]
    with pytest.raises(InputError, match=r"'relu3' is not a cut point below relu3.*cut points: .*pool2"):
        fine_tune_parts(digits_model.name, "relu3", "relu3")
    with pytest.raises(InputError, match=r"unfreeze=9, but .* has 3 blocks"):
        fine_tune_parts(digits_model.name, "relu3", 9)
    model = transfer_model(digits_model.name, layer="relu3", num_classes=3, unfreeze="pool1")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[1] for n in trained if n.startswith("base.")} == {"conv2", "fc1"}
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"{count:,} of {total:,} parameters train; base: 2 of 3 blocks train (conv2, fc1)")


def test_train_caches_fits_and_saves_a_model_onnx_runs(digits_model, digits59, tmp_path):
    import onnxruntime as ort

    from zoo.catalog import open_catalog
    from zoo.transfer import train

    x, y = digits59
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    result = train(digits_model.name, tmp_path / "x.npy", tmp_path / "y.npy", new_name="mine.59",
                   training=TrainingConfig(unfreeze=1, epochs=3, progress=False),
                   extractor=ExtractorOptions(layer="relu2"))
    assert result.cut == "pool1"
    assert result.trainable_parameters == sum(p.numel() for p in result.fit.head.parameters() if p.requires_grad)
    assert result.total_parameters == sum(p.numel() for p in result.module.parameters())
    stored = open_catalog().get("mine.59")
    assert stored.meta["classes"] == [5, 6, 7, 8, 9] and stored.meta["base_model"] == digits_model.name
    logits = ort.InferenceSession(stored.artifact("model").path).run(None, {"input": x[:10]})[0]
    np.testing.assert_array_equal(
        np.asarray(result.fit.classes)[logits.argmax(1)],
        result.fit.predict(x[:10], base=result.module.base),
    )
    # a second model reuses the cached features
    again = train(digits_model.name, tmp_path / "x.npy", y, new_name="mine.59", replace=True,
                  training=TrainingConfig(unfreeze=1, epochs=1, progress=False),
                  extractor=ExtractorOptions(layer="relu2"))
    assert again.cache_key == result.cache_key
    with pytest.raises(InputError, match="119 labels for 120 rows"):
        train(digits_model.name, tmp_path / "x.npy", y[:-1], new_name="other",
              training=TrainingConfig(progress=False), extractor=ExtractorOptions(layer="relu2"))


def test_zoo_train_command(digits_model, digits59, tmp_path):
    import json

    from click.testing import CliRunner

    from zoo.cli import cli

    x, y = digits59
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "short.npy", y[:5])
    runner = CliRunner()
    args = ["train", digits_model.name, "--layer", "relu3", "-d", str(tmp_path / "x.npy"), "--epochs", "2", "-q"]
    done = runner.invoke(cli, [*args, "-y", str(tmp_path / "y.npy"), "--name", "cli.59", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["model"] == "cli.59" and len(payload["history"]) == 2
    assert 0 < payload["trainable_parameters"] < payload["total_parameters"]
    text = runner.invoke(cli, [*args, "-y", str(tmp_path / "y.npy"), "--name", "cli.text", "--unfreeze", "pool2"])
    assert text.exit_code == 0, text.output
    assert "trained " in text.stdout and " parameters" in text.stdout
    bad = runner.invoke(cli, [*args, "-y", str(tmp_path / "short.npy"), "--name", "cli.bad"])
    assert bad.exit_code == 1 and "5 labels for 120 rows" in bad.output
    missing = runner.invoke(cli, [*args, "--name", "cli.bad"])
    assert missing.exit_code == 1 and "--labels is missing" in missing.output


def test_train_on_an_image_folder_takes_its_labels_from_the_folders(digits_model, digits59, tmp_path):
    from PIL import Image

    from zoo.transfer import train

    x, y = digits59
    for i, (image, label) in enumerate(zip(x[:40], y[:40])):
        folder = tmp_path / "imgs" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    (tmp_path / "imgs" / "digit5" / "notes.txt").write_text("not an image")
    result = train(digits_model.name, tmp_path / "imgs", None, new_name="folder.59",
                   training=TrainingConfig(epochs=2, progress=False), extractor=ExtractorOptions(layer="pool2"))
    assert result.fit.classes == [0, 1, 2, 3, 4]  # class indices of digit5..digit9
    assert result.model.meta["classes"] == ["digit5", "digit6", "digit7", "digit8", "digit9"]
    from zoo.features import FeatureCache

    entry = FeatureCache().load(result.cache_key)
    assert entry.classes == ["digit5", "digit6", "digit7", "digit8", "digit9"]
    assert len(entry.features) == 40 and [s["path"][-9:] for s in entry.skipped] == ["notes.txt"]


def test_features_too_large_for_ram_are_read_per_batch_with_the_same_result(blobs, tmp_path, monkeypatch):
    import torch

    import zoo.transfer
    from zoo import fit_head

    x, y = blobs
    np.save(tmp_path / "f.npy", x)
    features = np.load(tmp_path / "f.npy", mmap_mode="r")
    in_ram = fit_head(features, y, config=TrainingConfig(epochs=3, seed=1))
    monkeypatch.setattr(zoo.transfer, "IN_MEMORY_BYTES", 0)
    from_disk = fit_head(features, y, config=TrainingConfig(epochs=3, seed=1))
    for p, q in zip(in_ram.head.parameters(), from_disk.head.parameters()):
        torch.testing.assert_close(p, q)
    assert in_ram.history == from_disk.history


def test_zoo_train_on_error_raise_stops_at_an_unreadable_file(digits_model, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from zoo.cli import cli

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG truncated")
    args = ["train", digits_model.name, "--layer", "pool2", "-d", str(tmp_path / "imgs"), "--epochs", "1",
            "--val-fraction", "0", "-q"]
    strict = CliRunner().invoke(cli, [*args, "--name", "strict", "--on-error", "raise"])
    assert strict.exit_code == 1 and "broken.png" in strict.output and "--on-error skip" in strict.output
    old_spelling = CliRunner().invoke(cli, [*args, "--name", "strict", "--strict-images"])
    assert old_spelling.exit_code == 1 and "broken.png" in old_spelling.output
    lenient = CliRunner().invoke(cli, [*args, "--name", "lenient", "--json"])
    assert lenient.exit_code == 0, lenient.output


def test_fit_head_takes_plain_keywords_or_a_training_config(blobs):
    import warnings

    from zoo import fit_head
    from zoo.errors import NotConvergedWarning, UnknownOptionError

    x, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        plain = fit_head(x, y, epochs=3, lr=0.01, seed=2, progress=False)
        configured = fit_head(x, y, TrainingConfig(epochs=3, lr=0.01, seed=2, progress=False))
        overridden = fit_head(x, y, TrainingConfig(epochs=9, lr=0.01, seed=2), epochs=3, progress=False)
    assert plain.history == configured.history == overridden.history and len(plain.history) == 3
    with pytest.raises(UnknownOptionError, match="closest: epochs"):
        fit_head(x, y, epoch=3)
    assert "lr" in __import__("inspect").signature(fit_head).parameters  # documented in help() and IDEs


def test_heads_standardize_their_features_and_say_when_not_converged(blobs):
    import torch

    from zoo import fit_head
    from zoo.errors import NotConvergedWarning

    x, y = blobs
    scaled = x * 1000 + 5000  # features on a scale no fixed learning rate suits
    with pytest.warns(NotConvergedWarning, match="not converged: the best epoch is the last one"):
        fit = fit_head(scaled[:200], y[:200], epochs=2, patience=None, progress=False,
                       validation=(scaled[200:], y[200:]))
    assert not fit.converged and "raise epochs=" in fit.notes[0]
    first = next(m for m in fit.head.modules() if type(m).__name__ == "Standardize")  # fitted on the training rows
    torch.testing.assert_close(first.mean, torch.from_numpy(scaled[:200].mean(0)), rtol=1e-5, atol=0.0)
    assert bool(first.fitted)
    raw = fit_head(scaled, y, epochs=2, patience=None, standardize=False, progress=False)
    assert not any(type(m).__name__ == "Standardize" for m in raw.head.modules())


def test_the_lineage_of_a_head_is_not_taken_for_a_cut_that_kept_the_whole_graph(tmp_path, zoo_env, zoo_cmd, light):
    """Fresh processes: features at the last layer first (a cut that keeps every node has the converted
    model's bytes, so its digest), then a head at another layer: its chain goes down to the conversion."""
    import subprocess

    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))
    np.save(tmp_path / "y.npy", np.arange(8) % 2)
    script = str(light["torchscript"])
    for command in (["extract", script, "-l", "-1", "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy")],
                    ["train", "tiny_script", "-l", "fc", "-d", str(tmp_path / "x.npy"), "-y", str(tmp_path / "y.npy"),
                     "--name", "head", "--epochs", "1", "-q"],
                    ["lineage", "head"]):
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    chain = [line.strip() for line in out.stdout.splitlines() if "<-" in line]
    assert chain[2].startswith("<- cut at fc of tiny_script") and "(cycle)" not in out.stdout, out.stdout
    assert chain[3].startswith("<- tiny_script.onnx (conversion of tiny_script)"), out.stdout


def test_replace_never_replaces_a_published_model(tmp_path, zoo_env, zoo_cmd, light):
    """A fresh `zoo train --name bvlc_alexnet --replace` is refused before training: the caffe zoo's entry stays
    (replacing it made every later `zoo source sync caffe` fail on the clash)."""
    import subprocess

    np.save(tmp_path / "x.npy", np.ones((8, 4), np.float32))
    np.save(tmp_path / "y.npy", np.arange(8) % 2)
    out = subprocess.run([*zoo_cmd, "train", str(light["onnx"]), "-l", "-1", "-d", str(tmp_path / "x.npy"),
                          "-y", str(tmp_path / "y.npy"), "--name", "bvlc_alexnet", "--replace"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
        "error: model 'bvlc_alexnet' is in the catalog from source 'caffe'; replace only replaces your own models, "
        "so pick another name"), out.stderr
    sync = subprocess.run([*zoo_cmd, "source", "sync", "caffe"], capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stderr
