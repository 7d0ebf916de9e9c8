"""A team catalog on a real PostgreSQL server: tsvector search, logins, pool settings, server errors.

The server is the throw-away cluster of conftest.py's `postgres_server`; the tests shared with
SQLite (round trips, ranking, filters, 8 writer processes, migrations) are in test_catalog.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.postgres_server import TEAM_PASSWORD, TEAM_USER

from zoo._postgres import tsquery
from zoo._redact import mask_url as masked_url
from zoo.catalog import Catalog
from zoo.errors import CatalogError
from zoo.records import Model

postgres_only = pytest.mark.parametrize("catalog_backend", ["postgresql"])


@pytest.fixture
def team_database(postgres_server):
    """A database owned by the password-protected team login."""
    name = postgres_server.create_database(owner=TEAM_USER)
    yield name
    postgres_server.drop_database(name)


# ---- search ---------------------------------------------------------------------------------

@postgres_only
def test_search_uses_the_tsvector_column_and_its_gin_index(catalog_url):
    cat = Catalog(catalog_url, builtins=False)
    cat.add_models([
        Model(name="bvlc_alexnet", framework="caffe", description="AlexNet by Krizhevsky"),
        Model(name="resnet50.caffe", framework="caffe", description="Deep residual network"),
    ])
    # Words, not substrings (LIKE would find 'lexnet' inside 'bvlc_alexnet'); prefixes of words.
    assert cat.search("lexnet") == []
    assert [m.name for m in cat.search("alex")] == ["bvlc_alexnet"]
    assert [m.name for m in cat.search("resid netw")] == ["resnet50.caffe"]
    with cat._engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(connection.exec_driver_sql(
            "EXPLAIN SELECT id FROM models WHERE search @@ to_tsquery('simple', 'alex:*')").scalars())
    assert "ix_models_search" in plan, plan


@postgres_only
def test_local_filter_probes_the_missing_files_index(catalog_url):
    """`--local` is a NOT EXISTS over files without a path: one probe of migration 0006's partial
    index per candidate, not a hash of every such artifact in the catalog."""
    from zoo.records import Artifact

    cat = Catalog(catalog_url, builtins=False)
    files = [Artifact(role="model", filename=f"n{i}.onnx", path=f"/m/n{i}.onnx" if i % 2 else None) for i in range(40)]
    cat.add_models([Model(name=f"net{i}", framework="onnx", description="squeeze net", artifacts=[files[i]])
                    for i in range(40)])
    assert {m.name for m in cat.search("squeeze", local=True, limit=None)} == {f"net{i}" for i in range(1, 40, 2)}
    with cat._engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        connection.exec_driver_sql("SET enable_hashjoin = off")
        plan = "\n".join(connection.exec_driver_sql(
            "EXPLAIN SELECT id FROM models WHERE NOT EXISTS (SELECT 1 FROM artifacts WHERE artifacts.model_id = "
            "models.id AND artifacts.role <> 'onnx' AND artifacts.path IS NULL)").scalars())
    assert "ix_artifacts_missing" in plan, plan


@postgres_only
def test_rows_written_outside_zoo_are_searchable_at_once(catalog_url):
    """The tsvector is a generated column: a bulk load with plain SQL needs no re-index."""
    cat = Catalog(catalog_url, builtins=False)
    with cat._engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO models (name, framework, tags, description, input_spec, metrics, meta) "
            "VALUES ('quokka_net', 'onnx', '[\"marsupial\"]', 'from a bulk load', '{}', '{}', '{}')")
    assert [m.name for m in cat.search("quokka")] == ["quokka_net"]
    assert [m.name for m in cat.search("marsup")] == ["quokka_net"]
    cat.rebuild_search_index()  # on PostgreSQL: fresh planner statistics after a bulk load
    assert [m.name for m in cat.search("bulk")] == ["quokka_net"]
    with cat._engine.connect() as connection:
        analyzed = connection.exec_driver_sql(
            "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL").scalars()
        assert {"models", "artifacts"} <= set(analyzed)


@postgres_only
def test_same_matches_as_sqlite_fts5_on_the_builtin_zoos(catalog_url, tmp_path):
    """Both backends find the same published models for the same query and filters."""
    pg = Catalog(catalog_url)
    lite = Catalog(f"sqlite:///{tmp_path / 'same.db'}")
    assert lite.search_mode == "fts5" and pg.count() == lite.count() > 30
    queries = [("resnet", {}), ("res", {}), ("resnet 50", {}), ("bvlc_alexnet", {}), ("vgg16", {}),
               ("inception v3", {}), ("mobile", {}), ("imagenet", {"framework": "caffe"}),
               ("flickr", {}), ("style", {"dataset": "flickr-style"}), ("mobile", {"tag": "tf-hub"}),
               ("caffe", {"source": "caffe"}), ("keras", {"local": False}), ("lexnet", {}),
               ("tf-hub", {}), ("ResNet-152", {}), (None, {"task": "image-classification"})]
    for query, filters in queries:
        expected = [m.name for m in lite.search(query, limit=None, **filters)]
        found = [m.name for m in pg.search(query, limit=None, **filters)]
        assert sorted(found) == sorted(expected), (query, filters)
        assert found or query in ("lexnet",), (query, filters)
    # An exact name, and a name as words, rank first on both.
    for query, first in (("bvlc_alexnet", "bvlc_alexnet"), ("vgg16.keras", "vgg16.keras"),
                         ("inception v3", "inception_v3.tf")):
        assert pg.search(query)[0].name == lite.search(query)[0].name == first


def test_tsquery_is_safe_and_matches_the_indexed_words():
    assert tsquery("resnet 50") == "(resnet:*) & (50:*)"
    assert tsquery("bvlc_alexnet") == "(bvlc <-> alexnet:*)"
    assert tsquery("Inception-V3") == "(inception:*) & (v3:*)"
    assert tsquery("it's a & b | !c") == "(it:*) & (s:*) & (a:*) & (b:*) & (c:*)"
    assert tsquery("!!! ___") is None


# ---- logins and credentials ---------------------------------------------------------------

def test_password_in_the_url_works_and_is_never_shown(postgres_server, team_database):
    url = postgres_server.url(team_database, TEAM_USER, TEAM_PASSWORD)
    cat = Catalog(url)
    assert cat.exists("bvlc_alexnet")  # created with the built-in zoos by the team login
    assert TEAM_PASSWORD not in repr(cat) and TEAM_PASSWORD not in cat.where
    assert "***" in repr(cat)


def test_pgpassword_and_wrong_passwords(postgres_server, team_database, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", TEAM_PASSWORD)
    assert Catalog(postgres_server.url(team_database, TEAM_USER), builtins=False).count() == 0
    monkeypatch.delenv("PGPASSWORD")
    wrong = "not-the-Pa55word"
    with pytest.raises(CatalogError) as caught:
        Catalog(postgres_server.url(team_database, TEAM_USER, wrong), builtins=False)
    message = str(caught.value)
    assert "refused the login" in message and "PGPASSWORD" in message
    assert wrong not in message and "\n" not in message


def test_cli_with_a_wrong_password_prints_one_line_without_it(postgres_server, team_database, zoo_cmd):
    wrong = "Wr0ng-secret"
    url = postgres_server.url(team_database, TEAM_USER, wrong)
    done = subprocess.run([*zoo_cmd, "search", "resnet", "--catalog", url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert wrong not in done.stderr + done.stdout and "Traceback" not in done.stderr


@postgres_only
def test_a_read_only_login_searches_and_cannot_write(catalog_url, postgres_server):
    """A team member granted SELECT only: search works; a write or a schema creation is one line."""
    Catalog(catalog_url)  # the owner creates the catalog with the built-in zoos
    database = Catalog(catalog_url)._engine.url.database
    with postgres_server.admin() as admin:
        admin.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {TEAM_USER}')
    import psycopg

    with psycopg.connect(host=str(postgres_server.folder), user="postgres", dbname=database,
                         autocommit=True) as owner:
        owner.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TEAM_USER}")
    reader = Catalog(postgres_server.url(database, TEAM_USER, TEAM_PASSWORD))
    assert reader.search("alexnet")[0].name == "bvlc_alexnet"
    with pytest.raises(CatalogError, match="permission denied.*GRANT") as caught:
        reader.add_model(Model(name="mine", framework="onnx"))
    assert "\n" not in str(caught.value) and TEAM_PASSWORD not in str(caught.value)
    assert not reader.exists("mine")
    other = postgres_server.create_database()  # owned by postgres: no CREATE for the team
    try:
        with pytest.raises(CatalogError, match="permission denied for schema public.*owner"):
            Catalog(postgres_server.url(other, TEAM_USER, TEAM_PASSWORD))
    finally:
        postgres_server.drop_database(other)


def test_masked_url():
    assert masked_url("postgresql+psycopg://ann:pw@db.example/zoo") == "postgresql+psycopg://ann:***@db.example/zoo"
    assert masked_url("postgresql://ann@db/zoo?password=pw&sslmode=require") == (
        "postgresql://***@db/zoo?password=***&sslmode=require")  # a lone user name may be a token
    assert "pw" not in masked_url("postgresql://ann:pw@[bad")
    with pytest.raises(CatalogError) as caught:  # SQLAlchemy's parse error quotes the whole URL
        Catalog("mysql+nodriver://ann:pw@host/zoo", builtins=False)
    assert ":pw@" not in str(caught.value) and "ann:***@host" in str(caught.value)


# ---- server problems: one line each -------------------------------------------------------

def test_unreachable_server_and_missing_database(postgres_server, tmp_path):
    with pytest.raises(CatalogError, match="cannot reach catalog server") as caught:
        Catalog(f"postgresql://ann:pw@/zoo?host={tmp_path}", builtins=False)
    assert "\n" not in str(caught.value) and ":pw@" not in str(caught.value)
    with pytest.raises(CatalogError, match="cannot reach catalog server .*nohost.invalid"):
        Catalog("postgresql://ann:pw@nohost.invalid/zoo", builtins=False)
    with pytest.raises(CatalogError, match="createdb no_such_db"):
        Catalog(postgres_server.url("no_such_db"), builtins=False)


def test_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(CatalogError, match=r"pip install 'zoo\[postgres\]'") as caught:
        Catalog("postgresql://ann:pw@/zoo?host=/nowhere", builtins=False)
    assert ":pw@" not in str(caught.value)


# ---- pool ---------------------------------------------------------------------------------

@postgres_only
def test_pool_settings_from_the_environment(catalog_url, monkeypatch):
    monkeypatch.setenv("ZOO_POOL_SIZE", "2")
    monkeypatch.setenv("ZOO_POOL_MAX_OVERFLOW", "0")
    # A plain postgresql:// URL means psycopg 3 (zoo[postgres]), not psycopg2.
    cat = Catalog(catalog_url.replace("postgresql+psycopg://", "postgresql://"), builtins=False)
    assert cat._engine.dialect.driver == "psycopg"
    assert cat._engine.pool.size() == 2 and cat._engine.pool._max_overflow == 0
    assert cat._engine.pool._pre_ping
    monkeypatch.setenv("ZOO_POOL_SIZE", "many")
    with pytest.raises(CatalogError, match="ZOO_POOL_SIZE='many' is not a whole number"):
        Catalog(catalog_url, builtins=False)


@postgres_only
def test_pooled_connections_survive_a_server_side_disconnect(catalog_url, postgres_server):
    """pool_pre_ping: a connection the server closed (restart, idle timeout) is replaced, not an error."""
    cat = Catalog(catalog_url, builtins=False)
    cat.add_model(Model(name="kept", framework="onnx"))
    assert cat.names() == ["kept"]
    database = cat._engine.url.database
    with postgres_server.admin() as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()[0]
    assert killed >= 1
    assert cat.names() == ["kept"]


def test_install_script_is_idempotent(postgres_server):
    """With the binaries there (the server runs), scripts/postgres.sh changes nothing and succeeds."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["bash", str(root / "scripts" / "postgres.sh")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stderr
