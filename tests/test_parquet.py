"""Parquet input for the feature cache: tensor columns of every kind, row groups, folders, resume, bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.features import FeatureCache, extract_features
from zoo.datasources import as_source

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


class Projection:
    """Numpy-only extractor: a fixed random projection of the flattened input, counting its calls."""

    def __init__(self, inputs: int, outputs: int = 5, fail_after: int | None = None) -> None:
        self.weights = np.random.default_rng(3).standard_normal((inputs, outputs)).astype(np.float32)
        self.fingerprint = f"projection|{inputs}|{outputs}"
        self.fail_after, self.calls = fail_after, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted on purpose")
        self.calls += 1
        return batch.reshape(len(batch), -1).astype(np.float32) @ self.weights


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 2, 3, 4)).astype(np.float32)


def _fixed_list(x: np.ndarray) -> pa.Array:
    """(N, ...) -> a nested fixed-size-list column, one row per input."""
    array = pa.array(x.reshape(-1))
    for size in reversed(x.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def test_a_nested_fixed_size_list_column_in_row_groups_gives_the_extractor_the_arrays(x, tmp_path):
    path = tmp_path / "x.parquet"
    labels = pa.array(np.arange(len(x)) % 3)
    pq.write_table(pa.table({"label": labels, "x": _fixed_list(x)}), path, row_group_size=70)
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    extractor = Projection(24)
    result = extract_features(extractor, path, chunk_size=32, progress=False)
    np.testing.assert_allclose(result.features, extractor(x), rtol=1e-6)
    # chunks never cross a row group: 4 groups of 70 rows in 32-row chunks are 3 chunks each, 20 rows 1
    manifest = json.loads((result.path.parent / "manifest.json").read_text())
    assert manifest["chunks"] == 4 * 3 + 1 and manifest["rows"] == 300
    again = extract_features(extractor, str(path), progress=False)
    assert again.reused and again.key == result.key


def test_lists_tensor_types_and_a_folder_of_files_read_alike(x, tmp_path):
    extractor = Projection(24)
    expected = extractor(x)
    flat = x.reshape(len(x), -1)
    # a variable-size list column whose rows all have 24 values (pandas and most tools write these)
    pq.write_table(pa.table({"x": pa.array(list(flat))}), tmp_path / "lists.parquet")
    # pyarrow's canonical fixed-shape tensor, row shape (2, 3, 4)
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(x)
    pq.write_table(pa.table({"x": tensor}), tmp_path / "tensor.parquet")
    # a folder of files read in name order, with Spark's _SUCCESS marker
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, lo in enumerate(range(0, 300, 120)):
        pq.write_table(pa.table({"x": _fixed_list(x[lo:lo + 120])}), folder / f"part-{i:05d}.parquet")
    (folder / "_SUCCESS").write_text("")
    # a Parquet file whose name does not say so is known by its magic bytes
    (tmp_path / "noext").write_bytes((tmp_path / "tensor.parquet").read_bytes())
    for data in ("lists.parquet", "tensor.parquet", "parts", "noext"):
        result = extract_features(extractor, tmp_path / data, chunk_size=50, progress=False)
        np.testing.assert_allclose(result.features, expected, rtol=1e-6, err_msg=data)
    # the tensor file hands the extractor the row shape, not just flat rows
    seen = []
    extract_features(shape_probe(seen), tmp_path / "tensor.parquet", progress=False)
    assert seen[0][1:] == (2, 3, 4)


def shape_probe(seen: list):
    class Shape:
        fingerprint = "shape-probe"

        def __call__(self, batch):
            seen.append(batch.shape)
            return batch.reshape(len(batch), -1)[:, :2]

    return Shape()


def test_an_interrupted_parquet_extraction_resumes_at_the_next_chunk(x, tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"x": _fixed_list(x)}), path, row_group_size=100)
    with pytest.raises(KeyboardInterrupt):
        extract_features(Projection(24, fail_after=4), path, chunk_size=40, progress=False)
    entry = FeatureCache().entries()[0]
    assert not entry.complete and entry.rows == 140  # 40 + 40 + 20 (end of group 1) + 40
    resumed = Projection(24)
    result = extract_features(resumed, path, chunk_size=40, progress=False)
    assert resumed.calls == 5  # 40 + 20, then 40 + 40 + 20 of group 3
    np.testing.assert_allclose(result.features, Projection(24)(x), rtol=1e-6)


def test_changed_file_or_column_changes_the_key(x, tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": _fixed_list(x), "b": _fixed_list(x + 1)}), path)
    extractor = Projection(24)
    cache = FeatureCache()
    key_a = cache.key(extractor, as_source(path, extractor, column="a"))
    assert key_a != cache.key(extractor, as_source(path, extractor, column="b"))
    b = extract_features(extractor, as_source(path, extractor, column="b"), progress=False)
    np.testing.assert_allclose(b.features, extractor(x + 1), rtol=1e-6)
    pq.write_table(pa.table({"a": _fixed_list(x * 2), "b": _fixed_list(x + 1)}), path)
    assert cache.key(extractor, as_source(path, extractor, column="a")) != key_a


@pytest.mark.parametrize(
    "table, column, message",
    [
        ({"a": "FIXED", "b": "FIXED"}, None, "several columns of arrays (a, b); name one with column="),
        ({"a": "FIXED"}, "z", "column 'z' is not in"),
        ({"a": "FIXED", "name": ["x"] * 300}, "name", "not numeric arrays"),
        ({"name": ["x"] * 300}, None, "no column of numeric arrays"),
        ({"a": "RAGGED"}, None, "every row must have the same shape"),
        ({"a": "NULLS"}, None, "include nulls"),
    ],
)
def test_bad_parquet_input_says_what_to_do(x, tmp_path, table, column, message):
    columns = {}
    for name, value in table.items():
        if value == "FIXED":
            value = _fixed_list(x)
        elif value == "RAGGED":
            value = pa.array([[1.0] * (1 + i % 2) for i in range(300)])
        elif value == "NULLS":
            value = pa.array([None if i == 7 else [1.0, 2.0] for i in range(300)])
        columns[name] = value
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        extract_features(Projection(24), as_source(path, Projection(24), column=column), progress=False)


def test_not_parquet_files_say_so(x, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="cannot read .*broken.parquet as Parquet"):
        extract_features(Projection(24), bad, progress=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"x": _fixed_list(x)}), parts / "a.parquet")
    pq.write_table(pa.table({"y": _fixed_list(x)}), parts / "b.parquet")
    with pytest.raises(InputError, match="b.parquet has no column 'x'"):
        extract_features(Projection(24), parts, progress=False)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="applies to Parquet input only"):
        extract_features(Projection(24), as_source(tmp_path / "x.npy", Projection(24), column="x"), progress=False)


def test_zoo_extract_reads_parquet_with_a_real_model(tmp_path):
    import onnx
    from helpers.extract import tiny_resnet
    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.extract import load_extractor

    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_resnet(), model)
    images = np.random.default_rng(1).standard_normal((40, 3, 8, 8)).astype(np.float32)
    pq.write_table(pa.table({"image": _fixed_list(images), "label": np.arange(40)}), tmp_path / "d.parquet",
                   row_group_size=16)
    out = tmp_path / "f.npy"
    result = CliRunner().invoke(cli, ["extract", str(model), "--layer", "pool", "-i", str(tmp_path / "d.parquet"),
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 40
    np.testing.assert_allclose(np.load(out), load_extractor(model, "pool")(images), rtol=1e-6)
    wrong = CliRunner().invoke(cli, ["extract", str(model), "-i", str(tmp_path / "d.parquet"), "-o", str(out),
                                     "--actors", "2"])
    assert wrong.exit_code == 1 and "apply to --engine ray" in wrong.output
