"""zoo's home: ZOO_HOME, project catalogs found from a sub-folder, `zoo --where`, and reads that never
create a catalog (real files, the real CLI)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zoo.catalog import REGISTRY, open_catalog
from zoo.cli import cli
from zoo.config import catalog_location


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No ZOO_CATALOG / ZOO_CACHE: zoo decides from ZOO_HOME and the working folder."""
    monkeypatch.delenv("ZOO_CATALOG", raising=False)
    monkeypatch.delenv("ZOO_CACHE", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield tmp_path / "home"
    REGISTRY.close_all()


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def test_without_a_project_the_catalog_and_cache_live_in_zoo_home(home, tmp_path):
    where = catalog_location()
    assert where.kind == "home" and where.path == home / "catalog.db"
    out = run("--where")
    assert out.exit_code == 0
    assert f"catalog:      {home / 'catalog.db'}" in out.stdout and "ZOO_HOME" in out.stdout
    assert f"cache:        {home / 'cache'}" in out.stdout
    assert "exists: no" in out.stdout  # --where itself creates nothing
    assert not home.exists()
    assert run("rm", "bvlc_alexnet").exit_code == 0  # a write creates the home and its catalog
    assert (home / "catalog.db").is_file()


def test_zoo_init_makes_a_project_catalog_found_from_a_sub_folder(home, tmp_path, monkeypatch):
    project = tmp_path / "work"
    made = run("init", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout) == {"catalog": str(project / "catalog.db"), "created": True,
                                       "models": open_catalog(project / "catalog.db").count()}
    deeper = project / "src" / "models"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)
    where = catalog_location()
    assert (where.kind, where.path) == ("project", project / "catalog.db")
    assert run("rm", "bvlc_alexnet").exit_code == 0  # writes go to the project's catalog
    assert not open_catalog(project / "catalog.db").exists("bvlc_alexnet")
    assert not (home / "catalog.db").exists() and not (deeper / "catalog.db").exists()
    paths = json.loads(run("info", "--paths", "--json").stdout)
    assert paths["catalog"]["kind"] == "project" and paths["catalog"]["path"] == str(project / "catalog.db")
    assert "found from " + str(deeper) in paths["catalog"]["why"]
    # ZOO_CATALOG and --catalog still win over the project's
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "elsewhere.db"))
    assert catalog_location().kind == "env"
    assert catalog_location(tmp_path / "given.db").kind == "given"
    again = run("init", str(project))
    assert again.exit_code == 0 and "found the project catalog" in again.stdout and "ZOO_CATALOG is set" in again.stdout


@pytest.mark.parametrize("command", [["search", "resnet"], ["info", "bvlc_alexnet"], ["list"],
                                     ["source", "list"], ["search", "--local"]])
def test_read_only_commands_never_create_a_catalog(home, tmp_path, command):
    given = tmp_path / "work" / "given.db"
    for extra in ([], ["--catalog", str(given)]):
        out = run(*command, *extra)
        assert out.exit_code == 0, out.output
    assert not home.exists() and not given.exists()
    assert not list((tmp_path / "work").iterdir())
    if command[0] == "search" and command[1] == "resnet":  # the built-in zoos are still there to read
        assert "resnet50.caffe" in out.stdout


def test_layers_of_a_file_does_not_create_a_catalog(home, tmp_path, light):
    out = run("layers", str(light["onnx"]))
    assert out.exit_code == 0, out.output
    assert not (home / "catalog.db").exists()  # the cache may remember the file's hash; no catalog


def test_a_catalog_in_a_missing_folder_is_one_line_and_creates_nothing(home, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "no" / "such" / "dir" / "c.db"))
    for command in (["search", "resnet"], ["rm", "x"], ["fetch", "x"]):
        out = run(*command)
        assert out.exit_code == 1
        assert out.stderr.strip().splitlines() == [
            f"error: catalog {tmp_path / 'no/such/dir/c.db'}: its folder {tmp_path / 'no/such/dir'} does not "
            f"exist; create it first (mkdir -p {tmp_path / 'no/such/dir'}) or point --catalog / ZOO_CATALOG at "
            "a file in an existing folder"]
    assert not (tmp_path / "no").exists()
    missing = run("init", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr and not (tmp_path / "nope").exists()


def test_a_zoo_home_that_is_a_file_is_one_line(tmp_path, zoo_cmd, light):
    """A fresh `zoo add` with ZOO_HOME naming a file: one line naming it, not an internal error."""
    import os
    import subprocess

    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {**os.environ, "ZOO_HOME": str(home)}
    for variable in ("ZOO_CATALOG", "ZOO_CACHE"):
        env.pop(variable, None)
    out = subprocess.run([*zoo_cmd, "add", str(light["onnx"])], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"error: a path zoo was given or uses is not usable (File exists: {home}); check the paths given and "
        "--cache-dir / ZOO_CACHE / ZOO_CATALOG / ZOO_HOME"), out.stderr


def test_a_catalog_server_url_with_a_bad_port_is_one_line(zoo_cmd):
    """A fresh `zoo list` with ZOO_CATALOG=postgresql://h:x/db (no port number): one line, no internal error."""
    import os
    import subprocess

    env = {**os.environ, "ZOO_CATALOG": "postgresql://u:secret@h:x/db"}
    out = subprocess.run([*zoo_cmd, "list"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: cannot open catalog 'postgresql://u:***@h:x/db': it is not a URL of a catalog server (invalid "
        "literal for int() with base 10: 'x'); write it like postgresql://HOST:5432/DATABASE"), out.stderr
