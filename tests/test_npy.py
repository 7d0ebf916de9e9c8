"""An `.npy` file is as long as its header says: truncated and forged files are refused before any row is read.

Built here: a real array with half its rows cut off, a 1 KB file whose header claims 10^9 rows,
the same for labels, named inputs and `zoo pretrain --data`, and a cached entry whose header
was rewritten behind the manifest's back.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.transfer import export_mlp
from zoo.cli import cli
from zoo.errors import InputError


def truncated(path, rows=100, kept=50, width=16):
    """A float32 (rows, width) .npy with only `kept` rows of data after its header."""
    np.save(path, np.random.default_rng(0).standard_normal((rows, width)).astype("float32"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - (rows - kept) * width * 4])
    return path


def forged(path, rows=10**9, width=16, dtype="float32"):
    """A 1 KB file whose header claims `rows` rows."""
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, width)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    path.write_bytes(buffer.getvalue() + b"\x01" * 1000)
    return path


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def test_truncated_and_forged_files_are_refused_by_the_reader(tmp_path):
    from zoo.npy import load, read_header

    with pytest.raises(InputError, match=r"truncated: its header says shape \(100, 16\) float32 .*6.2 KB.* 3.1 KB"):
        read_header(truncated(tmp_path / "half.npy"))
    with pytest.raises(InputError, match=r"shape \(1000000000, 16\) .*59.6 GB.*1000 bytes"):
        load(forged(tmp_path / "huge.npy"), mmap=True)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"Python objects .*never unpickles"):
        load(tmp_path / "objects.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"\xff" * 40)
    with pytest.raises(InputError, match=r"cannot read input .*junk.npy as a .npy array"):
        read_header(tmp_path / "junk.npy")
    good = np.arange(12, dtype="int64").reshape(3, 4)
    with open(tmp_path / "two.npy", "wb") as fh:  # arrays saved one after another: trailing bytes are fine
        np.save(fh, good)
        np.save(fh, good)
    assert np.array_equal(load(tmp_path / "two.npy"), good)


def test_zoo_extract_refuses_truncated_and_forged_inputs_and_the_cache_does_not_grow(tmp_path, zoo_env):
    model = export_mlp(tmp_path / "mlp.onnx")
    runner = CliRunner()
    for bad in (truncated(tmp_path / "half.npy"), forged(tmp_path / "huge.npy")):
        line = _error(runner.invoke(cli, ["extract", str(model), "-l", "-1", "-i", str(bad),
                                          "-o", str(tmp_path / "f.npy")]))
        assert "truncated: its header says" in line and bad.name in line
        # The same file given by name, as a multi-input model takes it.
        line = _error(runner.invoke(cli, ["extract", str(model), "-l", "-1", "-i", f"x={bad}",
                                          "-o", str(tmp_path / "f.npy")]))
        assert "truncated" in line
    features = zoo_env / "cache" / "features"
    assert not features.exists() or sum(p.stat().st_size for p in features.rglob("*") if p.is_file()) < 10_000
    assert not (tmp_path / "f.npy").exists()


def test_labels_and_pretraining_data_are_checked_too(tmp_path):
    model = export_mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((20, 16)).astype("float32"))
    labels = forged(tmp_path / "y.npy", rows=10**9, width=1, dtype="int64")
    line = _error(CliRunner().invoke(cli, ["train", str(model), "-l", "-1", "--data", str(tmp_path / "x.npy"),
                                           "--labels", str(labels), "--name", "head", "--epochs", "1", "-q"]))
    assert "labels" in line and "truncated" in line
    line = _error(CliRunner().invoke(cli, ["pretrain", "--data", str(truncated(tmp_path / "rows.npy")),
                                           "--layers", "4", "--name", "base", "-q"]))
    assert "--data" in line and "truncated" in line


def test_a_cached_entry_whose_header_disagrees_with_its_manifest_is_recomputed(tmp_path, zoo_env):
    import zoo

    model = export_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((30, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    extractor = zoo.load_extractor(str(model), layer=-1)
    first = zoo.extract_features(extractor, tmp_path / "x.npy", progress=False)
    expected = np.array(first.features)
    path = first.path
    del first
    manifest = json.loads((path.parent / "manifest.json").read_text())
    header = io.BytesIO()  # the same size on disk, but a header that claims 10^6 rows
    np.lib.format.write_array_header_1_0(header, {"descr": manifest["dtype"], "fortran_order": False,
                                                  "shape": (10**6, *manifest["shape"])})
    with open(path, "r+b") as fh:
        fh.write(header.getvalue().ljust(256, b" ")[:255] + b"\n")
    again = zoo.extract_features(extractor, tmp_path / "x.npy", progress=False)
    assert again.reused is False and np.array_equal(np.asarray(again.features), expected)
