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
from zoo.revisions import content_digest
from zoo.records import Artifact, InputSpec, Model
from zoo.sources import remove_source


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
    model.revision = content_digest(model.artifacts)[:12]  # the catalog records the revision the files are
    assert got.to_dict() == model.to_dict()
    assert not got.is_local
    # a reopened catalog (new engine, same file) sees the same
    again = Catalog(cat.url, builtins=False)
    assert again.get("resnet50.caffe").to_dict() == model.to_dict()


def test_artifacts_upsert_and_local_flag(cat, tmp_path):
    cat.add_model(make("m", artifacts=[Artifact("model", "m.onnx", urls=["http://x/m.onnx"])]))
    assert [m.name for m in cat.search(local=False)] == ["m"]
    on_disk = tmp_path / "m.onnx"
    on_disk.write_bytes(b"onnx")
    cat.put_artifact("m", Artifact("model", "m.onnx", urls=["http://x/m.onnx"], path=str(on_disk), sha256="ab"))
    cat.put_artifact("m", Artifact("onnx", "m.onnx", path="/tmp/c/m.onnx", meta={"report": {"verified": True}}))
    model = cat.get("m")
    assert model.is_local and len(model.artifacts) == 2
    on_disk.unlink()  # a file that is gone is not local any more, whatever the catalog recorded
    assert not cat.get("m").is_local and str(on_disk) in cat.get("m").missing_files
    on_disk.write_bytes(b"onnx")
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
    ranked._backend.fts = False
    assert ranked.search_mode == "like"
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


def test_a_new_sqlite_catalog_is_what_the_migrations_make_without_alembic(tmp_path, zoo_cmd):
    """sqlite_head.sql is the migrations' schema now (else: `python -m zoo.migrations` writes it again);
    a new catalog made from it holds the same schema, and making one does not import Alembic."""
    import subprocess
    import sys

    from sqlalchemy import create_engine

    from zoo.migrations import SQLITE_HEAD, sqlite_head, upgrade

    with create_engine("sqlite://").begin() as connection:
        upgrade(connection, "head")
        migrated = sqlite_head(connection)
    assert SQLITE_HEAD.read_text() == migrated, "a migration changed the schema: run `python -m zoo.migrations`"
    assert f"VALUES ('{SCHEMA_HEAD}')" in migrated
    made = Catalog(f"sqlite:///{tmp_path / 'c.db'}", builtins=False)
    with made._engine.connect() as connection:  # and the search index zoo keeps itself (zoo._sqlite)
        statements = sqlite_head(connection).split(";\n")
        assert ";\n".join(s for s in statements if "models_fts" not in s) == migrated
    probe = ("import sys; from zoo.catalog import Catalog; Catalog(sys.argv[1]).search('alexnet'); "
             "print('alembic' in sys.modules)")
    for url in (f"sqlite:///{tmp_path / 'd.db'}", "sqlite://"):
        out = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False", url


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


@pytest.fixture
def media(tmp_path):
    """A real file system that can be made read-only: a tmpfs mounted under tmp_path.

    Root ignores permission bits, so only a read-only mount shows what read-only media do.
    Yields (folder, seal), where seal() remounts it read-only.
    """
    folder = tmp_path / "media"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {mounted.stderr.strip()}")

    def seal():
        _forget_open_catalogs()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    try:
        yield folder, seal
    finally:
        _forget_open_catalogs()
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_location(media):
    folder, seal = media
    seal()
    with pytest.raises(CatalogError, match="writable location"):
        open_catalog(folder / "catalog.db")


