"""Greedy layer-wise pretraining: training, freezing, saving to the catalog, CLI, bad input."""
from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import zoo
from zoo.errors import DuplicateModelError, InputError
from zoo.demos.digits import digits_check
from zoo.options import PretrainConfig, TrainingConfig
from zoo.pretraining import accuracy, finetune, fresh_stack, pretrain


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """400 real 8x8 digit images scaled to [0, 1]: Bernoulli-style inputs."""
    from sklearn.datasets import load_digits

    return (load_digits().data[:400] / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def real_valued(digits) -> np.ndarray:
    """The same rows on another scale with an offset: Gaussian visible units."""
    return digits * 40.0 - 7.0


def shuffled_columns(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each column permuted on its own: the same per-feature values, no structure between them."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(column) for column in X.T], axis=1)


# --- training ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "options",
    [{}, {"denoise": 0.3}, {"sparsity": (0.1, 0.5)}, {"tied": False}],
    ids=["plain", "denoising", "sparse", "untied"],
)
def test_autoencoder_reconstruction_error_falls_in_every_layer(digits, options):
    result = pretrain(digits, [32, 16], "autoencoder", PretrainConfig(epochs=6, progress=False, **options))
    assert [len(errors) for errors in result.losses] == [6, 6]
    for errors in result.losses:
        assert errors[-1] < 0.8 * errors[0], errors
    assert result.transform(digits[:3]).shape == (3, 16)


@pytest.mark.parametrize("data", ["digits", "real_valued"])
def test_rbm_reconstruction_error_falls_in_every_layer(request, data):
    X = request.getfixturevalue(data)
    result = pretrain(X, [32, 16], "rbm", config=PretrainConfig(epochs=6, cd_k=2, lr=0.02, progress=False))
    assert result.visible == ("bernoulli" if data == "digits" else "gaussian")
    for errors in result.losses:
        assert errors[-1] < 0.9 * errors[0], errors


@pytest.mark.parametrize("data", ["digits", "real_valued"])
def test_rbm_free_energy_of_training_rows_is_below_that_of_noise(request, data):
    X = request.getfixturevalue(data)
    result = pretrain(X, [32, 16], "rbm", config=PretrainConfig(epochs=6, progress=False))
    # Noise with the data's own per-feature values: only learnt structure tells them apart.
    noise = shuffled_columns(X)
    assert result.free_energy(X).mean() < result.free_energy(noise).mean()
    untrained = pretrain(X, [32], "rbm", config=PretrainConfig(epochs=1, lr=1e-9, progress=False))
    gap = result.free_energy(noise).mean() - result.free_energy(X).mean()
    assert gap > 5 * abs(untrained.free_energy(noise).mean() - untrained.free_energy(X).mean())


def test_zoo_pretrain_is_callable_even_after_importing_the_module(digits):
    importlib.import_module("zoo.pretraining")
    result = zoo.pretrain(digits, [4], "rbm", config=PretrainConfig(epochs=1, progress=False))
    assert result.layers == [4]


def test_free_energy_is_for_rbms_only(digits):
    result = pretrain(digits, [8], "autoencoder", config=PretrainConfig(epochs=1, progress=False))
    with pytest.raises(InputError, match="RBM"):
        result.free_energy(digits)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "recomputed"])
@pytest.mark.parametrize("method", ["autoencoder", "rbm"])
def test_lower_layers_stay_unchanged_while_an_upper_layer_trains(digits, method, cache):
    one = pretrain(digits, [24], method, config=PretrainConfig(epochs=3, seed=5, cache=cache, progress=False))
    three = pretrain(digits, [24, 12, 6], method, config=PretrainConfig(epochs=3, seed=5, cache=cache, progress=False))
    # Layer 1 trained alone and layer 1 after two more layers trained on top are identical.
    assert torch.equal(one.stack.layer1[0].weight, three.stack.layer1[0].weight)
    assert torch.equal(one.stack.layer1[0].bias, three.stack.layer1[0].bias)
    assert torch.equal(one.units[0].weight, three.units[0].weight)
    assert one.losses[0] == three.losses[0]
    assert not any(p.requires_grad for unit in three.units for p in unit.parameters())


