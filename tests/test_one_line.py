"""One line, never a traceback, for each failure the issue names; built here, bounded in time and memory.

Full and read-only disks are real: a small tmpfs mounted in a user namespace (skipped where the
kernel does not allow that). Graphs that declare terabytes are refused from their shapes before
anything is allocated, under ZOO_MAX_MEMORY=1G.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.transfer import export_mlp
from zoo.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _last_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    return result.output.strip().splitlines()[-1]


def _on_small_fs(tmp_path: Path, size: str, code: str, read_only: bool = False) -> dict:
    """Run Python `code` with ZOO_CACHE on a fresh tmpfs of `size` (read-only if asked); its JSON output."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    mnt = tmp_path / "small"
    mnt.mkdir()
    remount = f" && mount -o remount,ro {mnt}" if read_only else ""
    shell = f"mount -t tmpfs -o size={size} zoo-small {mnt}{remount} && exec {sys.executable} -c \"$0\""
    env = {**os.environ, "ZOO_CACHE": str(mnt / "cache"), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=600)
    if "mount" in proc.stderr or "unshare" in proc.stderr:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLI_RUN = """
    import json, sys
    from click.testing import CliRunner
    from zoo.cli import cli
    results = []
    for argv in {commands!r}:
        out = CliRunner().invoke(cli, argv)
        results.append({{"argv": argv, "code": out.exit_code, "output": out.output}})
    print(json.dumps(results))
"""


def _assert_one_line_errors(results: list[dict], expected: str) -> None:
    for result in results:
        output = result["output"]
        assert result["code"] == 1, result
        assert "Traceback" not in output and "internal error" not in output, output
        line = output.strip().splitlines()[-1]
        assert line.startswith("error: ") and expected in line, (result["argv"], line)


def test_a_full_disk_during_zoo_convert_is_one_line(tmp_path):
    import torch

    onnx_model = export_mlp(tmp_path / "wide.onnx", inputs=256, hidden=256, outputs=256)  # 0.5 MB
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh())).save(str(tmp_path / "wide.pt"))
    commands = [["convert", str(onnx_model), "--catalog", str(tmp_path / "c.db")],
                ["convert", str(tmp_path / "wide.pt"), "--input", "input=Nx256", "--catalog", str(tmp_path / "c.db")]]
    results = _on_small_fs(tmp_path, "200k", CLI_RUN.format(commands=commands))
    _assert_one_line_errors(results, "no room left to write")


def test_a_read_only_cache_is_one_line(tmp_path):
    model = export_mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((3, 16), "float32"))
    commands = [["convert", str(model), "--catalog", str(tmp_path / "c.db")],
                ["extract", str(model), "-l", "-1", "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy")],
                ["pretrain", "--data", str(tmp_path / "x.npy"), "--layers", "4", "--name", "p",
                 "--catalog", str(tmp_path / "c.db")]]
    results = _on_small_fs(tmp_path, "1m", CLI_RUN.format(commands=commands[:2]), read_only=True)
    _assert_one_line_errors(results, "Read-only file system")
    assert not (tmp_path / "f.npy").exists()


def test_unwritable_cache_and_output_paths_are_one_line(tmp_path, monkeypatch):
    model = export_mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((3, 16), "float32"))
    runner = CliRunner()
    line = _last_line(runner.invoke(cli, ["extract", str(model), "-l", "-1", "-i", str(tmp_path / "x.npy"),
                                          "-o", "/proc/o.npy"]))
    assert line == "error: cannot write /proc/o.npy (No such file or directory); give a path in a folder that " \
                   "exists and that you can write"
    monkeypatch.setenv("ZOO_CACHE", "/proc/x")
    line = _last_line(runner.invoke(cli, ["convert", str(model)]))
    assert line.startswith("error: cannot write /proc/x/") and "point --cache-dir (ZOO_CACHE)" in line


