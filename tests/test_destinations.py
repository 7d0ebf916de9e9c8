"""Writes go only where asked: an output that is an input is refused, folders made elsewhere are said."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.transfer import export_mlp
from zoo.cli import cli


@pytest.fixture
def setup(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model = export_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype("float32")
    np.save(work / "x.npy", x)
    os.symlink(work / "x.npy", work / "alias.npy")
    return model, work, x


def test_an_output_that_is_an_input_is_refused_before_any_work(setup, zoo_env):
    model, work, x = setup
    runner = CliRunner()
    for argv in (["-i", "x.npy", "-o", "x.npy"], ["-i", "x.npy", "-o", str(work / "x.npy")],
                 ["-i", "x.npy", "-o", "alias.npy"], ["-i", f"x={work / 'x.npy'}", "-o", "./x.npy"]):
        result = runner.invoke(cli, ["extract", str(model), "-l", "-1", *argv])
        assert result.exit_code == 1 and "is also an input of this command" in result.output, result.output
    assert np.array_equal(np.load(work / "x.npy"), x)
    assert not (zoo_env / "cache" / "features").exists()  # refused before anything was computed
    np.save(work / "y.npy", np.arange(5) % 2)
    result = runner.invoke(cli, ["sweep", str(model), "-l", "-1", "-d", "x.npy", "-y", "y.npy", "--plot", "y.npy"])
    assert result.exit_code == 1 and "--plot y.npy is also an input" in result.output
    assert np.array_equal(np.load(work / "y.npy"), np.arange(5) % 2)


def test_folders_made_outside_the_working_directory_are_said(setup, tmp_path, monkeypatch):
    model, work, _ = setup
    runner = CliRunner()
    inside = runner.invoke(cli, ["extract", str(model), "-l", "-1", "-i", "x.npy", "-o", "new/sub/f.npy"])
    assert inside.exit_code == 0 and "warning" not in inside.output and (work / "new" / "sub" / "f.npy").exists()
    outside = tmp_path / "elsewhere" / "deeper" / "f.npy"
    result = runner.invoke(cli, ["extract", str(model), "-l", "-1", "-i", "x.npy", "-o", str(outside)])
    assert result.exit_code == 0 and outside.exists()
    assert (f"warning: created {tmp_path / 'elsewhere'} and the folders below it for --output {outside}"
            in result.output)
    # A catalog is the exception: a folder that does not exist is a mistyped path, never made (issue 21).
    catalog = tmp_path / "team" / "catalog.db"
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    result = runner.invoke(cli, ["list", "--source", "local"])
    assert result.exit_code == 1 and not catalog.parent.exists()
    assert f"its folder {tmp_path / 'team'} does not exist" in result.output
