"""The catalog database: round trips, search ranking and filters, concurrency, schema upgrades, bad files.

Tests that take `cat` or `catalog_url` run on SQLite and on a real PostgreSQL server (conftest.py).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from zoo.catalog import SCHEMA_HEAD, Catalog, open_catalog
from zoo.errors import CatalogError, CatalogVersionError, DuplicateModelError, UnknownModelError
from zoo.records import Artifact, InputSpec, Model


def make(name, framework="onnx", **fields) -> Model:
    return Model(name=name, framework=framework, **fields)


@pytest.fixture
def cat(catalog_url) -> Catalog:
    return Catalog(catalog_url, builtins=False)

# For a test of SQLite itself: overrides the backends of the `cat` fixture.
sqlite_only = pytest.mark.parametrize("catalog_backend", ["sqlite"])


def test_round_trip_keeps_every_field(cat):
    model = Model(
        name="resnet50.caffe", framework="caffe", format="caffemodel", task="image-classification",
        dataset="ImageNet", architecture="ResNet-50", description="Deep residual network",
        license="MIT", tags=["residual", "imagenet"], source="caffe", homepage="https://h",
        paper="https://arxiv.org/abs/1512.03385",
        input=InputSpec(name="data", shape=[None, 3, 224, 224], layout="NCHW", mean=[104.0, 117.0, 123.0],
                        channel_order="BGR", pixel_range=[0, 255]),
        parameters=25_557_032, metrics={"top1": 0.753}, meta={"note": "x"},
        artifacts=[
            Artifact("graph", "deploy.prototxt", urls=["https://a/deploy.prototxt"]),
            Artifact("weights", "w.caffemodel", urls=["https://a/w", "https://b/w"], size=10,
                     checksum="sha1:" + "0" * 40),
        ],
    )
    cat.add_model(model)
    got = cat.get("resnet50.caffe")
    assert got.to_dict() == model.to_dict()
    assert not got.is_local
    # a reopened catalog (new engine, same file) sees the same
    again = Catalog(cat.url, builtins=False)
    assert again.get("resnet50.caffe").to_dict() == model.to_dict()


def test_artifacts_upsert_and_local_flag(cat):
    cat.add_model(make("m", artifacts=[Artifact("model", "m.onnx", urls=["http://x/m.onnx"])]))
    assert [m.name for m in cat.search(local=False)] == ["m"]
    cat.put_artifact("m", Artifact("model", "m.onnx", urls=["http://x/m.onnx"], path="/tmp/m.onnx", sha256="ab"))
    cat.put_artifact("m", Artifact("onnx", "m.onnx", path="/tmp/c/m.onnx", meta={"report": {"verified": True}}))
    model = cat.get("m")
    assert model.is_local and len(model.artifacts) == 2
    assert model.artifact("onnx").meta == {"report": {"verified": True}}
    assert [m.name for m in cat.search(local=True)] == ["m"]
    assert cat.find_by_sha256("ab")[0][0] == "m"
    cat.remove_artifact("m", "onnx", "m.onnx")
    assert cat.get("m").artifact("onnx") is None


def test_replace_keeps_one_row_per_artifact(cat):
    cat.add_model(make("m", artifacts=[Artifact("model", "m.onnx", path="/a", sha256="aa")]))
    cat.add_model(make("m", description="new", artifacts=[Artifact("model", "m.onnx", path="/b", sha256="bb")]),
                  replace=True)
    model = cat.get("m")
    assert model.description == "new" and [a.path for a in model.artifacts] == ["/b"]


def test_duplicate_unknown_and_update(cat):
    cat.add_model(make("bvlc_alexnet", "caffe"))
    with pytest.raises(DuplicateModelError, match="--name"):
        cat.add_model(make("bvlc_alexnet", "caffe"))
    with pytest.raises(UnknownModelError, match="closest: bvlc_alexnet"):
        cat.get("bvlc_alexnt")
    cat.update_model("bvlc_alexnet", task="image-classification", parameters=61_000_000)
    assert cat.get("bvlc_alexnet").parameters == 61_000_000
    with pytest.raises(CatalogError, match="framework 'caffe2'"):
        cat.add_model(make("x", "caffe2"))
    cat.remove_model("bvlc_alexnet")
    assert not cat.exists("bvlc_alexnet")


def test_failed_batch_changes_nothing(cat):
    cat.add_model(make("a"))
    with pytest.raises(DuplicateModelError):
        with cat.batch():
            cat.add_model(make("b"))
            cat.add_model(make("a"))
    assert cat.names() == ["a"]


@pytest.fixture
def ranked(cat):
    cat.add_models([
        make("resnet50.caffe", "caffe", description="Deep residual network, 50 layers",
             architecture="ResNet-50", task="image-classification", dataset="ImageNet",
             tags=["imagenet"], source="caffe"),
        make("resnet152.keras", "keras", architecture="ResNet-152", task="image-classification",
             dataset="ImageNet", source="tensorflow", tags=["notop"]),
        make("bvlc_alexnet", "caffe", description="AlexNet, a variant of the network of Krizhevsky",
             task="image-classification", dataset="ImageNet", source="caffe"),
        make("style_net", "caffe", description="Fine-tuned from a resnet-style trunk",
             task="style-classification", dataset="Flickr Style", source="caffe"),
        make("mobilenet_v1.tflite", "tflite", description="MobileNet v1 for phones",
             task="image-classification", dataset="ImageNet", source="tensorflow",
             artifacts=[Artifact("model", "m.tflite", path="/m", sha256="00")]),
    ])
    return cat


def test_search_ranks_name_matches_first(ranked):
    names = [m.name for m in ranked.search("resnet")]
    assert set(names[:2]) == {"resnet50.caffe", "resnet152.keras"}
    assert names[-1] == "style_net"  # only its description mentions resnet
    assert [m.name for m in ranked.search("resnet 50")] == ["resnet50.caffe"]
    assert [m.name for m in ranked.search("bvlc_alexnet")] == ["bvlc_alexnet"]
    assert ranked.search("krizhevsky")[0].name == "bvlc_alexnet"
    assert ranked.search("nothing-like-this") == []
    assert ranked.search("!!!") == []  # no words: no FTS syntax error


@pytest.mark.parametrize("filters, expected", [
    ({"framework": "caffe"}, {"resnet50.caffe", "bvlc_alexnet", "style_net"}),
    ({"framework": "caffe", "task": "style-classification"}, {"style_net"}),
    ({"dataset": "flickr style"}, {"style_net"}),
    ({"tag": "notop"}, {"resnet152.keras"}),
    ({"source": "tensorflow"}, {"resnet152.keras", "mobilenet_v1.tflite"}),
    ({"local": True}, {"mobilenet_v1.tflite"}),
    ({"local": False, "source": "tensorflow"}, {"resnet152.keras"}),
])
def test_search_filters(ranked, filters, expected):
    assert {m.name for m in ranked.search(None, limit=None, **filters)} == expected


def test_search_limit_and_query_with_filters(ranked):
    assert len(ranked.search(limit=2)) == 2
    assert [m.name for m in ranked.search("resnet", framework="keras")] == ["resnet152.keras"]


@sqlite_only
def test_like_fallback_matches_fts(ranked, tmp_path):
    """Non-SQLite databases search with LIKE; simulate by switching FTS off on the same data."""
    ranked._fts = False
    assert set(m.name for m in ranked.search("resnet")) >= {"resnet50.caffe", "resnet152.keras"}
    assert [m.name for m in ranked.search("resnet", framework="caffe")][0] == "resnet50.caffe"


def test_schema_version(cat):
    with cat._engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == SCHEMA_HEAD


@sqlite_only
def test_wal_mode(cat):
    with sqlite3.connect(cat._engine.url.database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sizes_and_parameter_counts_past_32_bits(cat):
    """Published files pass 2 GiB and models 2**31 parameters; PostgreSQL's INTEGER would not hold them."""
    cat.add_model(make("big", parameters=175_000_000_000,
                       artifacts=[Artifact("weights", "w.bin", size=5 * 2**30)]))
    model = cat.get("big")
    assert model.parameters == 175_000_000_000 and model.artifacts[0].size == 5 * 2**30


