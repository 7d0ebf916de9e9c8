"""A model file overwritten in place (retrained, same path) never keeps serving its old conversion or cuts.

Built here: ONNX and TorchScript models with seeded weights, overwritten in place by the same
architecture with other weights, then by a broken file.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.extract import run_onnx
from helpers.transfer import export_mlp
from zoo.cli import cli


def _extract(name: str, x_path, out_path) -> np.ndarray:
    result = CliRunner().invoke(cli, ["extract", name, "-l", "-1", "-i", str(x_path), "-o", str(out_path)])
    assert result.exit_code == 0, result.output
    return np.load(out_path)


def _overwrite(path, make) -> None:
    """Replace the file's content in place, with a new mtime even on a coarse-clock file system."""
    before = os.stat(path).st_mtime_ns
    make(path)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.mark.parametrize("convert_first", [False, True])
def test_an_onnx_model_overwritten_in_place_is_cut_again(tmp_path, convert_first):
    model = export_mlp(tmp_path / "mlp.onnx", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    assert CliRunner().invoke(cli, ["add", str(model), "--name", "mlp"]).exit_code == 0
    if convert_first:
        assert CliRunner().invoke(cli, ["convert", "mlp"]).exit_code == 0
    old = _extract("mlp", tmp_path / "x.npy", tmp_path / "old.npy")
    _overwrite(model, lambda path: None)  # touched, same bytes: the hash says nothing changed
    touched = CliRunner().invoke(cli, ["extract", "mlp", "-l", "-1", "-i", str(tmp_path / "x.npy"),
                                       "-o", str(tmp_path / "same.npy"), "--json"])
    assert touched.exit_code == 0 and "converted it again" not in touched.output
    assert json.loads(touched.stdout)["reused"] is True
    _overwrite(model, lambda path: export_mlp(path, seed=1))  # retrained: same shapes, other weights
    new = _extract("mlp", tmp_path / "x.npy", tmp_path / "new.npy")
    (expected,) = run_onnx(model, {"x": x})
    assert not np.allclose(old, new)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_torchscript_model_overwritten_in_place_is_converted_again_or_refused(tmp_path, zoo_env):
    import torch

    def save(path, seed):
        torch.manual_seed(seed)
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh())).save(str(path))

    model = tmp_path / "net.pt"
    save(model, 0)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    assert runner.invoke(cli, ["convert", str(model), "--input", "input=Nx8"]).exit_code == 0
    old = _extract("net", tmp_path / "x.npy", tmp_path / "old.npy")
    _overwrite(model, lambda path: save(path, 1))
    result = runner.invoke(cli, ["layers", "net"])
    assert result.exit_code == 0 and "changed since it was converted; converted it again" in result.output
    new = _extract("net", tmp_path / "x.npy", tmp_path / "new.npy")
    with torch.no_grad():
        expected = torch.jit.load(str(model))(torch.from_numpy(x)).numpy()
    assert not np.allclose(old, new)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    # Overwritten with something that no longer converts: an error, never the old conversion.
    _overwrite(model, lambda path: path.write_bytes(b"not a model any more"))
    result = runner.invoke(cli, ["extract", "net", "-l", "-1", "-i", str(tmp_path / "x.npy"),
                                 "-o", str(tmp_path / "stale.npy")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "model file" in line and "changed since it was converted" in line and "not used" in line
    assert not (tmp_path / "stale.npy").exists()
