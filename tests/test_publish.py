"""`zoo index export`: an index of catalog models that another catalog follows with `zoo source add`,
round-tripped over a real HTTP server on 127.0.0.1 serving the exported folder."""
from __future__ import annotations

import functools
import os
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import zoo
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.index import FORMAT, parse_index
from zoo.sources import add_source


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (as a team's web server would): (folder, base URL)."""
    folder = tmp_path / "site"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/zoo"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def upstream(fault_server, light):
    """A model from an index (revision, version, input spec), fetched; and one added from a local file."""
    body = light["onnx"].read_bytes()
    fault_server.add("/files/net.onnx", body)
    entry = {"name": "net.acme", "framework": "onnx", "revision": "r1", "version": "v1.0", "task": "image-classification",
             "input": {"shape": [None, 3, 8, 8], "layout": "NCHW", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
             "files": [{"role": "model", "filename": "net.onnx", "url": fault_server.url("/files/net.onnx"),
                        "sha256": hashlib.sha256(body).hexdigest()}]}
    fault_server.add("/zoo.json", json.dumps({"format": FORMAT, "name": "acme", "models": [entry]}).encode())
    add_source("acme", fault_server.url("/zoo.json"))
    zoo.fetch("net.acme", quiet=True)
    zoo.add(light["onnx"], name="mine")
    return body


def _other_catalog(monkeypatch, tmp_path) -> None:
    """Another team: its own catalog and cache."""
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "other.db"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "other-cache"))


def test_export_with_base_url_round_trips_through_source_add(upstream, site, tmp_path, monkeypatch):
    folder, base = site
    out = CliRunner().invoke(cli, ["index", "export", "net.acme", "mine", "-o", str(folder / "zoo" / "index.json"),
                                   "--base-url", base, "--json"])
    assert out.exit_code == 0, out.output
    done = json.loads(out.stdout)
    assert done["models"] == ["net.acme", "mine"] and len(done["files"]) == 2
    index = json.loads((folder / "zoo" / "index.json").read_text())
    assert index["name"] == "zoo" and "damaged" not in json.dumps(index) and str(tmp_path) not in json.dumps(index)
    (net,) = [e for e in index["models"] if e["name"] == "net.acme"]
    assert (net["revision"], net["version"]) == ("r1", "v1.0")
    assert net["files"][0]["url"] == f"{base}/net.acme/r1/net.onnx"
    mine = open_catalog().get("mine")

    _other_catalog(monkeypatch, tmp_path)
    report = add_source("team", f"{base}/index.json")
    assert sorted(report.stats.added) == ["mine", "net.acme"]
    for name, sha256 in (("net.acme", hashlib.sha256(upstream).hexdigest()), ("mine", mine.artifacts[0].sha256)):
        (fetched,) = zoo.fetch(name, quiet=True)
        assert fetched.sha256 == sha256
    theirs = open_catalog().get("net.acme")
    assert (theirs.revision, theirs.meta["version"], theirs.source) == ("r1", "v1.0", "team")
    assert theirs.input.mean == [0.5, 0.5, 0.5] and theirs.input.shape == [None, 3, 8, 8]
    assert open_catalog().get("mine").framework == mine.framework


def test_a_new_revision_is_published_beside_the_old_one(upstream, site, tmp_path, monkeypatch, fault_server, light):
    folder, base = site
    first = zoo.export_index(["net.acme"], folder / "index.json", base_url=base)
    body = light["onnx"].read_bytes() + b"\n\x00"  # other bytes: a new revision (fetch does not parse them)
    fault_server.add("/files/net2.onnx", body)
    entry = {"name": "net.acme", "framework": "onnx", "revision": "r2", "version": "v2.0",
             "files": [{"role": "model", "filename": "net.onnx", "url": fault_server.url("/files/net2.onnx"),
                        "sha256": hashlib.sha256(body).hexdigest()}]}
    fault_server.add("/zoo.json", json.dumps({"format": FORMAT, "name": "acme", "models": [entry]}).encode())
    zoo.sync_sources("acme")
    zoo.fetch("net.acme", quiet=True)
    second = zoo.export_index(["net.acme"], folder / "index.json", base_url=base)
    assert first.files != second.files and all(p.endswith("net.onnx") for p in first.files + second.files)
    assert (folder / "net.acme" / "r1" / "net.onnx").exists()  # a lock on r1 still fetches
    # NAME@REV exports that revision under the model's name
    old = zoo.export_index(["net.acme@v1.0"], tmp_path / "old.json")
    assert parse_index((tmp_path / "old.json").read_text(), source="x")[0].revision == "r1"
    assert old.models == ["net.acme"]


def test_export_without_base_url_keeps_the_files_own_urls(upstream, fault_server, tmp_path):
    zoo.export_index(["net.acme"], tmp_path / "acme.json")
    (model,) = parse_index((tmp_path / "acme.json").read_text(), source="x", remote=True)
    assert model.artifacts[0].urls == [fault_server.url("/files/net.onnx")] and model.revision == "r1"
    assert json.loads((tmp_path / "acme.json").read_text())["name"] == "acme"


def test_what_cannot_be_exported_is_one_line(upstream, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["index", "export", "mine", "-o", str(tmp_path / "i.json")])
    assert out.exit_code == 1
    (line,) = out.stderr.strip().splitlines()
    assert "mine: " in line and "has no URL" in line and "--base-url" in line
    out = runner.invoke(cli, ["index", "export", "mine", "-o", str(tmp_path / "i.json"), "--base-url", "ftp://x"])
    assert out.exit_code == 1 and "is not an http(s) URL" in out.stderr
    out = runner.invoke(cli, ["index", "export", "nope", "-o", str(tmp_path / "i.json")])
    assert out.exit_code == 1 and "'nope' is not in the catalog" in out.stderr
    assert not (tmp_path / "i.json").exists()
    os.remove(open_catalog().get("net.acme").artifacts[0].path)  # its file gone from the cache
    out = runner.invoke(cli, ["index", "export", "net.acme", "-o", str(tmp_path / "i.json"), "--base-url", "http://x"])
    assert out.exit_code == 1
    assert "net.acme: net.onnx is not on disk" in out.stderr and "zoo fetch net.acme" in out.stderr


def test_exporting_a_moved_file_of_ones_own_says_to_scan_for_it(tmp_path, zoo_cmd, light):
    """Fresh processes: a model added from a file that has moved since is found again by `zoo scan`, not fetched."""
    import shutil
    import subprocess

    path = tmp_path / "mine.onnx"
    shutil.copy(light["onnx"], path)
    assert subprocess.run([*zoo_cmd, "add", str(path)], capture_output=True, timeout=120).returncode == 0
    path.rename(tmp_path / "moved.onnx")
    out = subprocess.run([*zoo_cmd, "index", "export", "mine", "-o", str(tmp_path / "site" / "index.json"),
                          "--base-url", "https://models.example.org/zoo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == (
        "error: mine: mine.onnx is not on disk, so it cannot be published beside the index; find it again with "
        "`zoo scan FOLDER` where it is now"), out.stderr
