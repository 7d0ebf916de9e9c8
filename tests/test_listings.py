"""Listings say what they leave out, and failures leave nothing behind to list.

Built here: the built-in catalog (the Caffe and TensorFlow zoos), a loopback HTTP server that
serves a file with the wrong checksum or no file at all, image folders nothing in can be read.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from zoo.cli import cli


def test_a_search_cut_at_its_limit_says_how_many_it_left_out():
    runner = CliRunner()
    everything = json.loads(runner.invoke(cli, ["search", "-n", "0", "--json"]).stdout)
    total = len(everything)
    assert total > 5
    cut = runner.invoke(cli, ["search", "-n", "5"])
    assert cut.exit_code == 0, cut.output
    assert f"5 of {total} shown; `-n 0` for all" in cut.stderr
    assert len([line for line in cut.stdout.splitlines() if line.strip()]) == 5 + 1  # the rows and the header
    assert "shown" not in runner.invoke(cli, ["search", "-n", "0"]).stderr  # nothing left out, nothing said
    as_json = runner.invoke(cli, ["search", "-n", "5", "--json"])
    assert len(json.loads(as_json.stdout)) == 5 and "shown" not in as_json.output.replace(as_json.stdout, "")
    framework = next(m["framework"] for m in everything)
    some = [m for m in everything if m["framework"] == framework]
    if len(some) > 1:
        filtered = runner.invoke(cli, ["search", "--framework", framework, "-n", "1"])
        assert f"1 of {len(some)} shown" in filtered.stderr  # the count honours the filters


def test_a_failed_download_leaves_no_lock_and_no_part(fault_server, tmp_path):
    from zoo.errors import ChecksumError, FetchError
    from zoo.transport import Expected, RetryPolicy, download

    fault_server.add("/w.bin", b"x" * 5000)
    target = tmp_path / "models" / "w.bin"
    target.parent.mkdir()
    with pytest.raises(ChecksumError):
        download([fault_server.url("/w.bin")], target, expected=Expected(checksum="sha256:" + "0" * 64),
                 retry=RetryPolicy(backoff=0.01, timeout=(2, 2)))
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no .lock, .part or .part.json
    with pytest.raises(FetchError):
        download([fault_server.url("/missing.bin")], target, retry=RetryPolicy(backoff=0.01, timeout=(2, 2)))
    assert sorted(p.name for p in target.parent.iterdir()) == []


def test_refused_and_empty_extractions_leave_no_cache_entries(tmp_path):
    from helpers.transfer import export_mlp
    from zoo import load_extractor
    from zoo.errors import InputError
    from zoo.features import FeatureCache, extract_features

    extractor = load_extractor(export_mlp(tmp_path / "mlp.onnx"), layer=-1)
    (tmp_path / "junk").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "junk" / name).write_bytes(b"not an image")
    with pytest.raises(InputError, match="none of the 2 inputs could be read"):
        extract_features(extractor, tmp_path / "junk", progress=False, image_size=(4, 4))
    with pytest.raises(InputError):  # rows of the wrong width: refused before a row is written
        extract_features(extractor, np.ones((3, 5), np.float32), progress=False)
    with pytest.raises(InputError):
        extract_features(extractor, np.ones((0, 16), np.float32), progress=False)
    assert FeatureCache().entries() == []
    listed = CliRunner().invoke(cli, ["cache", "list", "--kind", "features", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
