"""Converting a model never runs its side effects: refused before anything runs, sandboxed when trusted.

Hostile models are built here: TorchScript that maps a file with ``torch.from_file(shared=True)``
and fills it, SavedModels and frozen graphs that call ``tf.io.write_file`` or print to a file,
a TFLite file whose Flex op is ``WriteFile``, archives whose code calls custom ops or writes in
``__setstate__`` (run by ``torch.jit.load`` itself).
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo import landlock
from zoo.cli import cli
from zoo.errors import UnsafeModelError

needs_landlock = pytest.mark.skipif(landlock.abi_version() < 1, reason="this kernel has no Linux Landlock")


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and lines[-1].startswith("error: ")
    return lines[-1]


def _file_writing_torchscript(path: Path, victim: Path) -> Path:
    import torch

    target = str(victim)

    class Writer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)
            self.target = target

        def forward(self, x):
            mapped = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
            mapped.fill_(55)
            return self.lin(x) + mapped.sum() * 0

    torch.jit.script(Writer()).save(str(path))
    return path


def test_torchscript_that_writes_a_file_is_refused_before_it_runs(tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"AAAA")
    model = _file_writing_torchscript(tmp_path / "writer.pt", victim)
    result = CliRunner().invoke(cli, ["convert", str(model), "--input", "x=Nx4"])
    line = _one_error_line(result)
    assert "aten::from_file" in line and "--trust-model-code" in line and "writer.pt" in line
    assert victim.read_bytes() == b"AAAA"
    from zoo.catalog import open_catalog

    assert not open_catalog().exists("writer")  # `zoo convert PATH` adopted nothing


@needs_landlock
def test_trusted_torchscript_still_cannot_write_outside_its_scratch_folder(tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"AAAA")
    model = _file_writing_torchscript(tmp_path / "writer.pt", victim)
    result = CliRunner().invoke(cli, ["convert", str(model), "--input", "x=Nx4", "--trust-model-code"])
    line = _one_error_line(result)
    assert "Permission denied" in line
    assert victim.read_bytes() == b"AAAA"  # the sandbox held where the check was overridden


@needs_landlock
def test_a_model_that_prints_converts_and_its_output_stays_in_the_child(tmp_path, zoo_env):
    import torch

    class Chatty(torch.nn.Module):
        def forward(self, x):
            print("\x1b]0;pwned\x07 model says hello")
            return torch.relu(x) * 2

    torch.jit.script(Chatty()).save(str(tmp_path / "chatty.pt"))
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "chatty.pt"), "--input", "x=Nx8", "--json"])
    assert result.exit_code == 0, result.output
    assert "hello" not in result.output and "\x1b" not in result.output  # prim::Print went to the child's log
    data = json.loads(result.output[result.output.index("{"):])
    sandbox = data["meta"]["sandbox"]
    assert data["meta"]["report"]["verified"] is True
    assert sandbox["active"] is True and sandbox["process"] == "child" and sandbox["abi"] >= 1
    assert not list((zoo_env / "cache" / "tmp").iterdir())  # the scratch folder is gone


@needs_landlock
def test_what_the_sandboxed_child_prints_reaches_the_log_or_verbose_stderr(tmp_path, zoo_env, monkeypatch):
    """The child's stdout/stderr (a model's prints, TensorFlow's notices) is not lost in its scratch folder:
    the cache's log holds it, and --verbose / ZOO_LOG_LEVEL shows it, terminal controls escaped."""
    import torch

    class Chatty(torch.nn.Module):
        def forward(self, x):
            print("\x1b[2J model says hello")
            return torch.relu(x) * 2

    torch.jit.script(Chatty()).save(str(tmp_path / "chatty.pt"))
    quiet = CliRunner().invoke(cli, ["convert", str(tmp_path / "chatty.pt"), "--input", "x=Nx8"])
    assert quiet.exit_code == 0 and "hello" not in quiet.output, quiet.output
    log = (zoo_env / "cache" / "logs" / "zoo.log").read_text()
    assert "model says hello" in log and "\x1b" not in log
    monkeypatch.setenv("ZOO_LOG_LEVEL", "INFO")
    from converters import isolation

    isolation._close_zygotes()  # a zygote started quiet stays quiet: the next one is verbose
    torch.jit.script(Chatty()).save(str(tmp_path / "chatty2.pt"))
    verbose = CliRunner().invoke(cli, ["convert", str(tmp_path / "chatty2.pt"), "--input", "x=Nx8"])
    assert verbose.exit_code == 0 and "model says hello" in verbose.output, verbose.output
    assert "\x1b" not in verbose.output


def _rewritten_archive(tmp_path: Path, name: str, edit) -> Path:
    """A real scripted module whose serialized code is edited as an attacker would."""
    import torch

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = tmp_path / f"{name}.pt"
    torch.jit.script(Plain()).save(str(path))
    edited = tmp_path / f"{name}.edited.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py") and b"def forward" in data:
                data = edit(data.decode()).encode()
            dst.writestr(info, data)
    return edited