def test_upgrades_catalog_written_by_older_schema(catalog_url):
    """A catalog at revision 0001 (no FTS, no keywords) is upgraded in place, data kept."""
    from sqlalchemy import create_engine

    from zoo.migrations import upgrade

    engine = create_engine(catalog_url)
    with engine.begin() as connection:
        upgrade(connection, "0001")
        connection.exec_driver_sql(
            "INSERT INTO models (name, framework, description, tags, input_spec, metrics, meta) "
            "VALUES ('old_resnet', 'caffe', 'a residual net', '[\"legacy\"]', '{}', '{}', '{}')")
        connection.exec_driver_sql(
            "INSERT INTO artifacts (model_id, role, filename, urls, meta) VALUES (1, 'weights', 'w', '[]', '{}')")
    cat = Catalog(catalog_url, builtins=False)
    assert [m.name for m in cat.search("residual")] == ["old_resnet"]
    assert [m.name for m in cat.search("legacy")] == ["old_resnet"]  # keywords filled from tags
    assert [m.name for m in cat.search(tag="legacy")] == ["old_resnet"]
    assert cat.get("old_resnet").artifacts[0].filename == "w"
    cat.add_model(make("new_resnet"))  # the id sequence goes on after the old rows
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == SCHEMA_HEAD
    engine.dispose()


