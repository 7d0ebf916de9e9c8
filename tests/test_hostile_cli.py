"""The rule that keeps "no traceback reaches the user" true: every CLI command against hostile inputs.

The test walks the click group (a new command fails here until it is given hostile inputs) and
runs each command with files built here: truncated and forged `.npy`, ONNX graphs with external
data outside their folder, a 2^40-element input, a 2^40 ConstantOfShape, an Expand to 2^36,
duplicate node names, a Caffe input of 1x3x100000x100000, a prototxt nested 50,000 levels, a
TorchScript forward that writes a file, a truncated TFLite, file names that are not UTF-8 or carry
terminal escapes, an unwritable cache and output, a catalog row with malformed JSON. Any
traceback, any "internal error" (an exception nobody anticipated) or any raw terminal control in
the output fails it. Memory is bounded by ZOO_MAX_MEMORY; every command is one CliRunner call.

Also here: the top-level handler itself (one line and a log file holding the traceback).
"""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from zoo.cli import cli

RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
ESCAPE = "\x1b]0;pwned\x07\x1b[31m\u202e"


# ---- hostile files --------------------------------------------------------------------------


def _onnx(path: Path, nodes, inputs, outputs, initializers=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _hostile_files(root: Path) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from helpers.formats import write_caffemodel
    from helpers.transfer import export_mlp

    root.mkdir()
    f: dict[str, Path] = {}
    t = helper.make_tensor_value_info
    f["mlp"] = export_mlp(root / "mlp.onnx")
    np.save(root / "x.npy", np.ones((4, 16), "float32"))
    f["x"] = root / "x.npy"
    np.save(root / "y.npy", np.arange(4) % 2)
    f["y"] = root / "y.npy"
    np.save(root / "rows.npy", np.random.default_rng(0).random((40, 16)).astype("float32"))
    f["rows"] = root / "rows.npy"

    np.save(root / "half.npy", np.ones((100, 16), "float32"))
    data = (root / "half.npy").read_bytes()
    (root / "half.npy").write_bytes(data[: len(data) - 50 * 64])
    f["truncated_npy"] = root / "half.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 16)})
    (root / "huge.npy").write_bytes(header.getvalue() + b"\x00" * 1000)
    f["forged_npy"] = root / "huge.npy"

    weight = numpy_helper.from_array(np.ones((16, 16), "float32"), "w")
    external = _onnx(root / "external.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                     [t("x", TensorProto.FLOAT, ["N", 16])], [t("y", TensorProto.FLOAT, ["N", 16])], [weight])
    model = onnx.load(external)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../../../etc/hostname"
    onnx.save(model, external)
    f["external_onnx"] = external
    f["huge_input_onnx"] = _onnx(root / "hugein.onnx", [helper.make_node("Relu", ["x"], ["y"], name="r")],
                                 [t("x", TensorProto.FLOAT, [1, 1 << 20, 1 << 20])],
                                 [t("y", TensorProto.FLOAT, [1, 1 << 20, 1 << 20])])
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], "int64"), "s")
    f["constant_of_shape_onnx"] = _onnx(
        root / "cos.onnx",
        [helper.make_node("ConstantOfShape", ["s"], ["c"], name="cos"),
         helper.make_node("ReduceSum", ["c"], ["r"], name="rs", keepdims=0),
         helper.make_node("Add", ["x", "r"], ["y"], name="add")],
        [t("x", TensorProto.FLOAT, ["N", 16])], [t("y", TensorProto.FLOAT, ["N", 16])], [shape])
    target = numpy_helper.from_array(np.array([1 << 18, 1 << 18], "int64"), "s")
    f["expand_onnx"] = _onnx(
        root / "expand.onnx",
        [helper.make_node("Expand", ["x", "s"], ["e"], name="exp"),
         helper.make_node("ReduceSum", ["e"], ["y"], name="rs", keepdims=0)],
        [t("x", TensorProto.FLOAT, [1, 1])], [t("y", TensorProto.FLOAT, [])], [target])
    f["duplicate_names_onnx"] = _onnx(
        root / "dup.onnx", [helper.make_node("Relu", ["x"], ["a"], name="dup"),
                            helper.make_node("Neg", ["a"], ["y"], name="dup")],
        [t("x", TensorProto.FLOAT, ["N", 16])], [t("y", TensorProto.FLOAT, ["N", 16])])

    (root / "huge.prototxt").write_text(
        'name: "huge"\nlayer { name: "data" type: "Input" top: "data" input_param { shape: '
        '{ dim: 1 dim: 3 dim: 100000 dim: 100000 } } }\nlayer { name: "conv1" type: "Convolution" '
        'bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n')
    write_caffemodel(root / "huge.caffemodel", [("conv1", "Convolution", [[4, 3, 3, 3], [4]])])
    f["huge_caffe"] = root / "huge.prototxt"
    (root / "deep.prototxt").write_text('name: "deep"\n' + "layer { " * 50_000 + "}" * 50_000)
    write_caffemodel(root / "deep.caffemodel", [("conv1", "Convolution", [[4, 3, 3, 3], [4]])])
    f["deep_caffe"] = root / "deep.prototxt"

    f["writer_pt"] = _file_writing_torchscript(root / "writer.pt", root / "victim.bin")
    (root / "victim.bin").write_bytes(b"AAAA")
    (root / "truncated.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x10\x00" * 20)
    f["truncated_tflite"] = root / "truncated.tflite"
    (root / "empty.onnx").write_bytes(b"")
    f["empty"] = root / "empty.onnx"
    f["folder"] = root / "a_folder"
    f["folder"].mkdir()
    raw = os.fsencode(root) + b"/bad\xff\xfe.onnx"
    with open(raw, "wb") as fh:
        fh.write(f["mlp"].read_bytes())
    f["non_utf8_name"] = Path(os.fsdecode(raw))
    escaped = root / f"evil{ESCAPE}.onnx"
    escaped.write_bytes(f["mlp"].read_bytes())
    f["escape_name"] = escaped
    os.mkfifo(root / "fifo.onnx")
    f["fifo"] = root / "fifo.onnx"
    index = {"format": "zoo-index/1", "name": "evil", "description": ESCAPE, "models": [{
        "name": "evil.model", "framework": "onnx", "description": ESCAPE, "tags": [ESCAPE],
        "files": [{"role": "model", "filename": "m.onnx", "url": "http://127.0.0.1:9/m.onnx", "sha256": "0" * 64}]}]}
    (root / "index.json").write_text(json.dumps(index))
    f["index"] = root / "index.json"
    f["missing"] = root / "does-not-exist.npy"
    return f


