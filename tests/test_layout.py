"""The layout's rule, read from the code: data flows one way (CLI -> library -> catalog/fetch/converters
-> ground floor), no import circles, and no module reaches for another's private names.

Every module of zoo/ and converters/ has a layer below; a new module fails here until it is given
one, so where it belongs is decided, not drifted into. Imports under `if TYPE_CHECKING:` are for
type checkers and never run: they are left out. Imports inside functions count: they run too.
"""
from __future__ import annotations

import pytest
from helpers.imports import read_imports

# Top to bottom. A module may import modules of its own layer or of any layer below it, except:
# converters import only the ground-floor modules in CONVERTERS_USE, and the ground floor imports
# only itself.
LAYERS: dict[str, tuple[str, ...]] = {
    "cli": ("zoo.cli",),
    "demos": ("zoo.demos",),
    # The public line: zoo/__init__.py imports its names lazily (importlib), so it has no edges.
    "api": ("zoo",),
    "library": (
        "zoo.cache_manager", "zoo.conversion", "zoo.extract", "zoo.features", "zoo.datasources",
        "zoo.engines", "zoo.ray_engine", "zoo.parquet", "zoo.transfer", "zoo.layer_sweep", "zoo.predictions",
        "zoo.pretraining", "zoo.autoencoder", "zoo.rbm", "zoo.torch_models", "zoo.local", "zoo.bom",
        "zoo.folding",
    ),
    "catalog and fetch": (
        "zoo.catalog", "zoo._backend", "zoo._sqlite", "zoo._postgres", "zoo._orm", "zoo.schema", "zoo.migrations",
        "zoo.sources", "zoo.hubs", "zoo.index", "zoo.download", "zoo.lockfile", "zoo.transport", "zoo.archives",
        "zoo.signatures", "zoo.lineage", "zoo.publish",
    ),
    "converters": ("converters",),
    "ground floor": (
        "zoo.errors", "zoo.records", "zoo.revisions", "zoo.config", "zoo.locks", "zoo.units", "zoo.hashes", "zoo.atomic",
        "zoo.cache", "zoo.store", "zoo.formats",
        "zoo.tflite_structure", "zoo.graph", "zoo.manifests", "zoo.options", "zoo.input_specs",
        "zoo.images", "zoo._preprocess_module", "zoo.pooling", "zoo._global_pool", "zoo._standardize", "zoo._threads",
        "zoo._redact", "zoo._json", "zoo.data", "zoo.pickles", "zoo.signing", "zoo.npy", "zoo.freshness", "zoo.memory",
        "zoo.destinations", "zoo.landlock", "zoo._terminal", "zoo.preprocessing", "zoo.logs",
    ),
}
ORDER = list(LAYERS)
# What converters may use of zoo: they take paths and return a Conversion, never the catalog.
CONVERTERS_USE = {"zoo.errors", "zoo.atomic", "zoo.hashes", "zoo.records", "zoo.formats", "zoo.graph",
                  "zoo.tflite_structure", "zoo.memory", "zoo.landlock", "zoo.logs"}
# Packages whose inside is left out of the circle and private-name rules until a rewrite lands
# (converters/onnx_to_torch was, until its torch.fx rewrite: issue 20). None now.
OWN_RULES_PENDING: tuple[str, ...] = ()


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> str:
    # The longest prefix wins: "zoo.cli.cache" is the CLI's, "zoo.cache" the ground floor's; "zoo"
    # stands for the package's __init__ alone.
    best = max(((p, layer) for layer, prefixes in LAYERS.items() for p in prefixes
                if _inside(module, p) and (p != "zoo" or module == "zoo")),
               key=lambda pl: len(pl[0]), default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layout.py")
    return best[1]


@pytest.fixture(scope="module")
def graph():
    return read_imports()


def test_every_module_has_a_layer(graph):
    for module in graph.files:
        _layer(module)


def test_no_import_circles(graph):
    assert graph.circles(ignore_inside=OWN_RULES_PENDING) == []


def test_imports_point_down_or_across(graph):
    wrong = []
    for module, targets in graph.edges.items():
        here = ORDER.index(_layer(module))
        for target in targets:
            there = ORDER.index(_layer(target))
            if there < here:
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert wrong == []


def test_converters_use_only_the_ground_floor_they_name(graph):
    reached = {t for m, targets in graph.edges.items() if _inside(m, "converters")
               for t in targets if _inside(t, "zoo")}
    assert reached <= CONVERTERS_USE, reached - CONVERTERS_USE
    assert "zoo.catalog" not in reached


def test_nothing_below_the_library_imports_converters(graph):
    below = {"catalog and fetch", "ground floor"}
    wrong = [m for m, targets in graph.edges.items()
             if _layer(m) in below and any(_inside(t, "converters") for t in targets)]
    assert wrong == []


def test_the_ground_floor_imports_only_itself(graph):
    wrong = [f"{m} -> {t}" for m, targets in graph.edges.items() if _layer(m) == "ground floor"
             for t in targets if _layer(t) != "ground floor"]
    assert wrong == []


def test_no_module_imports_another_modules_private_names(graph):
    wrong = [f"{m}: {source}.{name}" for m, source, name in graph.private
             if not any(_inside(m, p) and _inside(source, p) for p in OWN_RULES_PENDING)]
    assert wrong == []


def test_only_the_cli_prunes_the_cache(graph):
    assert {m for m in graph.importers("zoo.cache_manager") if not _inside(m, "zoo.cli")} == set()


def test_the_rule_catches_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The reader sees what the rules are about: a circle and a private name, planted in a copy."""
    import helpers.imports as imports

    for name, text in {
        "zoo/__init__.py": "",
        "zoo/a.py": "from zoo.b import thing\n",
        "zoo/b.py": "import typing\nif typing.TYPE_CHECKING:\n    import zoo.c\ndef f():\n    from zoo import a\n",
        "zoo/c.py": "from zoo.a import _hidden\n",
        "converters/__init__.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    planted = imports.read_imports()
    assert planted.circles() == [["zoo.a", "zoo.b"]]  # a function-level import counts
    assert "zoo.c" not in planted.edges["zoo.b"]  # a TYPE_CHECKING one does not
    assert planted.private == [("zoo.c", "zoo.a", "_hidden")]
