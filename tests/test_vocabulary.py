"""One vocabulary: the CLI's flags and the Python API's keywords have the same names and defaults.

`test_every_flag_is_a_python_keyword_with_the_same_default` walks every click command and the
Python functions (and options objects) that do its work; `test_every_python_keyword_has_a_flag`
walks back. A difference fails unless it is listed below with the reason it is intended.
"""
from __future__ import annotations

import dataclasses
import inspect
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.errors import UnknownOptionError
from zoo.options import ExtractorOptions, PretrainConfig, TrainingConfig
from zoo.records import InputSpec


def _python():
    """command -> the callables and options classes whose parameters its flags are."""
    from zoo import bom, cache_manager, hubs, lineage, lockfile, publish, signatures
    from zoo.catalog import open_catalog
    from zoo.catalog import Catalog
    from zoo.demos import walkthrough
    from zoo.extract import model_inputs
    from zoo.features import save_features
    from zoo.predictions import Predictions
    from zoo.ray_engine import RayEngine

    ray = [RayEngine]
    return {
        "search": [zoo.search, Catalog.search, hubs.search],
        "list": [zoo.list_models, Catalog.search],
        "info": [zoo.info],
        "add": [zoo.add, InputSpec],  # --mean, --std ... are fields of input_spec=
        "edit": [zoo.edit, InputSpec],
        "scan": [zoo.scan, InputSpec],
        "rm": [zoo.remove],
        "source add": [zoo.add_source],
        "source list": [zoo.list_sources],
        "source sync": [zoo.sync_sources],
        "source rm": [zoo.remove_source],
        "fetch": [zoo.fetch, lockfile.fetch_locked],
        "lock": [lockfile.lock],
        "init": [open_catalog],
        "index export": [publish.export_index],
        "cache gc": [cache_manager.plan_gc],
        "verify": [zoo.verify, signatures.verify_signatures],
        "sign": [zoo.sign],
        "lineage": [lineage.chain],
        "bom": [bom.write],
        "convert": [zoo.convert],
        "layers": [zoo.layers, model_inputs],
        "extract": [save_features, ExtractorOptions, zoo.load_extractor, zoo.as_source, *ray],
        "train": [zoo.train, TrainingConfig, ExtractorOptions, *ray],
        "sweep": [zoo.sweep, TrainingConfig, ExtractorOptions, *ray],
        "predict": [zoo.predict, ExtractorOptions, Predictions.save, *ray],
        "pretrain": [zoo.pretrain, PretrainConfig],
        "walkthrough": [walkthrough.run],
        "cache list": [cache_manager.scan],
        "cache rm": [cache_manager.plan_removal, cache_manager.scan],
    }