def _file_writing_torchscript(path: Path, victim: Path) -> Path:
    import torch

    target = str(victim)

    class Writer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.target = target

        def forward(self, x):
            mapped = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
            mapped.fill_(55)
            return x * 2 + mapped.sum() * 0

    torch.jit.script(Writer()).save(str(path))
    return path


def _damage_a_row(catalog: Path, name: str) -> None:
    connection = sqlite3.connect(catalog)
    connection.execute("UPDATE models SET meta = '{\"broken\": ' WHERE name = ?", (name,))
    connection.execute("UPDATE models SET tags = '[1,' WHERE name = 'bvlc_alexnet'")
    connection.commit()
    connection.close()


# ---- what each command is given ---------------------------------------------------------------

MODELS = ("mlp", "external_onnx", "huge_input_onnx", "constant_of_shape_onnx", "expand_onnx",
          "duplicate_names_onnx", "huge_caffe", "deep_caffe", "writer_pt", "truncated_tflite", "empty",
          "folder", "non_utf8_name", "escape_name", "fifo", "missing")
NAMES = ("damaged", "evil.model", f"no{ESCAPE}such", "bvlc_alexnet")
DATA = ("truncated_npy", "forged_npy", "missing", "folder", "empty", "non_utf8_name", "fifo")
OUTPUTS = ("/proc/zoo-out/o.npy", "/proc/o.npy")