def test_a_catalog_on_read_only_media_can_be_read_not_written(media, zoo_cmd):
    folder, seal = media
    path = folder / "catalog.db"
    open_catalog(path).add_model(make("mine", description="quokka detector"))
    seal()
    assert sorted(os.listdir(folder)) == ["catalog.db"]  # closed cleanly: no -wal or -shm to read
    cat = open_catalog(path)
    assert cat.read_only
    assert cat.exists("bvlc_alexnet") and cat.get("mine").description == "quokka detector"
    assert [m.name for m in cat.search("quokka")] == ["mine"]
    with pytest.raises(CatalogError, match="is read-only .* copy it somewhere writable"):
        cat.add_model(make("other"))
    with pytest.raises(CatalogError, match="is read-only"):
        cat.remove_model("mine")
    for args in (["search", "quokka"], ["info", "mine"], ["source", "list"]):
        run = subprocess.run([*zoo_cmd, *args, "--catalog", str(path)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "mine" in run.stdout or "caffe" in run.stdout
    run = subprocess.run([*zoo_cmd, "rm", "mine", "--catalog", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "is read-only" in run.stderr, run.stderr


def test_an_immutable_catalog_file_in_a_writable_folder_can_be_read(tmp_path):
    """chattr +i: the file refuses writes even to root, while its folder takes the -shm/-wal files."""
    path = tmp_path / "catalog.db"
    open_catalog(path).add_model(make("mine"))
    _forget_open_catalogs()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        cat = open_catalog(path)
        assert cat.read_only and cat.exists("mine") and cat.exists("bvlc_alexnet")
        with pytest.raises(CatalogError, match="is read-only"):
            cat.update_model("mine", description="changed")
    finally:
        _forget_open_catalogs()
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert open_catalog(path).get("mine").description is None


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from zoo.catalog import Catalog
    from zoo.records import Model
    cat = Catalog(sys.argv[1], builtins=False)
    with cat._engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        cat.add_model(Model(name="only_in_the_wal", framework="onnx"))
        os._exit(0)  # no checkpoint: the commit lives in the -wal file
""")


def test_a_read_only_catalog_reads_what_its_write_ahead_log_holds(media, tmp_path):
    folder, seal = media
    path = folder / "catalog.db"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    subprocess.run([sys.executable, str(script), f"sqlite:///{path}"], check=True, timeout=120)
    assert (folder / "catalog.db-wal").stat().st_size > 0
    seal()
    cat = open_catalog(path, builtins=False)
    assert cat.read_only and cat.names() == ["only_in_the_wal"]


def test_read_only_file_as_root_is_reported(tmp_path):
    """Even as root, a read-only file system is refused with one clear line (sqlite opens ?mode=ro)."""
    path = tmp_path / "c.db"
    Catalog(f"sqlite:///{path}", builtins=False).add_model(make("a"))
    ro = Catalog(f"sqlite:///file:{path}?mode=ro&uri=true", builtins=False)
    assert ro.names() == ["a"]
    with pytest.raises(CatalogError, match="cannot be written"):
        ro.add_model(make("b"))
    assert ro.names() == ["a"]


def test_a_sqlite_uri_names_its_file_and_leaves_no_file_folder_in_the_cwd(tmp_path, monkeypatch):
    """`sqlite:///file:...?uri=true` is a SQLite URI: its path is the file, not a folder `file:` in the cwd."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data" / "c.db"
    path.parent.mkdir()
    Catalog(f"sqlite:///{path}", builtins=False).add_model(make("a"))
    assert Catalog(f"sqlite:///file:{path}?mode=ro&uri=true", builtins=False).names() == ["a"]
    with pytest.raises(CatalogError, match="its folder .*sub does not exist"):  # no folder is made
        Catalog("sqlite:///file:sub/new%20one.db?uri=true", builtins=False)
    assert not (tmp_path / "sub").exists()
    (tmp_path / "sub").mkdir()
    relative = Catalog("sqlite:///file:sub/new%20one.db?uri=true", builtins=False)
    relative.add_model(make("b"))
    assert (tmp_path / "sub" / "new one.db").is_file()
    assert not list(tmp_path.glob("file:*"))


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
    assert all(a.path for m in cat.search(limit=None) for a in m.artifacts)
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
    print(cat.search_mode)
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
    assert again.search_mode == "fts5"
    assert [m.name for m in again.search("quokka")] == ["written_without_fts"]
    print("process with tensorflow first searched with", mode)


# ---- a first command killed while it creates the catalog (kill -9) ------------------------------

# The creating process stops (and says so) at a chosen point: after the schema is committed but
# before the built-ins are read, or inside the transaction that loads them; the test then SIGKILLs it.
CREATE_AND_STOP = textwrap.dedent("""
    import sys, time
    import zoo.catalog, zoo.index

    def stop():
        print("stopped", flush=True)
        time.sleep(120)

    if sys.argv[2] == "before-load":
        real_models = zoo.index.builtin_models
        def builtin_models(*a, **k):
            stop()
            return real_models(*a, **k)
        zoo.index.builtin_models = builtin_models
    else:
        real_add = zoo.catalog.Catalog.add_models
        def add_models(self, *a, **k):
            count = real_add(self, *a, **k)
            self._active.flush()  # the first zoo's rows are written, uncommitted
            stop()
            return count
        zoo.catalog.Catalog.add_models = add_models
    zoo.catalog.open_catalog(sys.argv[1])
""")


def _create_and_kill(path, where, tmp_path):
    import signal

    script = tmp_path / "create.py"
    script.write_text(CREATE_AND_STOP)
    proc = subprocess.Popen([sys.executable, str(script), str(path), where],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "stopped", proc.stderr.read()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _forget_open_catalogs():
    """Make the next open_catalog start afresh, as a new `zoo` command would."""
    from zoo.catalog import close_all

    close_all()


@pytest.mark.parametrize("where", ["before-load", "inside-load"])
def test_a_creation_killed_before_the_builtins_are_in_is_finished_by_the_next_open(tmp_path, where):
    from zoo.index import builtin_index_names, builtin_models

    path = tmp_path / "c.db"
    _create_and_kill(path, where, tmp_path)
    with sqlite3.connect(path) as connection:  # the schema is there, the zoos are not (yet)
        assert connection.execute("SELECT count(*) FROM models").fetchone() == (0,)
        assert connection.execute("SELECT value FROM zoo_state WHERE key = 'builtins'").fetchone() == ("pending",)
    cat = open_catalog(path)
    assert sorted(cat.names()) == sorted(m.name for m in builtin_models())
    assert [s.name for s in cat.sources()] == builtin_index_names()
    assert cat.search("alexnet")[0].name == "bvlc_alexnet"
    # Loaded once: a later open neither reloads nor brings back what the user removed.
    remove_source("caffe", catalog=cat)
    _forget_open_catalogs()
    assert "caffe" not in [s.name for s in open_catalog(path).sources()]


def test_builtins_state_of_new_and_older_catalogs(tmp_path):
    bare = tmp_path / "bare.db"
    Catalog(f"sqlite:///{bare}", builtins=False)
    assert open_catalog(bare).count() == 0  # created without built-ins on purpose: stays so
    # A catalog written before the state was recorded, empty because its creation was killed.
    older = tmp_path / "older.db"
    Catalog(f"sqlite:///{older}", builtins=False)
    with sqlite3.connect(older) as connection:
        connection.execute("DELETE FROM zoo_state")
    assert open_catalog(older).exists("bvlc_alexnet")
    # One from before, with models of its own: left alone.
    kept = tmp_path / "kept.db"
    Catalog(f"sqlite:///{kept}", builtins=False).add_model(make("mine"))
    with sqlite3.connect(kept) as connection:
        connection.execute("DELETE FROM zoo_state")
    assert open_catalog(kept).names() == ["mine"]


def test_opening_a_current_catalog_does_no_migration_work(catalog_url, monkeypatch):
    """A catalog whose schema is current opens with one query for its state: no reflection, no
    Alembic, no second look at the built-ins (what every PostgreSQL command paid in round trips)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import zoo.migrations

    Catalog(catalog_url).add_model(make("mine"))  # created, migrated, built-ins loaded
    statements: list[str] = []

    def note(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()))

    def no_upgrade(*args, **kwargs):
        raise AssertionError("upgrade() ran on a current catalog")

    monkeypatch.setattr(zoo.migrations, "upgrade", no_upgrade)
    event.listen(Engine, "before_cursor_execute", note)
    try:
        again = Catalog(catalog_url)
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert again.exists("mine") and again.exists("bvlc_alexnet")
    state = [s for s in statements if "alembic_version" in s or ("zoo_state" in s and "search_stale" not in s)]
    assert len(state) == 1 and state[0].startswith("SELECT (SELECT version_num FROM alembic_version), "), statements
    assert not [s for s in statements if "pg_catalog" in s or "sqlite_master WHERE type='table'" in s], statements
    if again.is_postgresql:
        assert len(statements) == 1, statements  # the search index needs nothing at open


def test_an_older_or_foreign_catalog_still_takes_the_careful_path(tmp_path):
    """The one-query open falls back to reflection when the tables it reads are missing (older
    schemas: test_upgrades_catalog_written_by_older_schema)."""
    path = tmp_path / "c.db"
    Catalog(f"sqlite:///{path}", builtins=False)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE alembic_version")
    with pytest.raises(CatalogError, match="has zoo-like tables but no schema version"):
        Catalog(f"sqlite:///{path}")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE notes (x)")
    with pytest.raises(CatalogError, match="is a SQLite database but not a zoo catalog"):
        Catalog(f"sqlite:///{foreign}")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CatalogError, match="is not a SQLite catalog"):
        Catalog(f"sqlite:///{tmp_path / 'junk.db'}")


@pytest.mark.slow
def test_a_creation_killed_at_any_point_leaves_a_catalog_the_next_open_completes(tmp_path):
    """SIGKILL the first command at points spread over a whole creation; each next open is complete."""
    import signal
    import time

    from zoo.index import builtin_models

    create = [sys.executable, "-c", "import sys, zoo.catalog; zoo.catalog.open_catalog(sys.argv[1])"]
    started = time.monotonic()
    subprocess.run([*create, str(tmp_path / "whole.db")], check=True, timeout=300)
    whole = time.monotonic() - started
    expected = sorted(m.name for m in builtin_models())
    for i, fraction in enumerate((0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)):
        path = tmp_path / f"killed{i}.db"
        proc = subprocess.Popen([*create, str(path)], stderr=subprocess.DEVNULL)
        time.sleep(whole * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _forget_open_catalogs()
        cat = open_catalog(path)
        assert sorted(cat.names()) == expected, f"killed at {fraction:.0%} of a creation"
        assert cat.search("alexnet")[0].name == "bvlc_alexnet"
