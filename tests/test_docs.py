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
MADE_IN_THE_DOCS = {"my-base", "my-classifier", "my-digits", "my-photos", "digits04.cnn", "digits59.transfer", "pets",
                    "resnet9.acme",  # a model of the README's example source (zoo source add acme ...)
                    "mine"}
# Commands whose first argument is a model: the names the docs, help texts and docstrings give them exist.
TAKES_A_MODEL = {"info", "fetch", "convert", "layers", "extract", "train", "sweep", "predict", "verify"}
# Python calls whose first argument is a model name or file.
CALLS_A_MODEL = {"load_extractor", "transfer_model", "layers", "model_inputs", "info", "fetch", "convert", "train",
                 "sweep", "predict", "ExtractorTransformer"}


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


def _check_command(where: str, words: list[str]) -> None:
    """`zoo WORDS` names a command that exists and only options it has."""
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


@pytest.mark.parametrize("where, words", _command_cases(), ids=[w for w, _ in _command_cases()])
def test_zoo_command_in_the_docs_exists_with_its_options(where, words):
    _check_command(where, words)


def _commands() -> list[tuple[str, object]]:
    """(`zoo a b`, click command) of every command, sub-commands of groups included."""
    import click

    from zoo.cli import cli

    found, stack = [], [("zoo", cli)]
    while stack:
        path, command = stack.pop()
        if isinstance(command, click.Group):
            context = click.Context(command)
            stack += [(f"{path} {name}", command.get_command(context, name)) for name in command.list_commands(context)]
        else:
            found.append((path, command))
    return sorted(found, key=lambda pair: pair[0])


def _help_examples() -> list[tuple[str, list[str]]]:
    """(command, words) of every `zoo ...` line in the Example: part of a command's help."""
    cases = []
    for path, command in _commands():
        text = command.help or ""
        if "Example:" not in text:
            cases.append((path, []))  # no example: reported by the test
            continue
        for line in text.split("Example:", 1)[1].splitlines():
            cases += [(path, words) for words in _zoo_commands(line.strip())]
    return cases


def test_every_command_help_has_an_example_that_runs_that_command():
    cases = _help_examples()
    missing = sorted({path for path, words in cases if not words})
    assert missing == [], f"commands whose help has no example: {missing}"
    for path in {path for path, _ in cases}:
        runs = [" ".join(["zoo", *words]) for p, words in cases if p == path]
        assert any(line == path or line.startswith(path + " ") for line in runs), f"{path}'s examples: {runs}"


@pytest.mark.parametrize("where, words", [c for c in _help_examples() if c[1]],
                         ids=[f"{p}:{' '.join(w)}" for p, w in _help_examples() if w])
def test_help_text_example_exists_with_its_options(where, words):
    _check_command(f"`{where} --help`", words)


def _model_arguments(words_list: list[list[str]]) -> set[str]:
    quoted = set()
    for words in words_list:
        if words and words[0] in TAKES_A_MODEL and len(words) > 1 and not words[1].startswith("-"):
            quoted.add(words[1].split("@")[0])  # NAME@REV names a revision of NAME
    return quoted


def _not_a_file(names: set[str]) -> set[str]:
    """The names that are not a user's file (a path or a model file's name)."""
    return {name for name in names if "/" not in name and not name.endswith((".pt", ".onnx"))}


def test_model_names_in_the_docs_are_in_the_built_in_catalog():
    from zoo.catalog import open_catalog

    known = set(open_catalog().names()) | MADE_IN_THE_DOCS
    quoted = set()
    for _, code in _blocks("python"):
        quoted |= set(re.findall(
            r"zoo\.(?:load_extractor|transfer_model|layers|info|fetch|convert|predict)\(\"([^\"]+)\"", code))
    quoted |= _model_arguments([words for _, words in _command_cases()])
    names = _not_a_file(quoted)
    assert names and not (names - known), sorted(names - known)


def test_model_names_in_help_texts_are_in_the_built_in_catalog():
    from zoo.catalog import open_catalog

    known = set(open_catalog().names()) | MADE_IN_THE_DOCS
    names = _not_a_file(_model_arguments([words for _, words in _help_examples()]))
    assert "bvlc_alexnet" in names and not (names - known), sorted(names - known)


def _docstring_examples() -> list[tuple[str, str]]:
    """(module:object, code) of every `>>>` example in the docstrings of zoo/ and converters/."""
    import ast as _ast

    found = []
    for path in sorted([*(ROOT / "zoo").rglob("*.py"), *(ROOT / "converters").rglob("*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = _ast.parse(path.read_text())
        for node in [tree, *_ast.walk(tree)]:
            if not isinstance(node, (_ast.Module, _ast.ClassDef, _ast.FunctionDef, _ast.AsyncFunctionDef)):
                continue
            doc = _ast.get_docstring(node, clean=True)
            if not doc or ">>>" not in doc:
                continue
            lines = [re.sub(r"\s*# doctest:.*$", "", line.strip()[4:]) for line in doc.splitlines()
                     if line.strip().startswith((">>> ", "... ")) or line.strip() in (">>>", "...")]
            found.append((f"{module}:{getattr(node, 'name', '')}", "\n".join(lines)))
    return found


@pytest.mark.parametrize("where, code", _docstring_examples(), ids=[w for w, _ in _docstring_examples()])
def test_docstring_example_is_python_that_names_real_apis_and_models(where, code):
    """Every `>>>` example parses, calls what exists with keywords it takes, and names models that exist."""
    _check_example(where, code)


@pytest.mark.parametrize("code, problem", [
    ('zoo.load_extractor("bvlc_alexnet.caffe", layer="fc7")', "no model 'bvlc_alexnet.caffe'"),
    ('zoo.fit_head(f, y, epoch=3)', "takes no ['epoch']"),
    ('zoo.no_such_function()', "zoo.no_such_function does not exist"),
])
def test_the_docstring_check_catches_a_wrong_name(code, problem):
    with pytest.raises(AssertionError, match=re.escape(problem)):
        _check_example("zoo.extract:planted", code)


def _check_example(where: str, code: str) -> None:
    import importlib
    import inspect

    import zoo
    from zoo.catalog import open_catalog

    tree = ast.parse(code)
    module = importlib.import_module(where.split(":")[0])
    names = {**vars(zoo), **{n: getattr(zoo, n) for n in zoo.__all__ if n != "__version__"}, **vars(module)}
    known = set(open_catalog().names()) | MADE_IN_THE_DOCS

    def resolve(node: ast.AST):
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "zoo":
            assert hasattr(zoo, node.attr), f"{where}: zoo.{node.attr} does not exist"
            return getattr(zoo, node.attr)
        return None

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (target := resolve(node.func)) is None or not callable(target):
            continue
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            wrong = [k.arg for k in node.keywords if k.arg and k.arg not in params]
            assert not wrong, f"{where}: {ast.unparse(node.func)}() takes no {wrong}"
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name in CALLS_A_MODEL and node.args and isinstance(node.args[0], ast.Constant):
            model = str(node.args[0].value)
            assert not _not_a_file({model}) or model in known, f"{where}: no model {model!r} in the built-in catalog"


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