def test_cached_and_recomputed_inputs_train_the_same_stack(digits):
    cached = pretrain(digits, [24, 12], "autoencoder", config=PretrainConfig(epochs=3, seed=2, progress=False))
    rerun = pretrain(digits, [24, 12], "autoencoder",
                     config=PretrainConfig(epochs=3, seed=2, cache=False, progress=False))
    np.testing.assert_allclose(cached.losses, rerun.losses, rtol=1e-4)
    np.testing.assert_allclose(cached.transform(digits), rerun.transform(digits), atol=1e-4)


def test_large_cached_outputs_go_to_a_memmap_that_is_removed_afterwards(digits, monkeypatch, zoo_env):
    in_memory = pretrain(digits, [16, 8], "rbm", config=PretrainConfig(epochs=2, progress=False))
    monkeypatch.setattr(importlib.import_module("zoo.pretraining"), "MEMMAP_BYTES", 0)
    on_disk = pretrain(digits, [16, 8], "rbm", config=PretrainConfig(epochs=2, progress=False))
    assert on_disk.losses == in_memory.losses
    assert torch.equal(on_disk.stack.layer2[0].weight, in_memory.stack.layer2[0].weight)
    cache = zoo_env / "cache"
    assert cache.is_dir() and not list(cache.glob("pretrain-*"))