# Flags with no keyword of that name, and why. "*" applies to every command.
CLI_ONLY = {
    ("*", "json"): "the output format: Python returns objects",
    ("*", "quiet"): "-q is progress=False in Python (checked below)",
    ("*", "strict_images"): "the old spelling of --on-error raise, hidden",
    ("*", "address"): "with --actors, engine=zoo.RayEngine(address=..., actors=...)",
    ("*", "actors"): "see --address",
    ("extract", "index_out"): "save_features(index_out=): matched, listed for the CSV",
    ("extract", "output"): "save_features(output) is positional",
    ("predict", "output"): "Predictions.save(path)",
    ("sweep", "plot"): "SweepResult.plot(path)",
    ("sweep", "validation_labels"): "validation=(data, labels) is one pair in Python",
    ("sweep", "test_labels"): "test=(data, labels) is one pair in Python",
    ("fetch", "max_unpack_size"): "unpack_limits=zoo.archives.UnpackLimits(max_bytes=...)",
    ("layers", "inputs"): "zoo.extract.model_inputs(name) instead of layers(name)",
    ("cache rm", "all"): "plan_removal(everything=True)",
    ("cache gc", "dry_run"): "a plan not executed: plan_gc(...) without .execute()",
    ("fetch", "locked"): "zoo.lockfile.fetch_locked(names, lock_file=) instead of fetch(names)",
    ("info", "paths"): "where zoo keeps things: zoo.config's paths, read by a program directly",
    ("search", "hub"): "zoo.hubs.search(query, author=, libraries=, offline=) instead of zoo.search",
    ("source add", "author"): "a hub source's settings: zoo.hubs, not an index URL's",
    ("source add", "library"): "see --author",
    ("index export", "output"): "export_index(names, output) is positional",
    ("index export", "name"): "export_index(index_name=): the index's name, not a model's",
    ("cache rm", "dry_run"): "a plan not executed: plan_removal(...) without .execute()",
    ("cache list", "kind"): "scan(kinds=[...]): one flag per kind",
    ("cache rm", "kind"): "scan(kinds=[...]): one flag per kind",
    ("add", "tag"): "add(tags=[...]): one flag per tag",
    ("source add", "signer_key"): "signer=zoo.Signer.from_files(key=, certificate_chain=, identity=, issuer=, "
                                  "trust_config=), one flag per file",
    ("source add", "signer_cert_chain"): "see --signer-key",
    ("source add", "signer_identity"): "see --signer-key",
    ("source add", "signer_issuer"): "see --signer-key",
    ("source add", "signer_trust_config"): "see --signer-key",
    ("verify", "signatures"): "verify_signatures(names) instead of verify(names)",
    ("verify", "key"): "verify_signatures(signer=zoo.Signer.from_files(key=...))",
    ("sign", "key_password"): "sign(password=): in Python it sits beside key=; the flag says whose password",
    ("bom", "output"): "bom.write(name, path)",
}
# Flags whose default differs from the keyword's, and why.
DEFAULTS_DIFFER = {
    ("fetch", "offline"): "an absent flag is offline=None: $ZOO_OFFLINE decides, as in Python",
    ("layers", "inputs"): "a switch",
    ("lock", "quiet"): "a library call is quiet by default (lock(quiet=True)); the command talks unless -q",
    ("search", "offline"): "an absent --offline is offline=None: $ZOO_OFFLINE / HF_HUB_OFFLINE decide, as in Python",
}
# Keywords of a command's main function with no flag, and why.
PYTHON_ONLY = {
    ("*", "progress"): "-q",
    ("*", "providers"): "device= names the providers; a list of them is Python's",
    ("*", "extractor"): "the options object the flags build",
    ("*", "training"): "the options object the flags build",
    ("*", "options"): "the options object the flags build",
    ("*", "config"): "the options object the flags build",
    ("*", "engine"): "--engine (with --address, --actors)",
    ("*", "chunk_size"): "rows per unit of work: the extractor's batch size unless a program tunes it",
    ("search", "query"): "the QUERY argument",
    ("source add", "signer"): "--signer-key & co. build it",
    ("sign", "password"): "--key-password",
    ("bom", "path"): "--output",
    ("fetch", "session"): "a requests.Session to reuse: a program's concern",
    ("fetch", "on_file"): "a callback per file: the command prints instead",
    ("fetch", "retry"): "zoo.RetryPolicy; the command reads $ZOO_FETCH_*",
    ("fetch", "unpack_limits"): "--max-unpack-size",
    ("pretrain", "cache"): "only to measure what caching saves (docs/pretrain.md)",
    ("train", "layer"): "--layer",
    ("lock", "offline"): "$ZOO_OFFLINE decides, as for zoo fetch without --offline",
    ("init", "create"): "zoo init always creates: that is the command",
    ("init", "builtins"): "zoo init loads the built-in zoos, as every new catalog does",
    ("walkthrough", "val_per_class"): "the demo's fixed design; --labels-per-class is the knob",
    ("walkthrough", "base_epochs"): "the demo's fixed design",
    ("walkthrough", "head_epochs"): "the demo's fixed design",
    ("walkthrough", "layers"): "the demo's fixed design",
    ("walkthrough", "unfreeze"): "the demo's fixed design",
    ("walkthrough", "seed"): "the demo's fixed design",
    ("walkthrough", "echo"): "-q",
}


def _commands() -> list[tuple[str, click.Command]]:
    found, stack = [], [("", cli)]
    while stack:
        path, command = stack.pop()
        if isinstance(command, click.Group):
            context = click.Context(command)
            stack += [((path + " " + name).strip(), command.get_command(context, name))
                      for name in command.list_commands(context)]
        else:
            found.append((path, command))
    return sorted(found, key=lambda pair: pair[0])


def test_every_command_is_mapped_to_python():
    """A new command joins the walk: it says which Python functions its flags are."""
    assert sorted(path for path, _ in _commands()) == sorted(_python())