def _invocations(f: dict[str, Path]) -> dict[str, list[list[str]]]:
    """argv lists per command path ("source add", "cache rm"...)."""
    s = {k: str(v) for k, v in f.items()}
    models = [s[k] for k in MODELS]
    mlp, x, y = s["mlp"], s["x"], s["y"]
    return {
        "search": [["search", ESCAPE], ["search", "--tag", ESCAPE], ["search", "model"], ["search", "resnet", "--hub"]],
        "info": [["info", n] for n in NAMES],
        "list": [["list"], ["list", "--json"]],
        "rm": [["rm", f"no{ESCAPE}such"]],
        "add": [["add", m] for m in models] + [["add", s["huge_caffe"], s["deep_caffe"]]],
        "scan": [["scan", str(f["mlp"].parent)], ["scan", s["missing"]], ["scan", s["fifo"]]],
        "edit": [["edit", n, "--description", ESCAPE] for n in NAMES]
        + [["edit", "damaged", "--input-spec", s[k]] for k in ("missing", "empty", "fifo", "non_utf8_name")]
        + [["edit", "damaged", "--mean", "nan,x"]],
        "source add": [["source", "add", "evil", s["index"]], ["source", "add", "bad", "file:///proc/nope"],
                       ["source", "add", "later", s["index"], "--no-sync"],
                       ["source", "add", f"x{ESCAPE}", s["index"]], ["source", "add", "empty", s["empty"]]],
        "source list": [["source", "list"]],
        "source sync": [["source", "sync"], ["source", "sync", "nope"]],
        "source rm": [["source", "rm", "nope"]],
        "fetch": [["fetch", "evil.model", "--offline"], ["fetch", f"no{ESCAPE}such"]],
        "verify": [["verify"], ["verify", "damaged"]],
        "convert": [["convert", m] for m in models] + [["convert", s["writer_pt"], "--input", "x=Nx4"],
                                                       ["convert", "damaged"], ["convert", "evil.model"]],
        "layers": [["layers", m] for m in models if m != s["writer_pt"]],
        "extract": (
            [["extract", m, "-l", "-1", "-i", x, "-o", "out.npy"] for m in models if m != s["writer_pt"]]
            + [["extract", mlp, "-l", "-1", "-i", d, "-o", "out.npy"] for d in (s[k] for k in DATA)]
            + [["extract", mlp, "-l", "-1", "-i", f"x={s[k]}", "-o", "out.npy"] for k in DATA]
            + [["extract", mlp, "-l", "-1", "-i", x, "-o", o] for o in OUTPUTS]
            + [["extract", mlp, "-l", "-1", "-i", x, "-o", x], ["extract", mlp, "-l", ESCAPE, "-i", x, "-o", "o.npy"]]
            + [["extract", mlp, "-l", "-1", "-l", "-2", "-i", x, "-o", o] for o in OUTPUTS]
            + [["extract", mlp, "-l", "-1", "-i", s["folder"], "-o", "o.npy", "--index-out", o]
               for o in (*OUTPUTS, x)]
            + [["extract", mlp, "-l", "-1", "-i", s["folder"], "-o", "o.npy", "--image-size", v]
               for v in (ESCAPE, "0,0", "100000,100000")]),
        "train": ([["train", mlp, "-l", "-1", "-d", s[k], "-y", y, "--name", "t", "--epochs", "1"] for k in DATA
                   if k not in ("missing", "fifo")]
                  + [["train", mlp, "-l", "-1", "-d", x, "-y", s[k], "--name", "t", "--epochs", "1"]
                     for k in ("truncated_npy", "forged_npy", "empty")]
                  + [["train", m, "-l", "-1", "-d", x, "-y", y, "--name", "t", "--epochs", "1"]
                     for m in (s["constant_of_shape_onnx"], s["duplicate_names_onnx"], s["external_onnx"])]
                  + [["train", mlp, "-l", "-1", "-d", s["folder"], "--name", "t", "--on-error", "raise",
                      "--image-size", v] for v in (ESCAPE, "4,4")]),
        "sweep": [["sweep", mlp, "-l", "-1,-2", "-d", s["forged_npy"], "-y", y],
                  ["sweep", mlp, "-l", "-1", "-d", x, "-y", y, "--epochs", "1", "--plot", x],
                  ["sweep", mlp, "-l", "-1", "-d", x, "-y", y, "--epochs", "1", "--plot", "/proc/p/s.png"]]
                 + [["sweep", mlp, "-l", "-1", "-d", x, "-y", y, "--epochs", "1", f"--{which}", s[k]]
                    for which in ("validation", "test") for k in ("truncated_npy", "forged_npy", "empty")]
                 + [["sweep", mlp, "-l", "-1", "-d", x, "-y", y, "--epochs", "1", "--validation", x,
                     "--validation-labels", s[k]] for k in ("truncated_npy", "forged_npy")],
        "predict": ([["predict", m, "-i", x] for m in models if m != s["writer_pt"]]
                    + [["predict", mlp, "-i", s[k]] for k in DATA]
                    + [["predict", mlp, "-i", x, "-o", o] for o in (*OUTPUTS, x, "preds.txt", f"p{ESCAPE}.csv")]
                    + [["predict", mlp, "-i", x, "-y", s[k]] for k in ("truncated_npy", "forged_npy", "empty")]
                    + [["predict", n, "-i", x] for n in NAMES]
                    + [["predict", mlp, "-i", s["folder"], "--image-size", ESCAPE],
                       ["predict", mlp, "-i", s["escape_name"], "-i", s["non_utf8_name"]],
                       ["predict", mlp, "-i", x, "-i", s["fifo"]]]),
        "walkthrough": [["walkthrough", "--out", "/proc/zoo-walkthrough"]],
        "cache list": [["cache", "list"], ["cache", "list", "--json"]],
        "cache gc": [["cache", "gc", "--dry-run"], ["cache", "gc"], ["cache", "gc", "--cache-dir", s["fifo"]]],
        "init": [["init", s[k]] for k in ("missing", "fifo", "mlp", "non_utf8_name")] + [["init", "/proc/zoo-init"]],
        "lock": [["lock", n] for n in (*NAMES, "damaged@nope", f"bvlc_alexnet@{ESCAPE}")]
                + [["lock", "damaged", "-o", o] for o in (*OUTPUTS, s["mlp"])],
        "index export": [["index", "export", n, "-o", "index-out.json"] for n in (*NAMES, "damaged@nope")]
                        + [["index", "export", "-o", o] for o in (*OUTPUTS, s["mlp"])]
                        + [["index", "export", "damaged", "--base-url", f"ftp://{ESCAPE}", "-o", "i.json"]],
        "cache rm": [["cache", "rm", ESCAPE], ["cache", "rm", "--model", f"no{ESCAPE}such"], ["cache", "rm"]],
        "sign": [["sign", n, "--key", k] for n in ("damaged", f"no{ESCAPE}such", s["mlp"])
                 for k in (s["empty"], s["missing"], s["escape_name"])],
        "lineage": [["lineage", n] for n in (*NAMES, s["mlp"])] + [["lineage", "damaged", "--json"]],
        "bom": [["bom", n] for n in ("damaged", f"no{ESCAPE}such")]
               + [["bom", "bvlc_alexnet", "-o", o] for o in (*OUTPUTS, f"new{ESCAPE}/bom.json")],
        "pretrain": ([["pretrain", "--data", s[k], "--name", "p", "--epochs", "1"]
                      for k in ("truncated_npy", "forged_npy", "empty")]
                     + [["pretrain", "--data", s["rows"], "--layers", "100000000", "--name", "p"],
                        ["pretrain", "--data", s["rows"], "--layers", "4,-1", "--name", "p"]]),
    }


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append(" ".join((*prefix, name)))
    return found


