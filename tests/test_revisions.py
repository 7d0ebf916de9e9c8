"""Revisions and the lock file: a sync that changes files adds a revision, NAME@REV everywhere a name
goes, `zoo lock` and `zoo fetch --locked` after the index changed (a real HTTP server, real ONNX)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import zoo
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.errors import LockMismatchError, UnknownRevisionError
from zoo.lockfile import fetch_locked, lock, read_lock
from zoo.store import Store


def _onnx(scale: float) -> bytes:
    """A real two-layer ONNX model whose weights depend on `scale` (two revisions differ in bytes and outputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 3), scale, np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


V1, V2 = _onnx(1.0), _onnx(2.0)


def _index(path: str, body: bytes, version: str, server) -> bytes:
    files = [{"role": "model", "filename": "net.onnx", "url": server.url(path),
              "sha256": hashlib.sha256(body).hexdigest()}]
    return json.dumps({"format": "zoo-index/1", "name": "acme", "models": [
        {"name": "net.acme", "framework": "onnx", "format": "onnx", "version": version, "files": files}]}).encode()


@pytest.fixture
def acme(fault_server):
    """Source acme at version 1 of net.acme; `acme.publish_v2()` moves the index to version 2."""
    fault_server.add("/v1/net.onnx", V1)
    fault_server.add("/v2/net.onnx", V2)
    index = fault_server.add("/zoo.json", _index("/v1/net.onnx", V1, "1", fault_server), content_type="application/json")
    zoo.add_source("acme", fault_server.url("/zoo.json"))

    def publish_v2(path: str = "/v2/net.onnx", body: bytes = V2) -> None:
        index.set_body(_index(path, body, "2", fault_server))
        zoo.sync_sources("acme")

    fault_server.publish_v2 = publish_v2
    return fault_server


def test_a_sync_that_changes_files_adds_a_revision_and_keeps_the_old(acme):
    cat = open_catalog()
    first = cat.get("net.acme").revision
    zoo.fetch("net.acme", quiet=True)
    zoo.sync_sources("acme", force=True)  # the same files: the same revision
    assert [r.revision for r in cat.revisions("net.acme")] == [first]
    acme.publish_v2()
    old, new = cat.revisions("net.acme")
    assert (old.revision, old.tag, old.current) == (first, "1", False) and (new.tag, new.current) == ("2", True)
    assert cat.get("net.acme").revision == new.revision and not cat.get("net.acme").is_local
    # NAME@REV by id, version tag, digest prefix, or latest
    for ref in (f"net.acme@{first}", "net.acme@1", f"net.acme@{old.digest[:6]}"):
        past = cat.get(ref)
        assert past.name == f"net.acme@{first}" and past.artifact("model").urls == [acme.url("/v1/net.onnx")]
    assert cat.get("net.acme@latest").name == "net.acme" == cat.get("net.acme@2").name
    with pytest.raises(UnknownRevisionError, match=r"model net.acme has no revision 'v9'; its revisions: "
                                                   rf"{first} \(1\), {new.revision} \(2, current\)"):
        cat.get("net.acme@v9")
    info = CliRunner().invoke(cli, ["info", "net.acme@1", "--json"])
    assert json.loads(info.stdout)["revision"] == first
    # both revisions fetch, side by side; the old one's bytes were still in the store: no download
    zoo.fetch(["net.acme@1", "net.acme"], quiet=True)
    assert acme.routes["/v1/net.onnx"].hits == 1
    assert Path(cat.get("net.acme@1").artifact("model").path).read_bytes() == V1
    assert Path(cat.get("net.acme").artifact("model").path).read_bytes() == V2


def test_name_at_revision_converts_and_extracts_that_revision(acme):
    acme.publish_v2()
    x = np.ones((2, 4), np.float32)
    old = zoo.load_extractor("net.acme@1", layer="fc")
    new = zoo.load_extractor("net.acme", layer="fc")
    assert np.allclose(old(x), 4.0) and np.allclose(new(x), 8.0)
    cat = open_catalog()
    first = cat.get("net.acme@1")
    converted = first.artifact("onnx")
    assert converted.meta["revision"] == first.revision and f"onnx/net.acme@{first.revision}/" in converted.path
    assert cat.get("net.acme").artifact("onnx").meta["revision"] == cat.get("net.acme").revision
    features = zoo.extract_features(old, x, progress=False)
    manifest = json.loads((Path(features.path).parent / "manifest.json").read_text())
    assert manifest["revision"] == first.revision