def test_refuses_catalog_newer_than_itself(cat):
    with cat._engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(CatalogVersionError, match="9999.*upgrade zoo"):
        Catalog(cat.url, builtins=False)


def test_not_a_sqlite_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("these are my notes, not a database\n" * 100)
    before = bad.read_bytes()
    with pytest.raises(CatalogError, match="not a SQLite catalog"):
        open_catalog(bad)
    assert bad.read_bytes() == before


def test_foreign_sqlite_database_is_refused(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(CatalogError, match="not a zoo catalog"):
        open_catalog(other)


@pytest.mark.skipif(os.geteuid() == 0 and not os.environ.get("ZOO_TEST_CHATTR"), reason="root ignores permissions")
def test_read_only_location(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CatalogError, match="writable location"):
            open_catalog(folder / "catalog.db")
    finally:
        folder.chmod(0o700)


def test_read_only_file_as_root_is_reported(tmp_path):
    """Even as root, a read-only file system is refused with one clear line (sqlite opens ?mode=ro)."""
    path = tmp_path / "c.db"
    Catalog(f"sqlite:///{path}", builtins=False).add_model(make("a"))
    ro = Catalog(f"sqlite:///file:{path}?mode=ro&uri=true", builtins=False)
    assert ro.names() == ["a"]
    with pytest.raises(CatalogError, match="cannot be written"):
        ro.add_model(make("b"))
    assert ro.names() == ["a"]


def test_folder_as_catalog(tmp_path):
    with pytest.raises(CatalogError, match="is a folder"):
        open_catalog(tmp_path)


WRITER = textwrap.dedent("""
    import sys
    from zoo.catalog import Catalog
    from zoo.records import Model, Artifact
    cat = Catalog(sys.argv[1], builtins=False)
    for i in range(int(sys.argv[3])):
        with cat.batch():
            cat.add_model(Model(name=f"{sys.argv[2]}-{i}", framework="onnx"))
            cat.put_artifact(f"{sys.argv[2]}-{i}", Artifact("model", "m.onnx", path=f"/m{i}", sha256="00"))
            cat.search("m")
""")


@pytest.mark.slow
def test_eight_processes_write_one_catalog(catalog_url, tmp_path):
    url = catalog_url
    Catalog(url, builtins=False)  # create the schema first, as the first `zoo` command would
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    tags = "pqrstuvw"
    procs = [subprocess.Popen([sys.executable, str(script), url, tag, "20"], stderr=subprocess.PIPE)
             for tag in tags]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    cat = Catalog(url, builtins=False)
    assert cat.count() == 160
    assert all(m.is_local for m in cat.search(limit=None))
    assert {m.name for m in cat.search("w", limit=None)} == {f"w-{i}" for i in range(20)}


def test_two_processes_create_one_catalog(catalog_url, tmp_path):
    """Two first-use processes racing to create the schema both succeed."""
    url = catalog_url
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), url, tag, "5"], stderr=subprocess.PIPE)
             for tag in ("p", "q")]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert Catalog(url, builtins=False).count() == 10


SQLITE_WITHOUT_FTS5 = textwrap.dedent("""
    import sys
    import tensorflow  # brings its own SQLite, without FTS5, when imported before sqlite3
    from zoo.catalog import Catalog
    from zoo.records import Model
    cat = Catalog(sys.argv[1], builtins=False)
    print("fts" if cat._fts else "like")
    cat.add_model(Model(name="written_without_fts", framework="onnx", description="quokka"))
    cat.remove_model("gone")
    print(",".join(m.name for m in cat.search("quokka")))
""")


@pytest.mark.slow
def test_process_without_fts5_searches_with_like_and_index_catches_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cat = Catalog(url, builtins=False)
    cat.add_model(make("gone", description="quokka"))
    script = tmp_path / "tf_first.py"
    script.write_text(SQLITE_WITHOUT_FTS5)
    run = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    mode, found = run.stdout.split()[-2:]
    assert found == "written_without_fts"
    # Whatever SQLite that process had, a process with FTS5 sees the index up to date.
    again = Catalog(url, builtins=False)
    assert again._fts
    assert [m.name for m in again.search("quokka")] == ["written_without_fts"]
    print("process with tensorflow first searched with", mode)