def _check(result, argv, env_note) -> None:
    shown = f"zoo {' '.join(argv)} ({env_note})"
    output = result.output
    if os.environ.get("ZOO_TEST_SHOW"):
        print(f"\n### {shown} -> {result.exit_code}: {(output.strip().splitlines() or [''])[-1][:300]}")
    assert "Traceback" not in output, f"{shown} printed a traceback:\n{output[-3000:]}"
    assert "internal error" not in output, f"{shown} hit an unanticipated exception:\n{output[-2000:]}"
    assert not RAW_CONTROLS.search(output), f"{shown} printed raw terminal controls: {output[-500:]!r}"
    if result.exit_code != 0:
        errors = [line for line in output.splitlines() if line.startswith(("error: ", "Error: "))]
        assert errors, f"{shown} exited {result.exit_code} without an error line:\n{output[-2000:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{shown} raised {result.exception!r}")


@pytest.mark.slow
def test_every_command_against_hostile_inputs(tmp_path, zoo_env, monkeypatch):
    files = _hostile_files(tmp_path / "hostile")
    plans = _invocations(files)
    assert sorted(_commands(cli)) == sorted(plans), "give every command hostile inputs here"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_MAX_MEMORY", "2G")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    runner = CliRunner()
    from helpers.convert import local_model
    from zoo.catalog import open_catalog

    open_catalog().add_model(local_model("damaged", "onnx", files["mlp"]))
    _damage_a_row(zoo_env / "catalog.db", "damaged")
    ran = 0
    for command, invocations in plans.items():
        for argv in invocations:
            _check(runner.invoke(cli, argv), argv, "default environment")
            ran += 1
    assert (tmp_path / "hostile" / "victim.bin").read_bytes() == b"AAAA"
    assert files["x"].exists() and np.load(files["x"]).shape == (4, 16)
    # The same commands where the cache cannot be written.
    monkeypatch.setenv("ZOO_CACHE", "/proc/zoo-cache")
    for command in ("convert", "layers", "extract", "train", "cache list", "cache rm", "fetch", "pretrain"):
        for argv in plans[command][:6]:
            _check(runner.invoke(cli, argv), argv, "ZOO_CACHE=/proc/zoo-cache")
            ran += 1
    # And where the catalog cannot be.
    monkeypatch.setenv("ZOO_CATALOG", "/proc/zoo/catalog.db")
    for argv in (["list"], ["search", "x"], ["info", "x"], ["add", str(files["mlp"])]):
        _check(runner.invoke(cli, argv), argv, "ZOO_CATALOG=/proc/zoo/catalog.db")
        ran += 1
    assert ran > 150