def _keywords(target) -> dict[str, object]:
    """A callable's or options class's keywords and their defaults (inspect.Parameter.empty: required)."""
    if dataclasses.is_dataclass(target):
        return {f.name: f.default for f in dataclasses.fields(target)}
    return {p.name: p.default for p in inspect.signature(target).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}


def _names(option: click.Option) -> set[str]:
    """The identifiers an option answers to: its destination and each long flag."""
    return {option.name, *(o.lstrip("-").replace("-", "_") for o in [*option.opts, *option.secondary_opts]
                           if o.startswith("--"))}


def _same(flag_default, python_default, option: click.Option) -> bool:
    """Whether two defaults mean the same (a flag's text parsed as the CLI parses it)."""
    from zoo.cli._options import layer_value

    empty = (None, (), [], "", inspect.Parameter.empty)
    if option.is_flag and not option.secondary_opts and flag_default in (None, False):
        flag_default = False
    if flag_default in empty and python_default in empty:
        return True
    if isinstance(flag_default, tuple) and len(flag_default) == 1:
        flag_default = flag_default[0]
    if isinstance(flag_default, str) and not isinstance(python_default, str):
        parts = [layer_value(p) for p in flag_default.split(",") if p.strip()]
        flag_default = tuple(parts) if isinstance(python_default, (tuple, list)) else parts[0] if parts else None
        python_default = tuple(python_default) if isinstance(python_default, list) else python_default
    return flag_default == python_default


def _intended(table: dict, command: str, name: str) -> bool:
    return (command, name) in table or ("*", name) in table


@pytest.mark.parametrize("command", sorted(_python()))
def test_every_flag_is_a_python_keyword_with_the_same_default(command):
    where = dict(_commands())[command]
    keywords: dict[str, object] = {}
    for target in _python()[command]:
        for name, default in _keywords(target).items():
            keywords.setdefault(name, default)
    context = click.Context(where)
    problems = []
    for param in where.params:
        if not isinstance(param, click.Option) or param.hidden and _intended(CLI_ONLY, command, param.name):
            continue
        names = _names(param)
        match = next((n for n in sorted(names) if n in keywords), None)
        if match is None:
            if not any(_intended(CLI_ONLY, command, n) for n in names):
                problems.append(f"zoo {command} {param.opts[0]}: no Python keyword {' or '.join(sorted(names))}")
            continue
        default = param.get_default(context, call=False)
        if param.required or _intended(DEFAULTS_DIFFER, command, match):
            continue
        if not _same(default if default is not click.core.UNSET else None, keywords[match], param):
            problems.append(f"zoo {command} {param.opts[0]} defaults to {default!r}, {match}= to {keywords[match]!r}")
    assert problems == []


def _main(command: str):
    return _python()[command][0]


@pytest.mark.parametrize("command", sorted(_python()))
def test_every_python_keyword_has_a_flag(command):
    """The other way: sweep(test=) had no flag. Keyword-only and optional parameters need one."""
    where = dict(_commands())[command]
    flags = set().union(*(_names(p) for p in where.params if isinstance(p, click.Option)))
    arguments = [p.name for p in where.params if isinstance(p, click.Argument)]
    params = [p for p in inspect.signature(_main(command)).parameters.values() if p.name != "self"]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    for index, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in flags or _intended(PYTHON_ONLY, command, p.name):
            continue
        if p.name in arguments or p in positional and (index < len(arguments) or p.default is p.empty):
            continue  # a command argument (by name, else by position) or data given by a flag named otherwise
        problems.append(f"{_main(command).__qualname__}({p.name}=) has no flag on `zoo {command}`")
    assert problems == []


def test_the_lists_of_intended_differences_name_real_flags_and_keywords():
    """A stale entry (a flag renamed, a keyword removed) would hide the next real difference."""
    commands = dict(_commands())
    for table in (CLI_ONLY, DEFAULTS_DIFFER):
        for command, name in table:
            if command == "*":
                assert any(name in _names(p) for _, c in commands.items() for p in c.params
                           if isinstance(p, click.Option)), name
            else:
                assert any(name in _names(p) for p in commands[command].params if isinstance(p, click.Option)), \
                    (command, name)
    for command, name in PYTHON_ONLY:
        if command != "*":
            assert name in inspect.signature(_main(command)).parameters, (command, name)


