"""Remote zoo sources over a real HTTP server on 127.0.0.1: ETag/304, upstream removals, bad indexes."""
from __future__ import annotations

import json

import pytest

import zoo
from zoo.catalog import open_catalog
from zoo.errors import (
    DuplicateModelError,
    FetchError,
    IndexFormatError,
    OfflineError,
    UnknownSourceError,
    ZooError,
)
from zoo.index import FORMAT
from zoo.records import Artifact
from zoo.sources import add_source, list_sources, remove_source, sync_sources

# Every test runs on SQLite and on a real PostgreSQL server (conftest.py).
pytestmark = pytest.mark.usefixtures("catalog_env")


def entry(name: str, description: str = "a model") -> dict:
    return {"name": name, "framework": "onnx", "description": description, "tags": ["acme"],
            "files": [{"role": "model", "filename": f"{name}.onnx",
                       "url": f"https://models.example/{name}.onnx", "sha256": "ab" * 32}]}


def index_bytes(*entries: dict) -> bytes:
    return json.dumps({"format": FORMAT, "name": "acme", "models": list(entries)}).encode()


def snapshot() -> tuple[list[dict], list[dict]]:
    cat = open_catalog()
    return ([m.to_dict() for m in cat.search(limit=None)], [s.to_dict() for s in cat.sources()])


@pytest.fixture
def acme(fault_server):
    route = fault_server.add("/zoo.json", index_bytes(entry("a.acme"), entry("b.acme")),
                             content_type="application/json")
    return route, fault_server.url("/zoo.json")


def test_add_sync_and_304(acme):
    route, url = acme
    report = add_source("acme", url)
    assert report.status == "synced" and sorted(report.stats.added) == ["a.acme", "b.acme"]
    assert zoo.info("a.acme").source == "acme"
    assert [m.name for m in zoo.search(source="acme")] == ["a.acme", "b.acme"]
    (info,) = [s for s in list_sources() if s.name == "acme"]
    assert info.url == url and info.models == 2 and info.etag == route.current_etag
    assert info.synced_at

    before = snapshot()[0]
    (again,) = sync_sources("acme")
    assert again.status == "unchanged"
    assert route.requests[-1].headers["If-None-Match"] == route.current_etag
    assert route.hits == 2 and snapshot()[0] == before


def test_sync_updates_adds_deletes_and_marks_fetched(acme):
    route, url = acme
    add_source("acme", url)
    # b was fetched: its file is on disk
    cat = open_catalog()
    cat.put_artifact("b.acme", Artifact("model", "b.acme.onnx", urls=["https://models.example/b.acme.onnx"],
                                        checksum="sha256:" + "ab" * 32, path="/tmp/b.onnx", sha256="ab" * 32))
    route.set_body(index_bytes(entry("c.acme"), entry("d.acme", description="new text")))
    (report,) = sync_sources("acme")
    assert report.status == "synced"
    assert sorted(report.stats.added) == ["c.acme", "d.acme"]
    assert report.stats.removed == ["a.acme"] and report.stats.marked == ["b.acme"]
    assert not cat.exists("a.acme")
    kept = cat.get("b.acme")
    assert kept.removed_upstream and kept.artifacts[0].path == "/tmp/b.onnx"
    # b comes back upstream: unmarked, its local file kept
    route.set_body(index_bytes(entry("b.acme", "back"), entry("c.acme"), entry("d.acme", "new text")))
    (report,) = sync_sources("acme")
    back = cat.get("b.acme")
    assert report.stats.updated == ["b.acme"] and not back.removed_upstream
    assert back.description == "back" and back.artifacts[0].path == "/tmp/b.onnx"


def test_malformed_index_changes_nothing(acme):
    route, url = acme
    add_source("acme", url)
    before = snapshot()
    bad = json.loads(index_bytes(entry("a.acme"), entry("z.acme")))
    bad["models"][1]["framework"] = "caffe2"
    route.set_body(json.dumps(bad).encode())
    with pytest.raises(IndexFormatError) as caught:
        sync_sources("acme")
    assert str(caught.value).startswith("index 'acme' entry 1 ('z.acme'): field 'framework'")
    route.set_body(b"<html>maintenance</html>")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        sync_sources("acme")
    assert snapshot() == before  # models, ETag and sync time all as they were


def test_http_errors_change_nothing(acme, fault_server):
    route, url = acme
    add_source("acme", url)
    before = snapshot()
    route.set_body(b"<html>gone</html>")
    route.status = 404
    with pytest.raises(FetchError, match="HTTP 404"):
        sync_sources("acme")
    assert snapshot() == before
    with pytest.raises(FetchError, match="HTTP 404"):
        add_source("other", fault_server.url("/missing.json"))
    assert "other" not in [s.name for s in list_sources()]