def test_archive_code_is_scanned_before_torch_loads_it(tmp_path):
    from converters.model_code import check_torchscript_archive
    from converters.pytorch import check_file

    custom = _rewritten_archive(tmp_path, "custom", lambda code: code.replace(
        "torch.add(x, 1)", "ops.evil_ns.boom(torch.add(x, 1))"))
    with pytest.raises(UnsafeModelError, match=r"evil_ns::boom.*custom op.*--trust-model-code"):
        check_torchscript_archive(custom)
    # A __setstate__ runs inside torch.jit.load: refused before the load.
    setstate = _rewritten_archive(tmp_path, "setstate", lambda code: code + (
        "  def __setstate__(self: Plain, state: Tuple[bool]) -> NoneType:\n"
        "    _0 = torch.save(torch.zeros([1]), \"/tmp/zoo-pwned\")\n"
        "    return None\n"))
    with pytest.raises(UnsafeModelError, match=r"Plain.__setstate__\) uses aten::save"):
        check_file(setstate)
    check_file(setstate, trust_model_code=True)  # the override skips exactly this check


def test_loaded_graphs_are_walked_into_branches_and_submodules():
    import torch

    from converters.model_code import check_torchscript_module

    class Inner(torch.nn.Module):
        def forward(self, x):
            if bool(x.sum() > 0):
                torch.save(x, "/tmp/zoo-never-written")
            return x

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x) * 2

    with pytest.raises(UnsafeModelError, match=r"Outer.forward .*line \d+\) uses aten::save"):
        check_torchscript_module(torch.jit.script(Outer()), "outer.pt")
    # A custom op (any registered library's) can run any code: its namespace is not allowed.
    library = torch.library.Library("zoo_test_ns", "DEF")
    library.define("boom(Tensor x) -> Tensor")
    library.impl("boom", lambda x: x * 2, "CPU")

    class Custom(torch.nn.Module):
        def forward(self, x):
            return torch.ops.zoo_test_ns.boom(x)

    with pytest.raises(UnsafeModelError, match=r"Custom.forward.* uses zoo_test_ns::boom \(a custom op"):
        check_torchscript_module(torch.jit.script(Custom()), "custom.pt")
    check_torchscript_module(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())),
                             "plain.pt")


# ---- TensorFlow ---------------------------------------------------------------------------


def _tf():
    import sqlite3  # noqa: F401  (before TensorFlow, whose bundled SQLite lacks FTS5)

    import tensorflow as tf

    return tf


def _writing_saved_model(folder: Path, target: Path) -> Path:
    tf = _tf()

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            tf.io.write_file(str(target), "written by the model")
            return {"y": x * 2.0}

    module = Writer()
    path = folder / "writer_savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.mark.slow
def test_savedmodel_that_writes_a_file_is_refused_and_sandboxed_when_trusted(tmp_path):
    target = tmp_path / "written.txt"
    model = _writing_saved_model(tmp_path, target)
    line = _one_error_line(CliRunner().invoke(cli, ["convert", str(model)]))
    assert re.search(r"node 'WriteFile' uses op WriteFile.*--trust-model-code", line), line
    assert "signature 'serving_default'" in line
    assert not target.exists()
    if landlock.abi_version() >= 1:
        line = _one_error_line(CliRunner().invoke(cli, ["convert", str(model), "--trust-model-code"]))
        assert not target.exists()  # loading, tf2onnx and the reference run all happened in the sandbox


@pytest.mark.slow
def test_tensorflow_graphs_with_file_ops_are_refused_wherever_they_hide(tmp_path):
    tf = _tf()
    from converters import tensorflow as ct
    from converters.model_code import check_saved_model

    target = tmp_path / "printed.txt"

    class Printer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            tf.print("x", x, output_stream=f"file://{target}")
            return {"y": x + 1.0}

    printer = Printer()
    tf.saved_model.save(printer, str(tmp_path / "printer"), signatures={"serving_default": printer.serve})
    with pytest.raises(UnsafeModelError, match=r"PrintV2.*prints to 'file://"):
        check_saved_model(tmp_path / "printer", ["serve"], "serving_default")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def reads(x):
        secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
        return x + tf.cast(secret, tf.float32) * 0

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = tmp_path / "reads.pb"
    frozen.write_bytes(convert_variables_to_constants_v2(reads.get_concrete_function()).graph
                       .as_graph_def().SerializeToString())
    with pytest.raises(UnsafeModelError, match=r"reads.pb: .*node .ReadFile. uses op ReadFile"):
        ct.convert_frozen_graph(frozen)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def writes(x):
        tf.io.write_file(str(tmp_path / "flex.txt"), "pwned")
        return x + 1

    converter = tf.lite.TFLiteConverter.from_concrete_functions([writes.get_concrete_function()], writes)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex = tmp_path / "flex.tflite"
    flex.write_bytes(converter.convert())
    with pytest.raises(UnsafeModelError, match=r"Flex op FlexWriteFile uses op WriteFile"):
        ct.convert_tflite(flex)
    assert not (tmp_path / "flex.txt").exists() and not target.exists()


@pytest.mark.slow
def test_keras_lambda_layers_stay_refused(tmp_path):
    _tf()
    import keras

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    model.save(tmp_path / "lambda.keras")
    line = _one_error_line(CliRunner().invoke(cli, ["convert", str(tmp_path / "lambda.keras")]))
    assert "Lambda" in line and "safe_mode" in line


@pytest.mark.slow
def test_legitimate_tensorflow_models_pass_the_check(tf_models):
    from converters.model_code import check_graph_def, check_saved_model

    tf = _tf()
    check_saved_model(tf_models["saved_model"], ["serve"], "embed")
    check_saved_model(tf_models["saved_model_adam"], ["serve"], "serving_default")  # TF1: saver, restore
    check_saved_model(tf_models["saved_model_slots"], ["serve"], "serving_default")
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(Path(tf_models["frozen"]).read_bytes())
    check_graph_def(graph, "frozen.pb")