def test_lock_then_fetch_locked_after_the_index_changed(acme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["lock", "net.acme"])
    assert result.exit_code == 0, result.output
    locked = read_lock(tmp_path / "zoo.lock")["net.acme"]
    first = open_catalog().get("net.acme").revision
    assert (locked.revision, locked.tag, locked.source) == (first, "1", "acme")
    assert [(f.filename, f.sha256) for f in locked.files] == [("net.onnx", hashlib.sha256(V1).hexdigest())]
    acme.publish_v2()
    out = CliRunner().invoke(cli, ["fetch", "--locked"])
    assert out.exit_code == 0, out.output
    assert f"net.acme: locked revision {first}, as net.acme@{first}" in out.stdout
    assert "note: the catalog's current revision is" in out.stdout and "net.onnx changed" in out.stdout
    assert Path(open_catalog().get(f"net.acme@{first}").artifact("model").path).read_bytes() == V1


def test_fetch_locked_in_a_catalog_that_never_saw_the_locked_revision(acme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lock(["net.acme"])
    elsewhere = tmp_path / "other.db"  # another machine: its catalog only ever knew version 2
    acme.publish_v2()
    open_catalog(elsewhere)
    zoo.add_source("acme", acme.url("/zoo.json"), catalog=elsewhere)
    Store().plan_gc().execute()
    (report,) = fetch_locked(catalog=elsewhere)
    assert report.ref.startswith("net.acme@") and report.current != report.revision
    assert Path(report.files[0].path).read_bytes() == V1


def test_fetch_locked_offline_names_every_model_s_files_not_cached(fault_server, tmp_path, monkeypatch, zoo_cmd):
    """Fresh processes: `zoo fetch --locked --offline` on a new cache names the files of every locked
    model that are not there, not only the first model's."""
    import subprocess

    entries = []
    for name, body in (("one.acme", V1), ("two.acme", V2)):
        fault_server.add(f"/{name}.onnx", body)
        entries.append({"name": name, "framework": "onnx", "files": [
            {"role": "model", "filename": "net.onnx", "url": fault_server.url(f"/{name}.onnx"),
             "sha256": hashlib.sha256(body).hexdigest()}]})
    fault_server.add("/zoo.json", json.dumps({"format": "zoo-index/1", "name": "acme", "models": entries}).encode())
    monkeypatch.chdir(tmp_path)
    for command in (["source", "add", "acme", fault_server.url("/zoo.json")], ["lock", "one.acme", "two.acme"]):
        assert subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120).returncode == 0
    out = subprocess.run([*zoo_cmd, "fetch", "--locked", "--offline", "--cache-dir", str(tmp_path / "new")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "2 file(s) are not cached" in out.stderr, out.stderr
    assert "net.onnx of one.acme" in out.stderr and "net.onnx of two.acme" in out.stderr


def test_fetch_locked_fails_naming_a_file_changed_in_place(acme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lock(["net.acme"])
    tampered = _onnx(3.0)
    acme.routes["/v1/net.onnx"].set_body(tampered)  # the publisher replaced the file at the same URL
    acme.publish_v2("/v1/net.onnx", tampered)
    for view in (Path(p) for p in Store().root.glob("models/*/net.onnx")):
        view.unlink()
    Store().plan_gc().execute()  # nothing cached: the bytes must come from the server
    with pytest.raises(LockMismatchError) as caught:
        fetch_locked()
    message = str(caught.value)
    assert "net.acme changed upstream since" in message and "zoo lock net.acme" in message
    assert hashlib.sha256(V1).hexdigest() in message and hashlib.sha256(tampered).hexdigest() in message
    out = CliRunner().invoke(cli, ["fetch", "--locked"])
    assert out.exit_code == 1 and len(out.stderr.strip().splitlines()) == 1


def test_lock_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    none = runner.invoke(cli, ["fetch", "--locked"])
    assert none.exit_code == 1 and "no zoo.lock here or in a parent folder" in none.stderr
    (tmp_path / "zoo.lock").write_text("{not json")
    bad = runner.invoke(cli, ["fetch", "--locked"])
    assert bad.exit_code == 1 and "is not JSON" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert runner.invoke(cli, ["fetch"]).exit_code == 1


def test_a_file_listed_without_size_or_checksum_keeps_its_revision_and_path_across_syncs(fault_server):
    fault_server.add("/v1/net.onnx", V1)
    entry = {"name": "bare.acme", "framework": "onnx", "files": [
        {"role": "model", "filename": "net.onnx", "url": fault_server.url("/v1/net.onnx"), "checksum": None}]}
    index = fault_server.add("/zoo.json", json.dumps({"format": "zoo-index/1", "name": "acme", "models": [entry]}).encode())
    zoo.add_source("acme", fault_server.url("/zoo.json"))
    (fetched,) = zoo.fetch("bare.acme", quiet=True)
    assert len(open_catalog().revisions("bare.acme")) == 1  # the fetch measured its size: the same file
    index.set_body(index.body + b"\n")  # a new ETag, the same entry
    (report,) = zoo.sync_sources("acme")
    model = open_catalog().get("bare.acme")
    assert report.stats.updated == [] and model.artifacts[0].path == fetched.path
    assert len(open_catalog().revisions("bare.acme")) == 1
