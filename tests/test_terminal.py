"""Terminal safety: what came from an index, a model or a file name never reaches the terminal raw.

Built here: an index whose description, tags, license and meta carry an OSC window-title sequence,
colour escapes, BEL and a bidi override; an ONNX model whose node and tensor names carry them; a
model file whose name carries them. `--json` stays lossless (the controls as ``\\u`` escapes).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo._terminal import safe_line, safe_text
from zoo.cli import cli

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202eexe.txt\x9b1m\r\x08"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _clean(output: str) -> None:
    found = RAW.findall(output)
    assert not found, f"raw controls reached the terminal: {found!r}"


def test_safe_text_shows_every_control_as_an_escape():
    assert safe_text("a\x1b[31mb\u202ec\x07") == "a\\x1b[31mb\\u202ec\\x07"
    assert safe_text("two\nlines\tok") == "two\nlines\tok"
    assert safe_line("two\nlines\tok\r") == "two\\nlines\\tok\\r"
    assert safe_text("caf\udce9.onnx") == "caf\\xe9.onnx"  # a file name that is not UTF-8
    assert safe_text("日本語 ünïcödé") == "日本語 ünïcödé"


@pytest.fixture
def hostile_index(tmp_path):
    entry = {
        "name": "evil.model", "framework": "onnx", "format": "onnx", "task": f"cls{HOSTILE}",
        "description": f"a model {HOSTILE}\nlocal:          yes (forged line)", "license": HOSTILE,
        "tags": [f"tag{HOSTILE}"], "meta": {"note": HOSTILE},
        "files": [{"role": "model", "filename": "evil.onnx", "url": "https://example.org/evil.onnx",
                   "sha256": "0" * 64}],
    }
    index = {"format": "zoo-index/1", "name": "evil", "description": HOSTILE, "models": [entry]}
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    return path


def test_index_text_is_shown_escaped_and_json_stays_lossless(hostile_index):
    runner = CliRunner()
    assert runner.invoke(cli, ["source", "add", "evil", str(hostile_index)]).exit_code == 0
    for command in (["info", "evil.model"], ["search", "model"], ["list", "--source", "evil"],
                    ["source", "list"], ["search", "--tag", f"tag{HOSTILE}"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)
        _clean(result.output)
    info = runner.invoke(cli, ["info", "evil.model"]).output
    assert "\\x1b]0;owned\\x07" in info and "\\u202e" in info
    assert not any(line.startswith("local:") for line in info.splitlines())  # no forged line
    data = json.loads(runner.invoke(cli, ["info", "evil.model", "--json"]).output)
    assert data["description"].startswith(f"a model {HOSTILE}") and data["tags"] == [f"tag{HOSTILE}"]


def test_onnx_node_names_and_file_names_are_shown_escaped(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bad = "relu\x1b]0;pwn\x07\u202e"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], [bad], name=f"node{bad}"),
         helper.make_node("Neg", [bad], ["y"], name="neg")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / f"m{HOSTILE.replace(chr(8), '')}.onnx"
    onnx.save(model, path)
    runner = CliRunner()
    for command in (["layers", str(path)], ["scan", str(folder)], ["list"], ["layers", str(path), "--inputs"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)
        _clean(result.output)
    assert "relu\\x1b]0;pwn\\x07\\u202e" in runner.invoke(cli, ["layers", str(path)]).output
    out = runner.invoke(cli, ["extract", str(path), "-l", bad, "-i", str(tmp_path / "nope.npy"),
                              "-o", str(tmp_path / "o.npy")]).output
    _clean(out)


def test_every_print_in_the_cli_goes_through_the_output_layer():
    """The rule that keeps the above true: only zoo/cli/_app.py talks to click.echo or print."""
    root = Path(__file__).resolve().parent.parent / "zoo" / "cli"
    offenders = []
    for module in root.glob("*.py"):
        if module.name == "_app.py":
            continue
        for number, line in enumerate(module.read_text().splitlines(), 1):
            if re.search(r"\bclick\.echo\(|(?<![\w.])print\(|\bsys\.std(out|err)\.write\(", line):
                offenders.append(f"{module.name}:{number}: {line.strip()}")
    assert not offenders, "print through zoo.cli._app.echo/emit/table instead:\n" + "\n".join(offenders)
