"""The content-addressed store: one blob for the same bytes under several names, sources and revisions,
`zoo cache gc` (never a blob a running fetch holds: a real second process), views when hard links are
refused, and an old cache moved into the store in place. Real files, a real HTTP server."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo import store as store_module
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.download import fetch, verify
from zoo.records import Artifact, Model
from zoo.store import Store

BODY = os.urandom(200_000)
SHA = hashlib.sha256(BODY).hexdigest()


def _model(name: str, url: str, *, checksum: bool = True, source: str | None = None) -> Model:
    return Model(name=name, framework="onnx", source=source, artifacts=[
        Artifact("model", "net.onnx", urls=[url], size=len(BODY), checksum=f"sha256:{SHA}" if checksum else None)])


@pytest.fixture
def served(fault_server):
    fault_server.add("/a/net.onnx", BODY)
    fault_server.add("/b/net.onnx", BODY)  # the same bytes at another URL (another zoo, a mirror)
    return fault_server


def _inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def test_the_same_bytes_under_three_names_are_one_blob(served, zoo_env):
    cat = open_catalog()
    cat.add_model(_model("one", served.url("/a/net.onnx")))
    cat.add_model(_model("two", served.url("/b/net.onnx")))
    cat.add_model(_model("three", served.url("/a/net.onnx"), checksum=False))  # learns its sha256 by downloading
    fetch(["one", "two", "three"], quiet=True)
    # "two" was never downloaded: its published sha256 was already in the store.
    assert served.routes["/b/net.onnx"].hits == 0
    paths = [cat.get(n).artifact("model").path for n in ("one", "two", "three")]
    blob = zoo_env / "cache" / "blobs" / "sha256" / SHA
    assert {_inode(p) for p in paths} == {_inode(blob)}  # three views, one file
    assert [Path(p).read_bytes() == BODY for p in paths] == [True] * 3
    assert Store().blobs() == [blob] and verify() == []
    text = CliRunner().invoke(cli, ["cache", "list"]).stdout
    assert "3 entries, 585.9 KiB; 195.3 KiB on disk: the store keeps each file once, saving 390.6 KiB" in text


def test_gc_plans_then_frees_only_what_nothing_uses(served, zoo_env):
    cat = open_catalog()
    cat.add_model(_model("one", served.url("/a/net.onnx")))
    cat.add_model(_model("two", served.url("/b/net.onnx")))
    fetch(["one", "two"], quiet=True)
    runner = CliRunner()
    assert json.loads(runner.invoke(cli, ["cache", "gc", "--json"]).stdout) == {"removed": [], "bytes": 0, "in_use": []}
    assert runner.invoke(cli, ["cache", "rm", "models/one"]).exit_code == 0  # "two" still uses the blob
    assert Store().has(SHA)
    assert runner.invoke(cli, ["cache", "rm", "models/two", "--dry-run"]).stdout.endswith(
        "would remove 1 entries, freeing 195.3 KiB\n")  # the last view: the blob is freed with it
    Path(cat.get("two").artifact("model").path).unlink()  # gone by other means: the blob is left over
    dry = json.loads(runner.invoke(cli, ["cache", "gc", "--dry-run", "--json"]).stdout)
    assert dry == {"blobs": [SHA], "bytes": len(BODY), "in_use": [], "dry_run": True}
    assert Store().has(SHA)
    text = runner.invoke(cli, ["cache", "gc"]).stdout
    assert text == "removed 1 unused stored files, freed 195.3 KiB\n"
    assert not Store().has(SHA)
    fetch(["one"], quiet=True)  # and comes back from the server
    assert served.routes["/a/net.onnx"].hits == 2


FETCH = """
import sys
from zoo.download import fetch
fetch([sys.argv[1]], force=True, quiet=True)
print("fetched")
"""


@pytest.mark.slow  # a second process
def test_gc_never_removes_a_blob_a_running_fetch_holds(fault_server, zoo_env):
    """A fetch in another process holds the blob it is about to use; gc, run meanwhile, leaves it."""
    route = fault_server.add("/a/net.onnx", BODY)
    cat = open_catalog()
    cat.add_model(_model("one", fault_server.url("/a/net.onnx")))
    fetch(["one"], quiet=True)
    Path(cat.get("one").artifact("model").path).unlink()  # the blob is unused now...
    route.gate = threading.Event()  # ...and the next download stops after its headers
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    import sys

    child = subprocess.Popen([sys.executable, "-c", FETCH, "one"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while route.hits < 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)  # the child holds the blob from before its request until its view is made
        assert route.hits == 2, child.communicate()
        plan = Store().plan_gc()
        assert plan.blobs == [] and [b.name for b in plan.held] == [SHA]
        gc = CliRunner().invoke(cli, ["cache", "gc", "--json"])
        assert json.loads(gc.stdout) == {"removed": [], "bytes": 0, "in_use": [SHA]}
        assert "1 in use by a running fetch were kept" in CliRunner().invoke(cli, ["cache", "gc"]).stdout
        assert Store().has(SHA)
    finally:
        route.gate.set()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "fetched", err
    view = Path(open_catalog().get("one").artifact("model").path)
    assert view.samefile(Store().blob(SHA)) and view.read_bytes() == BODY
    assert Store().plan_gc().blobs == []


def test_views_fall_back_to_symlinks_where_hard_links_are_refused(served, zoo_env, monkeypatch):
    """A file system without hard links (FAT, some network shares): EXDEV/EPERM is what the kernel says."""
    def refuse(blob, tmp):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setitem(store_module._MAKERS, "hardlink", refuse)
    monkeypatch.setattr(store_module, "_MODES", {})
    monkeypatch.setattr(store_module.Store, "_move_in", lambda self, path, blob: _copy_in(path, blob))
    cat = open_catalog()
    cat.add_model(_model("one", served.url("/a/net.onnx")))
    cat.add_model(_model("two", served.url("/b/net.onnx")))
    fetch(["one", "two"], quiet=True)
    one, two = (Path(cat.get(n).artifact("model").path) for n in ("one", "two"))
    blob = zoo_env / "cache" / "blobs" / "sha256" / SHA
    # ext4 has no reflinks either: symbolic links, relative so the cache can move as a whole
    assert one.is_symlink() and two.is_symlink() and os.readlink(one) == "../../blobs/sha256/" + SHA
    assert one.read_bytes() == BODY and Store().view_mode() == "symlink" and verify() == []
    assert Store().plan_gc().blobs == []  # symbolic links refer to their blob
    CliRunner().invoke(cli, ["cache", "rm", "models/one", "models/two"])
    assert not Store().has(SHA) and not one.exists()  # the links went, and with them the blob


def test_views_in_sub_folders_are_found_by_gc(served, zoo_env, monkeypatch):
    """A SavedModel fetched file by file keeps variables/: symbolic links there refer to their blob too."""
    monkeypatch.setitem(store_module._MAKERS, "hardlink", lambda blob, tmp: _refuse_link())
    monkeypatch.setattr(store_module, "_MODES", {})
    monkeypatch.setattr(store_module.Store, "_move_in", lambda self, path, blob: _copy_in(path, blob))
    model = _model("nested", served.url("/a/net.onnx"))
    model.artifacts[0].filename = "variables/net.data-00000-of-00001"
    open_catalog().add_model(model)
    (fetched,) = fetch("nested", quiet=True)
    view = Path(fetched.path)
    assert view.parent.name == "variables" and view.is_symlink() and view.read_bytes() == BODY
    assert os.readlink(view) == "../../../blobs/sha256/" + SHA
    assert Store().plan_gc().blobs == [] and Store().views()[SHA] == [view]
    view.unlink()
    assert Store().plan_gc().blobs == [Store().blob(SHA)]


def _refuse_link():
    raise OSError(errno.EPERM, "Operation not permitted")


def test_nothing_shared_saves_nothing_whatever_else_the_cache_holds(served, zoo_env):
    """The cache's own logs and hash memos are not entries: they do not turn the saving negative."""
    open_catalog().add_model(_model("one", served.url("/a/net.onnx")))
    fetch("one", quiet=True)
    (zoo_env / "cache" / "logs").mkdir(exist_ok=True)
    (zoo_env / "cache" / "logs" / "zoo.log").write_bytes(bytes(5000))
    text = CliRunner().invoke(cli, ["cache", "list"]).stdout
    assert "1 entry, 195.3 KiB; 195.3 KiB on disk: the store keeps each file once, saving 0 B" in text, text


