"""The public API: every name in zoo.__all__ resolves, and `import zoo` stays light."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import zoo

HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime", "tf2onnx", "cv2", "sklearn", "keras")


def test_every_public_name_resolves_even_after_importing_every_module():
    # Importing a submodule binds it on the package; no submodule may shadow a public function.
    for info in pkgutil.iter_modules(zoo.__path__, "zoo."):
        importlib.import_module(info.name)
    for name in zoo.__all__:
        value = getattr(zoo, name)
        assert value is not None, name
        if name[0].islower() and name != "__version__":
            assert callable(value) and not isinstance(value, type(zoo)), name


def test_import_zoo_and_cli_load_no_framework():
    code = ("import sys, zoo, zoo.cli, zoo.catalog; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_matches_the_cli_and_the_package_metadata(zoo_cmd):
    from importlib import metadata

    assert zoo.__version__ == metadata.version("zoo")  # one place: pyproject.toml
    out = subprocess.run([*zoo_cmd, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"zoo, version {zoo.__version__}"


def test_the_lazy_table_and_its_type_checking_mirror_name_the_same_things():
    """Type checkers and IDEs read the TYPE_CHECKING imports; `import zoo` reads `_API`: one list."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(zoo.__file__).read_text())
    guard = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    mirrored = {alias.name: node.module for node in guard.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert mirrored == zoo._API
    assert sorted(zoo.__all__) == sorted(["__version__", *zoo._API])


def test_every_public_function_says_its_arguments_result_and_errors():
    import inspect

    for name in zoo.__all__:
        value = getattr(zoo, name)
        if name == "__version__" or inspect.isclass(value):
            continue
        doc = inspect.getdoc(value) or ""
        missing = [section for section in ("Args:", "Returns:", "Raises:") if section not in doc]
        if name in ("cache_features", "save_features", "save_layer_features"):  # "as extract_features"
            missing = [s for s in missing if s not in ("Returns:", "Raises:")]
        assert not missing, f"zoo.{name}'s docstring has no {', '.join(missing)}"
