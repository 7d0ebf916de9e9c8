"""The README and docs/ say what the code does: their snippets name real APIs, options, models and files."""
from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Models the docs create themselves (zoo pretrain / train / the walkthrough) rather than find.
MADE_IN_THE_DOCS = {"my-base", "my-classifier", "my-digits", "my-photos", "digits04.cnn", "digits59.transfer"}


def _blocks(language: str) -> list[tuple[str, str]]:
    """(file:line, code) of every fenced block in `language` in the README and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
            line = text[:match.start()].count("\n") + 2
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def _zoo_references(code: str) -> tuple[set[str], list[tuple[str, list[str]]]]:
    """Dotted names rooted at `zoo` (zoo.features.extract_features; `module:name` for a `from zoo.x
    import name`) and the keywords each call passes."""
    tree = ast.parse(code)
    names: set[str] = set()
    calls: list[tuple[str, list[str]]] = []

    def dotted(node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "zoo" and parts:
            return ".".join(["zoo", *reversed(parts)])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (name := dotted(node)):
            names.add(name)
        if isinstance(node, ast.Call) and (name := dotted(node.func)):
            calls.append((name, [k.arg for k in node.keywords if k.arg]))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zoo":
            names.update(f"{node.module}:{alias.name}" for alias in node.names)
    return names, calls


def test_docs_have_snippets_to_check():
    assert len(_blocks("python")) >= 5 and len(_blocks("bash")) >= 8


@pytest.mark.parametrize("where, code", _blocks("python"), ids=[w for w, _ in _blocks("python")])
def test_python_snippet_is_valid_python(where, code):
    ast.parse(code)


# Files zoo writes whose names look like `zoo.x` in the docs.
FILE_NAMES = {"zoo.lock"}


@pytest.mark.slow
def test_python_snippets_name_real_apis_in_a_fresh_interpreter():
    """Every `zoo.x.y` resolves after only `import zoo`, and every keyword is a parameter."""
    names: set[str] = set()
    calls: list[tuple[str, list[str]]] = []
    for where, code in _blocks("python"):
        found, made = _zoo_references(code)
        names |= found
        calls += [(f"{where}: {name}", name, keywords) for name, keywords in made]
    for path in DOCS:  # and the `zoo.x.y` the prose names
        names |= {m.rstrip(".") for m in re.findall(r"`(zoo\.[A-Za-z_][\w.]*)", path.read_text())}
    names -= FILE_NAMES  # files zoo writes, not Python names
    assert "zoo.features.extract_features" in names  # the reference the issue found broken
    checker = r"""
import importlib, inspect, json, sys
import zoo
names, calls = json.loads(sys.argv[1])
def resolve(dotted):
    if ":" in dotted:  # from zoo.x import y
        module, name = dotted.split(":")
        return getattr(importlib.import_module(module), name)
    obj = zoo
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj
problems = []
for name in names:
    try:
        resolve(name)
    except Exception as exc:
        problems.append(f"{name}: {type(exc).__name__}: {exc}")
for where, name, keywords in calls:
    try:
        params = inspect.signature(resolve(name)).parameters
    except Exception:
        continue
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        continue
    problems += [f"{where} passes {k}=, not a parameter of {name}" for k in keywords if k not in params]