def test_name_clash_with_another_source_changes_nothing(fault_server):
    fault_server.add("/zoo.json", index_bytes(entry("bvlc_alexnet")))
    before = snapshot()
    with pytest.raises(DuplicateModelError, match="bvlc_alexnet"):
        add_source("acme", fault_server.url("/zoo.json"))
    assert snapshot() == before


def test_sync_all_reports_each_source(acme, fault_server):
    route, url = acme
    add_source("acme", url)
    broken = fault_server.add("/broken.json", index_bytes(entry("x.broken")))
    add_source("broken", fault_server.url("/broken.json"))
    broken.set_body(b"{")
    reports = {r.name: r for r in sync_sources()}
    assert reports["acme"].status == "unchanged"
    assert reports["broken"].status == "error" and "not valid JSON" in reports["broken"].error
    assert reports["caffe"].status in ("synced", "unchanged")
    assert zoo.info("x.broken").source == "broken"


def test_file_urls_and_paths(tmp_path):
    path = tmp_path / "zoo.json"
    path.write_bytes(index_bytes(entry("a.acme")))
    report = add_source("acme", str(path))
    assert report.url == path.as_uri() and report.stats.added == ["a.acme"]
    assert sync_sources("acme")[0].status == "unchanged"  # same content
    path.write_bytes(index_bytes(entry("a.acme"), entry("b.acme")))
    assert sync_sources("acme")[0].stats.added == ["b.acme"]
    add_source("again", path.as_uri(), sync=False)
    assert [s.synced_at for s in list_sources() if s.name == "again"] == [None]
    with pytest.raises(ZooError, match="does not exist"):
        add_source("nope", str(tmp_path / "nope.json"))


def test_builtin_sources_resync(tmp_path):
    reports = {r.name: r for r in sync_sources()}
    assert set(reports) == {"caffe", "tensorflow"}
    assert all(r.status in ("synced", "unchanged") for r in reports.values())
    assert sync_sources("caffe")[0].status == "unchanged"
    with pytest.raises(ZooError, match="built-in"):
        add_source("caffe", str(tmp_path))
    # a removed built-in comes back only with force (the index itself did not change)
    zoo.remove("bvlc_alexnet")
    assert sync_sources("caffe")[0].status == "unchanged"
    (forced,) = sync_sources("caffe", force=True)
    assert forced.stats.added == ["bvlc_alexnet"] and zoo.info("bvlc_alexnet").source == "caffe"


def test_remove_source(acme):
    route, url = acme
    add_source("acme", url)
    open_catalog().put_artifact("a.acme", Artifact("model", "a.acme.onnx", path="/tmp/a.onnx", sha256="ab" * 32))
    stats = remove_source("acme")
    assert stats.removed == ["b.acme"] and stats.marked == ["a.acme"]
    assert "acme" not in [s.name for s in list_sources()]
    assert open_catalog().get("a.acme").removed_upstream
    with pytest.raises(UnknownSourceError, match="closest: tensorflow"):
        remove_source("tensorflw")
    with pytest.raises(UnknownSourceError):
        sync_sources("acme")


def test_bad_names_and_offline(acme, monkeypatch):
    _route, url = acme
    for name in ("local", "my source", ""):
        with pytest.raises(ZooError):
            add_source(name, url)
    with pytest.raises(ZooError, match="scheme 'ftp'"):
        add_source("ftp", "ftp://example.org/zoo.json")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="ZOO_OFFLINE"):
        add_source("acme", url)


# ---- hostile remote indexes (issue 11) -----------------------------------------------------------

HOSTILE = [
    ({"parameters": 10**30}, "field 'parameters'"),
    ({"meta": json.loads("[" * 40 + "]" * 40)}, "field 'meta'"),
    ({"meta": {"deep": json.loads('{"a":' * 40 + "1" + "}" * 40)}}, "deeper than 16 levels"),
    ({"files": [{"role": "model", "filename": "a" * 300, "url": "https://models.example/a"}]}, "at most 241 bytes"),
    ({"files": [{"role": "model", "filename": "m.onnx", "url": "file:///etc/passwd"}]},
     "served over the network may only point at http or https"),
    ({"files": [{"role": "model", "filename": "ok", "url": "https://models.example/ok"},
                {"role": "archive", "filename": "ok.tar", "url": "https://models.example/ok.tar", "extract": "tar"}]},
     "unpacks to"),
]