def test_quiet_is_spelled_one_way_everywhere_and_every_command_with_progress_has_it():
    for path, command in _commands():
        quiet = [p for p in command.params if "--quiet" in getattr(p, "opts", [])]
        for p in quiet:
            assert p.opts == ["-q", "--quiet"] and p.is_flag, path
            assert p.help.startswith("Quiet: no progress bars"), path
        if path in _python() and "progress" in inspect.signature(_main(path)).parameters:
            assert quiet, f"zoo {path} shows progress but has no -q"


# ---- keywords in Python ----------------------------------------------------------------------------


def test_fit_head_takes_the_config_fields_as_keywords_and_names_the_closest_on_a_typo():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    by_keyword = zoo.fit_head(x, y, epochs=3, seed=1, progress=False)
    by_object = zoo.fit_head(x, y, TrainingConfig(epochs=3, seed=1, progress=False))
    assert by_keyword.history == by_object.history
    on_top = zoo.fit_head(x, y, TrainingConfig(epochs=9, seed=1), epochs=3, progress=False)  # a keyword wins
    assert on_top.history == by_object.history
    with pytest.raises(UnknownOptionError, match="no option 'epoch'; closest: epochs") as err:
        zoo.fit_head(x, y, epoch=3)
    assert err.value.closest == ["epochs"] and isinstance(err.value, TypeError)
    with pytest.raises(UnknownOptionError, match="no option 'unfreeze'"):  # not fit_head's: train's
        zoo.fit_head(x, y, unfreeze=1)
    with pytest.raises(zoo.ZooError, match="takes a zoo.TrainingConfig"):
        zoo.fit_head(x, y, {"epochs": 3})
    signature = inspect.signature(zoo.fit_head)  # help() and IDEs see the keywords
    assert signature.parameters["epochs"].default == 20 and signature.parameters["progress"].default is True


def test_the_public_functions_take_their_options_as_keywords():
    for function, fields in [(zoo.train, TrainingConfig), (zoo.train, ExtractorOptions), (zoo.sweep, TrainingConfig),
                             (zoo.pretrain, PretrainConfig), (zoo.load_extractor, ExtractorOptions),
                             (zoo.transfer_model, ExtractorOptions), (zoo.predict, ExtractorOptions)]:
        params = inspect.signature(function).parameters
        skip = {"layer", "unfreeze", "pooling", "on_error"}  # each function's own, or fixed by it
        for f in dataclasses.fields(fields):
            if f.name not in skip:
                assert f.name in params, f"{function.__name__} has no {f.name}="
    for function in (zoo.cache_features, zoo.extract_features, zoo.save_features):
        params = inspect.signature(function).parameters
        assert {"on_error", "image_size", "progress", "engine", "cache_dir"} <= set(params), function.__name__
    assert "name" in inspect.signature(zoo.train).parameters and "name" in inspect.signature(zoo.pretrain).parameters


def test_train_still_takes_new_name_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"train\(new_name=...\) is now train\(name=...\)"):
        with pytest.raises(zoo.ZooError):  # the model does not exist: the keyword was accepted first
            zoo.train(str(tmp_path / "none.onnx"), np.zeros((4, 2), np.float32), [0, 1, 0, 1], new_name="x")


# ---- quiet and CLI syntax ---------------------------------------------------------------------------


@pytest.fixture
def digits(tmp_path):
    from helpers.transfer import register_digits_cnn

    from zoo.demos.walkthrough import digits as load

    model = register_digits_cnn()
    x, y = load()
    np.save(tmp_path / "x.npy", x[:60])
    np.save(tmp_path / "y.npy", y[:60])
    return model.name, tmp_path


def test_quiet_train_prints_the_saved_model_only(digits):
    name, folder = digits
    args = ["train", name, "--layer", "relu3", "-d", str(folder / "x.npy"), "-y", str(folder / "y.npy"),
            "--epochs", "3"]
    loud = CliRunner().invoke(cli, [*args, "--name", "loud"])
    quiet = CliRunner().invoke(cli, [*args, "--name", "quiet", "-q"])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "EPOCH" in loud.stdout and "note: not converged" in loud.stdout
    assert quiet.stdout.strip().splitlines() == [quiet.stdout.strip()] and quiet.stdout.startswith("saved quiet")