def test_graphs_that_plan_terabytes_are_refused_from_their_shapes(tmp_path, monkeypatch):
    from test_hostile_cli import _hostile_files

    monkeypatch.setenv("ZOO_MAX_MEMORY", "1G")
    files = _hostile_files(tmp_path / "h")
    np.save(tmp_path / "x.npy", np.ones((2, 16), "float32"))
    runner = CliRunner()
    expected = {"huge_input_onnx": "input 'x' of shape 2x1048576x1048576 would need 8.0 TiB",
                "constant_of_shape_onnx": "tensor 'c' (made by ConstantOfShape node 'cos') of shape 1048576x1048576 "
                                          "would need 4.0 TiB",
                "expand_onnx": "tensor 'e' (made by Expand node 'exp') of shape 262144x262144 would need 256.0 GiB",
                "huge_caffe": "tensor 'data' of shape 1x3x100000x100000 would need 111.8 GiB"}
    for key, text in expected.items():
        line = _last_line(runner.invoke(cli, ["convert", str(files[key])]))
        assert text in line and "more than the 1.0 GiB" in line and "ZOO_MAX_MEMORY" in line, line
    line = _last_line(runner.invoke(cli, ["extract", str(files["constant_of_shape_onnx"]), "-l", "-1",
                                          "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy")]))
    assert "ConstantOfShape node 'cos'" in line
    for key, text in {"duplicate_names_onnx": "names two nodes 'dup'",
                      "external_onnx": "points outside the directory",
                      "deep_caffe": "nested 50000 levels deep"}.items():
        assert text in _last_line(runner.invoke(cli, ["convert", str(files[key])]))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).random((50, 30)).astype("float32"))
    line = _last_line(runner.invoke(cli, ["pretrain", "--data", str(rows), "--layers", "100000000", "--name", "p"]))
    assert "has 3,100,000,030 parameters" in line and "give fewer hidden units" in line


def test_file_names_that_are_not_utf8_are_refused_or_skipped(tmp_path):
    model = export_mlp(tmp_path / "good.onnx")
    bad = os.fsencode(tmp_path) + b"/caf\xe9.onnx"
    with open(bad, "wb") as fh:
        fh.write(model.read_bytes())
    runner = CliRunner()
    line = _last_line(runner.invoke(cli, ["add", os.fsdecode(bad)]))
    assert "caf\\xe9.onnx: its name is not valid UTF-8" in line
    result = runner.invoke(cli, ["scan", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.output and "caf\\xe9.onnx" in result.output
    assert "1 added" in result.output  # the good file is registered all the same


def test_a_catalog_row_with_malformed_json_is_shown_damaged(zoo_env, tmp_path):
    model = export_mlp(tmp_path / "mlp.onnx")
    runner = CliRunner()
    assert runner.invoke(cli, ["add", str(model), "--name", "broken", "--tag", "x"]).exit_code == 0
    connection = sqlite3.connect(zoo_env / "catalog.db")
    connection.execute("UPDATE models SET meta = '{\"a\": ', tags = '[1,' WHERE name = 'broken'")
    connection.execute("UPDATE artifacts SET urls = 'nope' WHERE model_id = (SELECT id FROM models WHERE name='broken')")
    connection.commit()
    connection.close()
    for argv in (["list"], ["search", "broken"], ["list", "--source", "local"]):
        result = runner.invoke(cli, argv)
        assert result.exit_code == 0, result.output
        assert "broken" in result.output and "damaged" in result.output
    info = runner.invoke(cli, ["info", "broken"])
    assert info.exit_code == 0 and "unreadable catalog data (model urls, tags, meta: not valid JSON)" in info.output
    assert "bvlc_alexnet" in runner.invoke(cli, ["list"]).output  # the rest of the catalog is untouched


@pytest.mark.timeout(60)
def test_an_input_spec_that_is_a_fifo_or_huge_is_refused_without_opening_it(tmp_path, zoo_env):
    runner = CliRunner()
    assert runner.invoke(cli, ["add", str(export_mlp(tmp_path / "m.onnx")), "--name", "m"]).exit_code == 0
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)  # opening it would block until a writer came
    line = _last_line(runner.invoke(cli, ["edit", "m", "--input-spec", str(fifo)]))
    assert "is a FIFO (named pipe), not a file" in line, line
    huge = tmp_path / "spec.json"
    with open(huge, "wb") as fh:
        fh.truncate(2 << 20)
    line = _last_line(runner.invoke(cli, ["edit", "m", "--input-spec", str(huge)]))
    assert "over 1 MiB" in line, line
