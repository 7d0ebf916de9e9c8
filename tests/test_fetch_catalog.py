"""zoo.fetch / zoo.verify and the `zoo fetch` / `zoo verify` commands, with a real catalog and server."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.archives import tar_gz
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.errors import ChecksumError, FetchError, OfflineError, UnsafeArchiveError
from zoo.download import fetch, verify
from zoo.records import Artifact, Model
from zoo.store import Store

GRAPH = b'name: "tiny"\nlayer { name: "data" type: "Input" }\n'
WEIGHTS = os.urandom(30_000)




@pytest.fixture
def served(fault_server):
    """A two-file Caffe model (graph with a sha1, weights without a checksum) on the server."""
    fault_server.add("/tiny/deploy.prototxt", GRAPH, content_type="text/plain")
    fault_server.add("/tiny/w.caffemodel", WEIGHTS)
    cat = open_catalog()
    cat.add_model(Model(name="tiny.caffe", framework="caffe", artifacts=[
        Artifact("graph", "deploy.prototxt", urls=[fault_server.url("/tiny/deploy.prototxt")],
                 checksum="sha1:" + hashlib.sha1(GRAPH).hexdigest()),
        Artifact("weights", "w.caffemodel", urls=[fault_server.url("/tiny/w.caffemodel")], size=len(WEIGHTS)),
    ]))
    return fault_server


def cache_root(zoo_env: Path) -> Path:
    return zoo_env / "cache" / "models" / "tiny.caffe"


def test_fetch_downloads_and_registers_every_file(served, zoo_env):
    arts = fetch("tiny.caffe", quiet=True)
    assert [a.role for a in arts] == ["graph", "weights"]
    model = open_catalog().get("tiny.caffe")
    graph, weights = model.artifact("graph"), model.artifact("weights")
    assert graph.path == str(cache_root(zoo_env) / "deploy.prototxt")
    assert Path(weights.path).read_bytes() == WEIGHTS
    assert weights.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and weights.size == len(WEIGHTS)
    # No published checksum: the first fetch pins what it saw, and checksum stays unpublished.
    assert weights.checksum is None and weights.meta["first_fetch_sha256"] == weights.sha256
    assert "first_fetch_sha256" not in graph.meta and graph.checksum.startswith("sha1:")
    assert model.is_local


def test_second_fetch_reuses_verified_files(served):
    fetch("tiny.caffe", quiet=True)
    hits = served.routes["/tiny/w.caffemodel"].hits
    fetch(["tiny.caffe"], quiet=True)
    assert served.routes["/tiny/w.caffemodel"].hits == hits
    fetch("tiny.caffe", quiet=True, force=True)
    assert served.routes["/tiny/w.caffemodel"].hits == hits + 1


def test_pinned_sha256_catches_a_changed_upstream_file(served):
    fetch("tiny.caffe", quiet=True)
    Path(open_catalog().get("tiny.caffe").artifact("weights").path).unlink()
    Store().plan_gc().execute()  # the store's copy goes too, so the file must come from the server
    served.routes["/tiny/w.caffemodel"].set_body(os.urandom(len(WEIGHTS)))
    with pytest.raises(ChecksumError, match="sha256 does not match"):
        fetch("tiny.caffe", quiet=True)


def test_checksum_mismatch_registers_nothing(fault_server):
    fault_server.add("/x.onnx", b"tampered bytes")
    open_catalog().add_model(Model(name="bad.onnx", framework="onnx", artifacts=[
        Artifact("model", "x.onnx", urls=[fault_server.url("/x.onnx")], checksum="sha256:" + "0" * 64)]))
    with pytest.raises(ChecksumError):
        fetch("bad.onnx", quiet=True)
    art = open_catalog().get("bad.onnx").artifact("model")
    assert art.path is None and art.sha256 is None


def test_404_names_the_url_and_the_model(fault_server):
    open_catalog().add_model(Model(name="gone.tflite", framework="tflite", artifacts=[
        Artifact("model", "m.tflite", urls=[fault_server.url("/m.tflite")])]))
    with pytest.raises(FetchError) as info:
        fetch("gone.tflite", quiet=True)
    assert "of gone.tflite" in str(info.value) and fault_server.url("/m.tflite") in str(info.value)


def test_archive_is_unpacked_and_verified_through_its_archive(fault_server, zoo_env):
    data = tar_gz({"mobilenet/model.tflite": b"TFL3 fake", "mobilenet/labels.txt": b"cat\n"})
    fault_server.add("/m.tar.gz", data)
    open_catalog().add_model(Model(name="mobilenet.tflite", framework="tflite", artifacts=[
        Artifact("archive", "m.tar.gz", urls=[fault_server.url("/m.tar.gz")], extract="tar",
                 checksum="md5:" + hashlib.md5(data).hexdigest(), meta={"members": {"model": "mobilenet/model.tflite"}})]))
    (art,) = fetch("mobilenet.tflite", quiet=True)
    folder = zoo_env / "cache" / "models" / "mobilenet.tflite" / "m"
    assert art.path == str(folder) and (folder / art.meta["members"]["model"]).read_bytes() == b"TFL3 fake"
    assert art.meta["archive_path"].endswith("m.tar.gz") and art.sha256 == hashlib.sha256(data).hexdigest()
    assert verify("mobilenet.tflite") == []
    # A second fetch neither downloads nor unpacks again.
    (folder / "marker").write_text("still here")
    fetch("mobilenet.tflite", quiet=True)
    assert (folder / "marker").exists() and fault_server.routes["/m.tar.gz"].hits == 1


def test_unsafe_archive_is_refused_and_not_registered(fault_server, zoo_env, tmp_path):
    data = tar_gz({"../../../escaped.txt": b"gotcha"})
    fault_server.add("/evil.tgz", data)
    open_catalog().add_model(Model(name="evil.tflite", framework="tflite", artifacts=[
        Artifact("archive", "evil.tgz", urls=[fault_server.url("/evil.tgz")], extract="tar")]))
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        fetch("evil.tflite", quiet=True)
    assert open_catalog().get("evil.tflite").artifact("archive").path is None
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("escaped.txt"))


def test_filenames_from_an_index_cannot_leave_the_cache(fault_server):
    open_catalog().add_model(Model(name="sneaky.onnx", framework="onnx", artifacts=[
        Artifact("model", "../../evil.onnx", urls=[fault_server.url("/x")])]))
    with pytest.raises(FetchError, match="not a file name or a relative path inside"):
        fetch("sneaky.onnx", quiet=True)


def test_a_file_in_a_sub_folder_never_goes_through_a_link_out_of_the_cache(fault_server, tmp_path):
    """A filename may name a sub-folder of the model's folder (a SavedModel's variables/); a link planted
    there does not carry the download elsewhere."""
    from zoo.cache import model_folder

    fault_server.add("/v", b"weights")
    open_catalog().add_model(Model(name="linked.onnx", framework="onnx", artifacts=[
        Artifact("other", "variables/v.index", urls=[fault_server.url("/v")])]))
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = model_folder("linked.onnx")
    folder.mkdir(parents=True)
    (folder / "variables").symlink_to(outside)
    with pytest.raises(FetchError, match="leads out of"):
        fetch("linked.onnx", quiet=True)
    assert not any(outside.iterdir())
    (folder / "variables").unlink()
    (fetched,) = fetch("linked.onnx", quiet=True)
    assert fetched.path == str(folder / "variables" / "v.index") and open(fetched.path, "rb").read() == b"weights"


def test_offline_fetch_with_and_without_cache(served, monkeypatch):
    with pytest.raises(OfflineError) as info:
        fetch("tiny.caffe", offline=True, quiet=True)
    message = str(info.value)
    assert "2 file(s) are not cached" in message  # every missing file is named, not just the first
    assert "deploy.prototxt of tiny.caffe" in message and "w.caffemodel of tiny.caffe" in message
    assert served.url("/tiny/w.caffemodel") in message
    assert sum(r.hits for r in served.routes.values()) == 0
    fetch("tiny.caffe", quiet=True)
    hits = sum(r.hits for r in served.routes.values())
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert len(fetch("tiny.caffe", quiet=True)) == 2
    assert sum(r.hits for r in served.routes.values()) == hits


def test_verify_reports_changed_and_missing_files(served):
    assert verify() == []
    fetch("tiny.caffe", quiet=True)
    assert verify(["tiny.caffe"]) == []
    model = open_catalog().get("tiny.caffe")
    Path(model.artifact("weights").path).write_bytes(b"bit rot")
    Path(model.artifact("graph").path).unlink()
    problems = {p.role: p for p in verify("tiny.caffe")}
    assert problems["weights"].kind == "changed" and problems["graph"].kind == "missing"
    assert problems["weights"].expected == model.artifact("weights").sha256
    assert problems["weights"].actual == hashlib.sha256(b"bit rot").hexdigest()
    assert "zoo fetch --force tiny.caffe" in str(problems["weights"])
    # Fetching repairs both (the cached copy no longer verifies, so it is downloaded again).
    fetch("tiny.caffe", quiet=True)
    assert verify("tiny.caffe") == []


# -- the commands ------------------------------------------------------------------------


def test_cli_fetch_prints_a_line_per_file_and_json(served):
    runner = CliRunner()
    result = runner.invoke(cli, ["fetch", "tiny.caffe"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("tiny.caffe")]
    assert len(lines) == 2
    assert "29.3 KiB" in lines[1] and "/s" in lines[1] and "w.caffemodel" in lines[1]
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    result = runner.invoke(cli, ["fetch", "tiny.caffe", "--json", "--offline"])
    data = json.loads(result.stdout)
    assert [d["role"] for d in data] == ["graph", "weights"] and all(d["download"]["cached"] for d in data)


def test_cli_verify_exit_codes(served):
    runner = CliRunner()
    runner.invoke(cli, ["fetch", "-q", "tiny.caffe"])
    ok = runner.invoke(cli, ["verify"])
    assert ok.exit_code == 0 and "verify" in ok.stdout
    Path(open_catalog().get("tiny.caffe").artifact("weights").path).write_bytes(b"x")
    bad = runner.invoke(cli, ["verify", "tiny.caffe", "--json"])
    assert bad.exit_code == 1 and json.loads(bad.stdout)[0]["kind"] == "changed"


def test_cli_errors_are_one_line_and_never_show_the_token(fault_server, monkeypatch):
    monkeypatch.setenv("ZOO_TOKEN", "tok-0123456789")
    fault_server.add("/p.onnx", b"", status=403)
    cat = open_catalog()
    cat.add_source("corp", fault_server.url("/index.json"))
    cat.add_model(Model(name="private.onnx", framework="onnx", source="corp", artifacts=[
        Artifact("model", "p.onnx", urls=[fault_server.url("/p.onnx")])]))
    result = CliRunner().invoke(cli, ["fetch", "private.onnx"])
    assert result.exit_code == 1
    assert "HTTP 403" in result.output and "private.onnx" in result.output
    assert "tok-0123456789" not in result.output and "Traceback" not in result.output
    assert fault_server.requests[0].headers["Authorization"] == "Bearer tok-0123456789"
    unknown = CliRunner().invoke(cli, ["fetch", "no-such-model"])
    assert unknown.exit_code == 1 and "not in the catalog" in unknown.output


def test_ctrl_c_in_zoo_fetch_keeps_the_part_and_registers_nothing(fault_server, zoo_env, zoo_cmd):
    big = os.urandom(600_000)
    fault_server.add("/big.bin", big, rate=300_000)
    open_catalog().add_model(Model(name="big.onnx", framework="onnx", artifacts=[
        Artifact("model", "big.bin", urls=[fault_server.url("/big.bin")])]))
    part = zoo_env / "cache" / "models" / "big.onnx" / "big.bin.part"
    proc = subprocess.Popen([*zoo_cmd, "fetch", "big.onnx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 30_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    kept = part.stat().st_size
    assert 0 < kept < len(big) and not part.with_suffix("").exists()
    assert open_catalog().get("big.onnx").artifact("model").path is None
    # The next run resumes where that one stopped.
    fault_server.routes["/big.bin"].rate = None
    (art,) = fetch("big.onnx", quiet=True)
    assert Path(art.path).read_bytes() == big
    assert fault_server.routes["/big.bin"].requests[-1].headers["Range"] == f"bytes={kept}-"


@pytest.mark.slow
def test_progress_bar_only_on_a_terminal(served, zoo_cmd):
    """`zoo fetch` with stderr on a pseudo-terminal draws a bar; --quiet draws nothing."""
    import fcntl
    import pty
    import struct
    import termios

    def stderr_of(*args: str) -> str:
        master, slave = pty.openpty()
        # A real terminal has a size; tqdm draws nothing in a 0-column one.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen([*zoo_cmd, *args], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
        os.close(master)
        assert proc.returncode == 0
        return b"".join(chunks).decode(errors="replace")

    assert stderr_of("fetch", "--quiet", "tiny.caffe") == ""
    drawn = stderr_of("fetch", "--force", "tiny.caffe")
    assert "tiny.caffe: w.caffemodel" in drawn and "B/s" in drawn


def test_token_goes_to_a_private_source_host_not_to_public_zoos(fault_server, monkeypatch):
    monkeypatch.setenv("ZOO_TOKEN", "tok-0123456789")
    fault_server.add("/private.bin", WEIGHTS, auth="Bearer tok-0123456789")
    fault_server.add("/public.bin", WEIGHTS)
    cat = open_catalog()
    cat.add_source("corp", fault_server.url("/index.json"))
    cat.add_model(Model(name="mine.onnx", framework="onnx", source="corp", artifacts=[
        Artifact("model", "private.bin", urls=[fault_server.url("/private.bin")])]))
    cat.add_model(Model(name="public.caffe", framework="caffe", source="caffe", artifacts=[
        Artifact("weights", "public.bin", urls=[fault_server.url("/public.bin")])]))
    fetch(["mine.onnx", "public.caffe"], quiet=True)
    assert fault_server.routes["/private.bin"].requests[-1].headers["Authorization"] == "Bearer tok-0123456789"
    assert "Authorization" not in fault_server.routes["/public.bin"].requests[0].headers
    # ZOO_TOKEN_HOSTS overrides the rule, e.g. for files served from another host than the index.
    monkeypatch.setenv("ZOO_TOKEN_HOSTS", "127.0.0.1")
    fetch("public.caffe", quiet=True, force=True)
    assert fault_server.routes["/public.bin"].requests[-1].headers["Authorization"] == "Bearer tok-0123456789"


def test_file_without_url_is_taken_from_where_the_user_put_it(tmp_path):
    """Weights published only on a file-sharing page: the user drops them in the cache folder."""
    from zoo.catalog import open_catalog
    from zoo.config import cache_dir
    from zoo.errors import FetchError
    from zoo.download import fetch
    from zoo.records import Artifact, Model

    cat = open_catalog(builtins=False)
    cat.add_model(Model(name="manual.caffe", framework="caffe", artifacts=[
        Artifact("weights", "w.caffemodel", meta={"manual": "download it from the authors' OneDrive"})]))
    with pytest.raises(FetchError, match="OneDrive.*put the file at .*w.caffemodel"):
        fetch("manual.caffe", catalog=cat)
    placed = cache_dir() / "models" / "manual.caffe" / "w.caffemodel"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"weights" * 100)
    [done] = fetch("manual.caffe", catalog=cat)
    assert done.path == str(placed) and cat.get("manual.caffe").is_local
    assert cat.get("manual.caffe").artifacts[0].meta["first_fetch_sha256"] == done.sha256