def _copy_in(path: Path, blob: Path) -> str:
    import shutil

    shutil.copyfile(path, blob)
    return store_module._make_view(blob, path)


def test_an_old_cache_is_moved_into_the_store_in_place(served, zoo_env):
    """A cache from before the store: plain files under models/ and onnx/, cataloged by path."""
    cache = zoo_env / "cache"
    cat = open_catalog()
    for name in ("one", "two"):
        folder = cache / "models" / name
        folder.mkdir(parents=True)
        (folder / "net.onnx").write_bytes(BODY)
        (folder / "net.onnx.lock").touch()
        model = _model(name, served.url("/a/net.onnx"))
        model.artifacts[0].path, model.artifacts[0].sha256 = str(folder / "net.onnx"), SHA
        cat.add_model(model)
    converted = cache / "onnx" / "one" / "one.onnx"
    converted.parent.mkdir(parents=True)
    converted.write_bytes(b"converted bytes")
    unpacked = cache / "models" / "two" / "unpacked" / "inside.bin"
    unpacked.parent.mkdir()
    unpacked.write_bytes(b"archive member")
    (cache / "models" / "two" / "half.bin.part").write_bytes(b"resumable")
    assert not (cache / "blobs").exists()

    listing = CliRunner().invoke(cli, ["cache", "gc", "--json"])  # any store command migrates first
    assert listing.exit_code == 0, listing.output
    assert json.loads(listing.stdout)["removed"] == []
    one, two = cache / "models" / "one" / "net.onnx", cache / "models" / "two" / "net.onnx"
    assert one.samefile(two) and one.samefile(Store().blob(SHA))  # the duplicate became one blob
    assert converted.samefile(Store().blob(hashlib.sha256(b"converted bytes").hexdigest()))
    assert len(Store().blobs()) == 2  # a part file and an unpacked archive's inside are not moved
    assert not unpacked.samefile(Store().blob(SHA)) and (cache / "models" / "two" / "half.bin.part").is_file()
    assert (cache / "blobs" / "LAYOUT").read_text().strip() == "2"
    assert verify() == [] and open_catalog().get("two").is_local  # every cataloged path still works
    fetch(["one", "two"], quiet=True)
    assert served.routes["/a/net.onnx"].hits == 0
    assert store_module.Store().migrate().files == 0  # once