@pytest.mark.parametrize("change, words", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_a_hostile_remote_index_is_refused_and_changes_nothing(acme, change, words):
    route, url = acme
    add_source("acme", url)
    before = snapshot()
    route.set_body(index_bytes(entry("a.acme"), {**entry("evil.acme"), **change}))
    with pytest.raises(IndexFormatError) as caught:
        sync_sources("acme")
    message = str(caught.value)
    assert message.startswith("index 'acme' entry 1 ('evil.acme')") and words in message, message
    assert "\n" not in message
    assert snapshot() == before


def test_the_largest_allowed_values_reach_the_catalog(acme):
    route, url = acme
    big = entry("big.acme")
    big["parameters"] = 2**63 - 1
    big["files"][0]["size"] = 2**63 - 1
    route.set_body(index_bytes(big))
    add_source("acme", url)
    model = zoo.info("big.acme")
    assert model.parameters == 2**63 - 1 and model.artifacts[0].size == 2**63 - 1


def test_a_huge_index_is_refused_at_the_bound(acme, monkeypatch, tmp_path):
    import socket
    import threading

    monkeypatch.setattr("zoo.sources.MAX_INDEX_BYTES", 1 << 20)
    route, url = acme
    route.set_body(b" " * (2 << 20))  # declared by Content-Length: refused before reading it
    with pytest.raises(FetchError, match="larger than 1.0 MiB"):
        add_source("acme", url)
    # A server that sends an endless body with no length: the client stops at the bound.
    listener = socket.create_server(("127.0.0.1", 0))
    sent = []

    def endless():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            try:
                for _ in range(64 << 4):  # up to 64 MB
                    connection.sendall(b" " * 65536)
                    sent.append(65536)
            except OSError:
                pass  # the client hung up: what this test wants

    thread = threading.Thread(target=endless, daemon=True)
    thread.start()
    with pytest.raises(FetchError, match="larger than 1.0 MiB"):
        add_source("endless", f"http://127.0.0.1:{listener.getsockname()[1]}/zoo.json")
    thread.join(timeout=30)
    listener.close()
    assert sum(sent) < 32 << 20  # stopped long before the server ran out
    assert "endless" not in [s.name for s in list_sources()]
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 << 20))
    with pytest.raises(FetchError, match="larger than 1.0 MiB"):
        add_source("bigfile", str(big))


def test_credentials_in_source_urls_are_masked(fault_server):
    import base64

    secret = "s3cret-pa55"
    route = fault_server.add("/zoo.json", index_bytes(entry("a.acme")),
                             auth="Basic " + base64.b64encode(f"bob:{secret}".encode()).decode())
    url = fault_server.url("/zoo.json").replace("http://", f"http://bob:{secret}@") + "?token=t0ps3cret"
    report = add_source("acme", url)
    assert report.status == "synced"  # the real URL (and its credentials) is what gets used
    assert [s.url for s in list_sources() if s.name == "acme"] == [url]
    shown = json.dumps([s.to_dict() for s in list_sources()]) + json.dumps(report.to_dict())
    assert secret not in shown and "t0ps3cret" not in shown and "bob:***@" in shown
    route.status = 500
    route.set_body(b"oops")
    (failed,) = [r for r in sync_sources() if r.name == "acme"]
    assert failed.status == "error" and "HTTP 500" in failed.error
    assert secret not in failed.error and "t0ps3cret" not in failed.error
    with pytest.raises(FetchError) as caught:
        sync_sources("acme")
    assert secret not in str(caught.value) and "token=***" in str(caught.value)


@pytest.mark.parametrize("url, shown", [
    ("https://bob:pw@h.example/zoo.json", "https://bob:***@h.example/zoo.json"),
    ("https://ghp_token123@github.example/zoo.json", "https://***@github.example/zoo.json"),
    ("https://h.example/z.json?X-Amz-Signature=abc&v=2&api_key=k", "https://h.example/z.json?X-Amz-Signature=***&v=2&api_key=***"),
    ("postgresql+psycopg://zoo:p%40ss@127.0.0.1:5432/zoo", "postgresql+psycopg://zoo:***@127.0.0.1:5432/zoo"),
    ("https://h.example/zoo.json?v=2", "https://h.example/zoo.json?v=2"),
    ("hf://?author=acme&library=onnx", "hf://?author=acme&library=onnx"),
    ("https://h.example/z.json?auth=x&author=acme", "https://h.example/z.json?auth=***&author=acme"),
    ("sqlite:////home/me/catalog.db", "sqlite:////home/me/catalog.db"),
    ("file:///home/me/zoo.json", "file:///home/me/zoo.json"),
])
def test_mask_url(url, shown):
    from zoo._redact import mask_secrets, mask_url

    assert mask_url(url) == shown
    assert mask_secrets(f"cannot open {url!r}: refused") == f"cannot open {shown!r}: refused"


def test_an_unparseable_source_url_is_one_line(zoo_cmd):
    """A fresh `zoo source add x http://[::1` (an unclosed IPv6 address): one line, no internal error."""
    import subprocess

    out = subprocess.run([*zoo_cmd, "source", "add", "x", "http://[::1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: index URL '<unparseable URL>' is not a URL (Invalid IPv6 URL); give an http(s):// URL or a path "
        "to a file"), out.stderr