print(json.dumps(problems))
"""
    import zoo

    # `zoo.features.x` works by accident once anything imported zoo.features: every submodule a
    # snippet reaches through `zoo.` gets an interpreter of its own; the public names share one.
    def first(name: str) -> str:
        return name.split(":")[0].split(".")[1] if "." in name.split(":")[0] else ""

    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault("" if first(name) in zoo.__all__ or ":" in name else first(name), set()).add(name)
    assert len(groups) > 1
    problems = []
    for key, group in groups.items():
        mine = [c for c in calls if c[1] in group]
        done = subprocess.run([sys.executable, "-c", checker, json.dumps([sorted(group), mine])],
                              capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr
        problems += json.loads(done.stdout)
    assert problems == []


def _zoo_commands(line: str) -> list[list[str]]:
    """The argument lists of the `zoo ...` commands on one shell line."""
    line = re.sub(r"(^|\s)#.*$", "", line)
    commands = []
    for part in re.split(r"&&|\|\||;|\|", line):
        words = shlex.split(part)
        if words and Path(words[0]).name == "zoo":
            commands.append(words[1:])
    return commands


def _command_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for where, code in _blocks("bash"):
        for offset, line in enumerate(code.splitlines()):
            cases += [(f"{where.rsplit(':', 1)[0]}:{int(where.rsplit(':', 1)[1]) + offset}", words)
                      for words in _zoo_commands(line)]
    return cases


@pytest.mark.parametrize("where, words", _command_cases(), ids=[w for w, _ in _command_cases()])
def test_zoo_command_in_the_docs_exists_with_its_options(where, words):
    import click

    from zoo.cli import cli

    command, rest = cli, list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])  # commands load lazily
        assert sub is not None, f"{where}: `zoo {' '.join(words)}`: no command {rest[0]!r}"
        command = sub
        rest.pop(0)
    assert not isinstance(command, click.Group) or not rest, f"{where}: incomplete command {words}"
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    options |= {"-h", "--help"}
    for word in rest:
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            assert word.split("=")[0] in options, f"{where}: `zoo {' '.join(words)}`: no option {word}"


def test_model_names_in_the_docs_are_in_the_built_in_catalog():
    from zoo.catalog import open_catalog

    known = set(open_catalog().names()) | MADE_IN_THE_DOCS
    quoted = set()
    for _, code in _blocks("python"):
        quoted |= set(re.findall(
            r"zoo\.(?:load_extractor|transfer_model|layers|info|fetch|convert)\(\"([^\"]+)\"", code))
    takes_a_model = {"info", "fetch", "convert", "layers", "extract", "train", "sweep"}
    for _, words in _command_cases():
        if words and words[0] in takes_a_model and len(words) > 1 and not words[1].startswith("-"):
            quoted.add(words[1].split("@")[0])  # NAME@REV names a revision of NAME
    paths = {name for name in quoted if "/" in name or name.endswith((".pt", ".onnx"))}  # a user's file
    assert quoted - paths and not (quoted - paths - known), sorted(quoted - paths - known)


def test_python_m_modules_and_scripts_the_docs_run_exist():
    run = []
    for where, code in _blocks("bash"):
        run += [(where, m) for m in re.findall(r"python -m ([\w.]+)", code)]
        run += [(where, p) for p in re.findall(r"(?:python|bash) ((?:bench|scripts)/[\w./-]+)", code)]
    assert any(target == "zoo.demos.digits" for _, target in run)
    for where, target in run:
        if "/" in target:
            assert (ROOT / target).is_file(), f"{where}: {target} does not exist"
        else:
            source = (ROOT / target.replace(".", "/")).with_suffix(".py").read_text()
            assert 'if __name__ == "__main__":' in source, f"{where}: `python -m {target}` would do nothing"


@pytest.mark.slow
def test_extract_features_as_the_docs_write_it_works_in_a_fresh_interpreter(tmp_path):
    """docs/walkthrough.md calls zoo.features.extract_features after only `import zoo`."""
    import numpy as np
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]),
        opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (tmp_path / "tiny.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", np.arange(-6, 6, dtype=np.float32).reshape(3, 4))
    code = ("import zoo, numpy as np\n"
            "extractor = zoo.load_extractor('tiny.onnx', layer='relu')\n"
            "result = zoo.features.extract_features(extractor, 'x.npy', progress=False)\n"
            "print(result.features.sum())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == float(np.maximum(np.arange(-6, 6), 0).sum())


@pytest.mark.slow
def test_pretrain_doc_snippets_run_in_order_offline(tmp_path):
    """docs/pretrain.md's Python blocks, run as written (fewer epochs) on the digits, in one fresh interpreter."""
    pytest.importorskip("sklearn")
    blocks = [code for where, code in _blocks("python") if where.startswith("docs/pretrain.md")]
    assert len(blocks) >= 2
    prelude = ("from sklearn.datasets import load_digits\n"
               "X_unlabelled = X = (load_digits().data / 16.0).astype('float32')\n")
    script = prelude + "\n".join(blocks).replace("epochs=60", "epochs=1")
    script += "\nprint(result.transform(X).shape, type(model).__name__)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("(1797, 100)")


def test_index_format_example_is_a_valid_index():
    from zoo.index import parse_index

    example = next(code for where, code in _blocks("json") if where.startswith("docs/index-format.md"))
    models = parse_index(json.loads(example), source="docs")
    assert models and all(model.name for model in models)


@pytest.mark.slow
def test_readme_and_walkthrough_snippets_run_offline_on_a_stand_in_alexnet(tmp_path):
    """The README's and docs/walkthrough.md's Python blocks, run as written in one fresh interpreter.

    The onnx package's light AlexNet (Caffe layer names, random weights, dynamic batch) stands in
    for the 233 MB `bvlc_alexnet` download; the data are small random arrays and PNG files.
    """
    import numpy as np
    import onnx
    from helpers.onnx_to_torch import light_model_randomized
    from helpers.zoo_nets import onnx_light_models
    from PIL import Image

    onnx.save(light_model_randomized(onnx_light_models() / "light_bvlc_alexnet.onnx"), tmp_path / "alexnet.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.random((4, 3, 224, 224), dtype=np.float32))
    for label in ("cats", "dogs"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{k}.png")
    blocks = [code for where, code in _blocks("python")
              if where.startswith(("README.md", "docs/walkthrough.md"))]
    prelude = ("import numpy as np, zoo\n"
               "zoo.remove('bvlc_alexnet')\n"
               "zoo.add('alexnet.onnx', name='bvlc_alexnet')\n"
               "labels = np.array([0, 1, 0, 1])\n")
    script = prelude + "\n".join(block.replace("epochs=20", "epochs=2") for block in blocks)
    script += "\nprint(features.shape, result.classes, fit.predict(test_features).shape, net.fc7.weight.shape)\n"
    script = script.replace("fit.predict(test_features)", "fit.predict(features[:2])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(4, 4096) ['cats', 'dogs'] (2,) torch.Size([4096, 4096])"
    assert (tmp_path / "fc7.pt").is_file() and (tmp_path / "fc7.ts").is_file()