def test_same_seed_same_stack_other_seed_other_stack(digits):
    threads = torch.get_num_threads()
    first = pretrain(digits, [16], "rbm", config=PretrainConfig(epochs=2, seed=1, progress=False))
    assert torch.get_num_threads() == threads  # one thread while training, then restored
    again = pretrain(digits, [16], "rbm", config=PretrainConfig(epochs=2, seed=1, progress=False))
    other = pretrain(digits, [16], "rbm", config=PretrainConfig(epochs=2, seed=2, progress=False))
    assert torch.equal(first.stack.layer1[0].weight, again.stack.layer1[0].weight)
    assert not torch.equal(first.stack.layer1[0].weight, other.stack.layer1[0].weight)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_each_layer_on_a_terminal_and_is_silent_when_off(digits, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    pretrain(digits, [8, 4], "rbm", config=PretrainConfig(epochs=2, progress=False))
    assert terminal.getvalue() == ""
    pretrain(digits, [8, 4], "rbm", config=PretrainConfig(epochs=2, progress=True))
    err = terminal.getvalue()
    assert "layer 1/2 rbm 64->8" in err and "layer 2/2 rbm 8->4" in err
    assert "reconstruction_error=" in err


def test_no_progress_bar_when_stderr_is_not_a_terminal(digits, capsys):
    pretrain(digits, [8, 4], "rbm", config=PretrainConfig(epochs=2, progress=True))  # capsys: stderr is a pipe-like buffer
    assert capsys.readouterr() == ("", "")


# --- saving to the catalog ---------------------------------------------------------------------

def _onnx_outputs(path: str, X: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


@pytest.mark.parametrize("data", ["digits", "real_valued"])
def test_saved_stack_reloads_from_the_catalog_with_the_same_outputs(request, data, zoo_env):
    import onnx

    from zoo.catalog import open_catalog

    X = request.getfixturevalue(data)
    result = pretrain(X, [20, 10], "rbm", name="my-base", config=PretrainConfig(epochs=2, seed=3, progress=False))
    model = open_catalog().get("my-base")
    assert (model.framework, model.format, model.source, model.task) == (
        "onnx", "onnx", "local", "feature-extraction")
    assert model.input.shape == [None, 64] and model.input.layout == "NC"
    assert model.meta["pretrained"]["method"] == "rbm"
    assert model.meta["pretrained"]["layers"] == [20, 10]
    assert model.meta["pretrained"]["seed"] == 3
    assert model.meta["pretrained"]["losses"] == result.losses
    artifact = model.artifact("model")
    assert artifact.path == str(zoo_env / "cache" / "models" / "my-base" / "my-base.onnx")
    import hashlib

    with open(artifact.path, "rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() == artifact.sha256

    graph = onnx.load(artifact.path).graph
    tensors = {out for node in graph.node for out in node.output}
    assert {"layer1", "layer2"} <= tensors and [o.name for o in graph.output] == ["layer2"]
    for rows in (X[:1], X[:37]):  # the batch axis is dynamic
        with torch.no_grad():
            expected = result.stack(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(_onnx_outputs(artifact.path, rows), expected, atol=1e-5)


def test_a_taken_name_is_refused_before_training_unless_replaced(digits):
    pretrain(digits, [8], "rbm", name="base", config=PretrainConfig(epochs=1, progress=False))
    with pytest.raises(DuplicateModelError, match="base"):
        pretrain(digits, [8], "rbm", name="base", config=PretrainConfig(epochs=1, progress=True))
    replaced = pretrain(digits, [8, 4], "rbm", name="base", replace=True,
                        config=PretrainConfig(epochs=1, progress=False))
    from zoo.catalog import open_catalog

    assert open_catalog().get("base").meta["pretrained"]["layers"] == [8, 4] == replaced.layers


def test_saved_stack_cuts_with_load_extractor(digits):
    extract = pytest.importorskip("zoo.extract", reason="zoo.extract (cutting models) is not built yet")
    result = pretrain(digits, [20, 10], "autoencoder", name="ae-base", config=PretrainConfig(epochs=2, progress=False))
    names = [layer.name for layer in extract.layers("ae-base")]
    assert "layer1" in names and "layer2" in names
    extractor = extract.load_extractor("ae-base", layer="layer1")
    np.testing.assert_allclose(extractor(digits[:9]), result.transform(digits[:9], layer=1), atol=1e-5)


def test_saved_stack_fine_tunes_through_zoo_transfer(real_valued):
    transfer = pytest.importorskip("zoo.transfer", reason="zoo.transfer (fine-tuning) is not built yet")
    result = pretrain(real_valued, [20, 10], "rbm", name="rbm-base", config=PretrainConfig(epochs=2, progress=False))
    model = transfer.transfer_model("rbm-base", layer="layer2", num_classes=10, unfreeze=2)
    rows = torch.from_numpy(real_valued[:11])
    with torch.no_grad():
        np.testing.assert_allclose(model.base(rows).numpy(), result.transform(real_valued[:11]),
                                   atol=1e-5)
        assert model(rows).shape == (11, 10)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("layer1" in name for name in trainable) and any("layer2" in name for name in trainable)


# --- fine-tuning and the digits check ----------------------------------------------------------

def test_finetune_trains_a_head_on_top_of_a_copy_of_the_stack(digits):
    from sklearn.datasets import load_digits

    y = load_digits().target[:400]
    result = pretrain(digits, [32], "autoencoder", config=PretrainConfig(epochs=3, progress=False))
    before = result.stack.layer1[0].weight.clone()
    model = finetune(result, digits[:200], y[:200], config=TrainingConfig(epochs=30))
    assert torch.equal(result.stack.layer1[0].weight, before)  # the pretrained stack is untouched
    assert model.head.out_features == 10
    assert accuracy(model, digits[:200], y[:200]) > 0.8
    with pytest.raises(InputError, match="integer class labels"):
        finetune(result, digits[:10], np.zeros(9, dtype=int))
    assert fresh_stack(64, [32]).layer1[0].weight.shape == (32, 64)


@pytest.mark.slow
def test_pretraining_beats_training_from_scratch_with_five_percent_of_the_digit_labels():
    # docs/pretrain.md has all three seeds; on seed 1 scratch scores 0.839, pretrained 0.874-0.881.
    report = digits_check(seeds=(1,))
    run = report["runs"][0]
    assert run["labels"] == 62 and report["test_rows"] == 540
    assert run["autoencoder"] > run["scratch"] + 0.02
    assert run["rbm"] > run["scratch"] + 0.02


# --- bad input -----------------------------------------------------------------------------------

GOOD = np.random.default_rng(0).random((20, 5)).astype(np.float32)


def _with_nan() -> np.ndarray:
    X = GOOD.copy()
    X[3, 2] = np.nan
    return X


def _with_inf() -> np.ndarray:
    X = GOOD.copy()
    X[0, 4] = np.inf
    return X


@pytest.mark.parametrize(
    ("X", "kwargs", "message"),
    [
        (_with_nan(), {}, r"NaN or infinite values \(first at row 3, column 2\)"),
        (_with_inf(), {}, r"1 NaN or infinite values \(first at row 0, column 4\)"),
        (GOOD[0], {}, r"2-D \(rows, features\); got shape \(5,\)"),
        (GOOD.reshape(20, 5, 1), {}, r"got shape \(20, 5, 1\)"),
        (np.empty((0, 5)), {}, r"X is empty \(shape \(0, 5\)\)"),
        (GOOD[:3], {}, "3 rows; pretraining needs at least 10"),
        (np.array([["a"] * 5] * 20), {}, "numeric; got dtype <U1"),
        (GOOD, {"layers": [4, 0]}, r"positive integers.*\[4, 0\]"),
        (GOOD, {"layers": []}, "positive integers"),
        (GOOD, {"layers": [2.5]}, "positive integers"),
        (GOOD, {"layers": "300"}, "positive integers"),
        (GOOD, {"method": "pca"}, "method 'pca' is not known; choose one of: autoencoder, rbm"),
        (GOOD, {"visible": "poisson"}, "choose one of: auto, bernoulli, gaussian"),
        (GOOD * 3, {"visible": "bernoulli"}, "values in \\[0, 1\\].*visible='gaussian'"),
        (GOOD, {"epochs": 0}, "epochs must be a positive integer; got 0"),
        (GOOD, {"batch_size": 1.5}, "batch_size must be a positive integer"),
        (GOOD, {"lr": -1.0}, "lr must be a positive number"),
        (GOOD, {"denoise": 1.0}, r"denoise .* in \[0, 1\)"),
        (GOOD, {"method": "rbm", "denoise": 0.2}, "denoise applies to autoencoders"),
        (GOOD, {"sparsity": 2.0}, "sparsity is a target activation in \\(0, 1\\)"),
        (GOOD, {"sparsity": (0.1, 0.1, 3)}, "sparsity is a target activation"),
        (GOOD, {"name": "../escape"}, "model name '../escape' is not usable"),
    ],
    ids=["nan", "inf", "1-d", "3-d", "empty", "few-rows", "strings", "zero-layer", "no-layers",
         "float-layer", "string-layers", "method", "visible", "bernoulli-range", "epochs",
         "batch-size", "lr", "denoise", "denoise-rbm", "sparsity", "sparsity-tuple", "name"],
)
def test_bad_input_gets_a_one_line_input_error(X, kwargs, message):
    where = {"layers": [4], **{k: v for k, v in kwargs.items() if k in ("layers", "method", "name")}}
    settings = {k: v for k, v in kwargs.items() if k not in where}
    with pytest.raises(InputError, match=message) as info:  # from PretrainConfig, or from pretrain
        pretrain(X, config=PretrainConfig(progress=False, **settings), **where)
    assert "\n" not in str(info.value)


def test_transform_checks_the_number_of_features(digits):
    result = pretrain(digits, [8], "rbm", config=PretrainConfig(epochs=1, progress=False))
    with pytest.raises(InputError, match="X has 5 features; this stack takes 64"):
        result.transform(GOOD)
    with pytest.raises(InputError, match="layer 3 is not in this stack; choose 1 to 1"):
        result.transform(digits, layer=3)


# --- command line --------------------------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path, digits):
    path = tmp_path / "X.npy"
    np.save(path, digits[:120])
    return path


def test_cli_pretrains_and_saves_to_the_catalog(data_file):
    from click.testing import CliRunner

    from zoo.catalog import open_catalog
    from zoo.cli import cli

    runner = CliRunner()
    args = ["pretrain", "--data", str(data_file), "--layers", "16,8", "--method", "rbm",
            "--name", "my-base", "--epochs", "2", "--seed", "4"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layers"] == [16, 8] and report["model"]["name"] == "my-base"
    assert open_catalog().get("my-base").meta["pretrained"]["seed"] == 4

    again = runner.invoke(cli, args)
    assert again.exit_code == 1
    assert again.stderr.startswith("error: model 'my-base' is already in the catalog")

    text = runner.invoke(cli, [*args, "--replace", "--quiet", "--method", "autoencoder"])
    assert text.exit_code == 0, text.output
    assert "saved my-base (autoencoder stack, bernoulli inputs)" in text.stdout
    assert "layer2" in text.stdout and text.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "16,x"], "--layers '16,x' is not a list of sizes"),
        (["--layers", "16,0"], "layers must be positive integers"),
        (["--sparsity", "a,b"], "--sparsity 'a,b'"),
        (["--visible", "bernoulli", "--data-scale", "3"], None),
    ],
    ids=["layers-text", "layers-zero", "sparsity", "unknown-option"],
)
def test_cli_bad_options_get_one_error_line(data_file, args, message):
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["pretrain", "--data", str(data_file), "--name", "x", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    if message:
        assert result.exit_code == 1 and message in result.stderr
        assert result.stderr.count("\n") == 1


def test_cli_rejects_unreadable_data(tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    runner = CliRunner()
    bad = tmp_path / "X.parquet"
    bad.write_bytes(b"not rows")
    result = runner.invoke(cli, ["pretrain", "--data", str(bad), "--name", "x"])
    assert result.exit_code == 1 and "unknown file type '.parquet'" in result.stderr
    rows = tmp_path / "X.npy"
    np.save(rows, np.full((20, 3), np.nan))
    result = runner.invoke(cli, ["pretrain", "--data", str(rows), "--name", "x"])
    assert result.exit_code == 1 and "NaN or infinite values" in result.stderr
    csv = tmp_path / "X.csv"
    np.savetxt(csv, np.random.default_rng(0).random((12, 3)), delimiter=",")
    result = runner.invoke(cli, ["pretrain", "--data", str(csv), "--name", "x", "--layers", "2",
                                 "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_cli_as_a_subprocess(zoo_cmd, data_file):
    from zoo.catalog import open_catalog

    done = subprocess.run(
        [*zoo_cmd, "pretrain", "--data", str(data_file), "--layers", "12,6", "--method", "rbm",
         "--name", "sub-base", "--epochs", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "saved sub-base (rbm stack" in done.stdout
    # stdout and stderr are pipes: no progress bars, no carriage returns in a log.
    assert "\r" not in done.stderr and "layer 1/2" not in done.stderr and "it/s" not in done.stderr
    model = open_catalog().get("sub-base")
    X = np.load(data_file)
    assert _onnx_outputs(model.artifact("model").path, X).shape == (120, 6)
    listed = subprocess.run([*zoo_cmd, "layers", "sub-base"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "layer1" in listed.stdout and "layer2" in listed.stdout

    bad = subprocess.run(
        [*zoo_cmd, "pretrain", "--data", str(data_file), "--layers", "0", "--name", "b"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: layers must be positive")
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_shows_progress_bars_when_stderr_is_a_terminal(zoo_cmd, data_file):
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    # A new pty is 0 columns wide, and tqdm fits its bar to the width: give it a real terminal's.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run(
            [*zoo_cmd, "pretrain", "--data", str(data_file), "--layers", "6", "--name", "tty-base", "--epochs", "2"],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=300, check=False)
        os.close(terminal)
        err = b""
        while True:
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0, err.decode(errors="replace")
    assert "saved tty-base" in done.stdout and "\r" not in done.stdout
    assert b"layer 1/1 autoencoder 64->6" in err and b"reconstruction_error=" in err


@pytest.mark.slow
def test_python_m_zoo_demos_digits_prints_the_digits_check():
    """docs/pretrain.md and the README run `python -m zoo.demos.digits`; it must print the table."""
    pytest.importorskip("sklearn")
    done = subprocess.run(
        [sys.executable, "-m", "zoo.demos.digits", "--seeds", "0", "--epochs", "1", "--finetune-epochs", "2"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "digits: 1257 training rows, 540 test rows, 5% labelled, layers 64-300-100"
    assert lines[1].split() == ["test", "accuracy", "scratch", "autoencoder", "rbm"]
    assert lines[2].startswith("seed 0 (62 labels)") and lines[3].startswith("mean")
    assert lines[3].split()[1:] == lines[2].split()[4:]  # one seed: its row is the mean
    assert "\r" not in done.stderr  # stderr is a pipe: no bars
    bad = subprocess.run([sys.executable, "-m", "zoo.demos.digits", "--seeds", "a,b"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "--seeds 'a,b': give comma-separated integers" in bad.stderr
