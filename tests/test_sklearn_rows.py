"""The scikit-learn transformer: its docstring, paths in any container, and rows from the feature
cache so that cross-validation and a grid over `layer` compute each (layer, input) once.

Built here: the walkthrough's CNN (random weights) registered as the user's own model, digits as
8x8 PNG files.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")


@pytest.fixture
def digits_files(tmp_path):
    from PIL import Image

    from helpers.transfer import register_digits_cnn
    from zoo.demos.walkthrough import digits

    model = register_digits_cnn()
    x, y = digits()
    paths = []
    for i in range(36):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray((x[i, 0] * 255).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    return model.name, paths, y[:36] % 2


def test_the_transformer_keeps_its_docstring():
    from zoo.extract import ExtractorTransformer, _ExtractorTransformerBody

    assert ExtractorTransformer.__doc__ == _ExtractorTransformerBody.__doc__
    assert ExtractorTransformer.__doc__.startswith("A scikit-learn transformer")
    assert ExtractorTransformer.__module__ == "zoo.extract" and ExtractorTransformer.__name__ == "ExtractorTransformer"


def test_paths_in_a_numpy_array_or_a_pandas_series_work_as_a_list_does(digits_files):
    import pandas as pd

    from zoo.extract import ExtractorTransformer

    model, paths, _ = digits_files
    transformer = ExtractorTransformer(model, layer="pool2", cache=False)
    as_list = transformer.transform(paths[:5])
    assert as_list.shape == (5, 32 * 2 * 2)
    np.testing.assert_array_equal(transformer.transform(np.asarray(paths[:5])), as_list)
    np.testing.assert_array_equal(transformer.transform(pd.Series(paths[:5], index=[9, 8, 7, 6, 5])), as_list)
    np.testing.assert_array_equal(ExtractorTransformer(model, layer="pool2").transform(np.asarray(paths[:5])), as_list)


def test_a_grid_over_layer_computes_each_layer_and_file_once(digits_files):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from zoo.extract import ExtractorTransformer

    model, paths, y = digits_files
    pipe = Pipeline([("features", ExtractorTransformer(model, layer="pool1")),
                     ("head", LogisticRegression(max_iter=500))])
    grid = GridSearchCV(pipe, {"features__layer": ["pool1", "pool2"]}, cv=3).fit(np.asarray(paths), y)
    assert grid.best_params_["features__layer"] in ("pool1", "pool2")
    # every fold sliced the files differently; each (layer, file) was computed and stored once
    from zoo.cache import features_folder

    entries = sorted(features_folder().glob("rows-*"))
    assert len(entries) == 2
    for entry in entries:
        keys = [k for side in entry.glob("shard-*.json") for k in json.loads(side.read_text())]
        assert len(keys) == len(set(keys)) == len(paths)
        manifest = json.loads((entry / "manifest.json").read_text())
        assert manifest["model"] and manifest["layer"] in ("pool1", "pool2") and manifest["rows"] == len(paths)