def test_cli_errors_name_flags_and_python_errors_name_keywords(digits, tmp_path):
    name, folder = digits
    deep = ["train", name, "--layer", "pool1", "--unfreeze", "9", "-d", str(folder / "x.npy"),
            "-y", str(folder / "y.npy"), "--name", "deep"]
    done = CliRunner().invoke(cli, deep)
    assert done.exit_code == 1 and "--unfreeze 9" in done.output and "unfreeze=" not in done.output
    with pytest.raises(zoo.ZooError, match=r"unfreeze=9") as err:
        zoo.train(name, folder / "x.npy", folder / "y.npy", name="deep", layer="pool1", unfreeze=9)
    assert "--unfreeze" not in str(err.value)
    # a multi-input model's missing input: -i NAME=FILE.npy, not extractor(NAME=...)
    two = _two_inputs(tmp_path / "two.onnx")
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    done = CliRunner().invoke(cli, ["extract", str(two), "-l", "-1", "-i", f"a={tmp_path / 'a.npy'}",
                                    "-o", str(tmp_path / "f.npy")])
    assert done.exit_code == 1 and "-i b=FILE.npy" in done.output and "extractor(" not in done.output, done.output
    with pytest.raises(zoo.ZooError, match=r"extractor\(a=\.\.\., b=\.\.\.\)"):
        zoo.load_extractor(two, -1)(a=np.zeros((2, 3), np.float32))


def _two_inputs(path):
    """A real ONNX model with two inputs, a and b: relu(a + b)."""
    import onnx
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")],
        "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_sweep_takes_validation_and_test_sets_as_flags(digits):
    name, folder = digits
    from zoo.demos.walkthrough import digits as load

    x, y = load()
    np.save(folder / "vx.npy", x[60:100])
    np.save(folder / "vy.npy", y[60:100])
    done = CliRunner().invoke(cli, ["sweep", name, "-d", str(folder / "x.npy"), "-y", str(folder / "y.npy"),
                                    "-l", "pool1,relu3", "--epochs", "2", "--validation", str(folder / "vx.npy"),
                                    "--validation-labels", str(folder / "vy.npy"), "--test", str(folder / "vx.npy"),
                                    "--test-labels", str(folder / "vy.npy"), "--json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)["rows"]
    assert [r["val_rows"] for r in rows] == [40, 40]
    assert all(r["test_accuracy"] == r["val_accuracy"] for r in rows)  # the same rows, the same head
    bad = CliRunner().invoke(cli, ["sweep", name, "-d", str(folder / "x.npy"), "-y", str(folder / "y.npy"),
                                   "-l", "pool1", "--test-labels", str(folder / "vy.npy")])
    assert bad.exit_code == 1 and "--test-labels needs --test DATA" in bad.output


def test_a_missing_file_given_as_a_path_says_it_does_not_exist(tmp_path):
    for argv in (["info", str(tmp_path / "nope.onnx")], ["layers", "models/nope.onnx"],
                 ["predict", "./nope.onnx", "-i", str(tmp_path)], ["convert", "~/nope.keras"]):
        done = CliRunner().invoke(cli, argv)
        assert done.exit_code == 1 and "does not exist" in done.output, (argv, done.output)
        assert "not in the catalog" not in done.output, (argv, done.output)
    with pytest.raises(zoo.ZooError, match="does not exist"):
        zoo.load_extractor(tmp_path / "nope.onnx", -1)
    plain = CliRunner().invoke(cli, ["info", "no-such-model"])  # a name, not a path: the catalog's words
    assert plain.exit_code == 1 and "not in the catalog" in plain.output


def test_sizes_are_said_in_one_unit_system():
    import re
    from pathlib import Path

    from zoo.units import human_size

    assert [human_size(n) for n in (512, 1536, 64 << 20, 3 << 30)] == ["512 B", "1.5 KiB", "64.0 MiB", "3.0 GiB"]
    root = Path(zoo.__file__).parent
    decimal = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py")
               for m in re.finditer(r"\d\s?(kB|KB|MB|GB)\b", p.read_text())]
    assert decimal == [], "say sizes in KiB/MiB/GiB (zoo.units.human_size)"