def test_an_unanticipated_exception_is_one_line_and_a_log(zoo_env, monkeypatch):
    @cli.command("zoo-test-crash", hidden=True)
    def crash() -> None:
        {}["the key nobody expected"]

    try:
        result = CliRunner().invoke(cli, ["zoo-test-crash"])
    finally:
        cli.commands.pop("zoo-test-crash")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    match = re.fullmatch(r"internal error: KeyError: 'the key nobody expected'; the traceback is in (\S+\.log)",
                         lines[0])
    assert match, lines[0]
    log = Path(match.group(1))
    assert log.parent == zoo_env / "cache" / "logs"
    assert "Traceback" in log.read_text() and 'crash' in log.read_text()


def test_the_log_goes_to_the_temp_folder_when_the_cache_cannot_hold_it(monkeypatch, tmp_path):
    from zoo.logs import write

    monkeypatch.setenv("ZOO_CACHE", "/proc/zoo-cache")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = write("test", "Traceback (most recent call last): ...")
    assert path is not None and Path(path).is_relative_to(tmp_path)
    assert Path(path).read_text().rstrip().endswith("Traceback (most recent call last): ...")


def test_the_log_masks_secrets_escapes_controls_and_keeps_its_newest_entries(zoo_env, monkeypatch):
    from zoo import logs

    path = logs.write("fetch", "GET https://alice:hunter2@127.0.0.1/m.onnx?token=s3cret failed \x1b]0;pwned\x07")
    text = path.read_text()
    assert path == zoo_env / "cache" / "logs" / "zoo.log"
    assert "hunter2" not in text and "s3cret" not in text and "\x1b" not in text and "\x07" not in text
    monkeypatch.setattr(logs, "MAX_LOG_BYTES", 4000)
    for i in range(60):
        logs.write(f"entry {i}", "x" * 100)
    text = path.read_text()
    assert path.stat().st_size <= 4000 + 200 and "entry 59" in text and "entry 0\n" not in text
    assert text.startswith("=== ")  # cut at an entry's start, never in the middle of one
    endless = zoo_env / "output.log"  # a sandboxed child's output, from a model that printed without end
    endless.write_bytes(b"y" * 10_000 + b"\nlast words\n")
    logs.relay(endless, "child")
    text = path.read_text()
    assert "last words" in text and "bytes were left out" in text
    assert path.stat().st_size <= 4000 + 4000 // 2 + 200  # the trim runs before each entry: at most one entry over


def test_the_console_script_exits_with_one_line(tmp_path, zoo_cmd, zoo_env):
    import subprocess

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 4)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue())
    out = subprocess.run([*zoo_cmd, "pretrain", "--data", str(tmp_path / "huge.npy"), "--name", "p"],
                         capture_output=True, text=True, timeout=120, env={**os.environ}, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
