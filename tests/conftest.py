"""Shared fixtures: every test gets its own catalog and cache in a temp folder (offline by default)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers.formats import model_files
from helpers.postgres_server import start_server

# Fixtures defined beside their helpers: fault_server and second_server (a real HTTP server on
# 127.0.0.1), tf_models and torch_models (tiny real models in every source format, built once).
pytest_plugins = ["helpers.http_server", "helpers.hub_server", "helpers.convert"]


@pytest.fixture(autouse=True)
def zoo_env(tmp_path, monkeypatch):
    """Point the catalog and the cache at a temp folder so no test touches the user's files."""
    home = tmp_path / "zoo-home"
    home.mkdir()
    monkeypatch.setenv("ZOO_CATALOG", str(home / "catalog.db"))
    monkeypatch.setenv("ZOO_CACHE", str(home / "cache"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("ZOO_TOKEN", raising=False)
    monkeypatch.setenv("NETRC", str(home / "no-netrc"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    return home


@pytest.fixture
def zoo_cmd():
    """The `zoo` console script of this environment, for subprocess tests."""
    return [str(Path(sys.executable).with_name("zoo"))]


@pytest.fixture(scope="session")
def light() -> dict[str, Path]:
    """Tiny real model files (onnx, Caffe pair, TorchScript, torch checkpoint), built once; copy before changing."""
    return model_files("light")


@pytest.fixture(scope="session")
def tf_files() -> dict[str, Path]:
    """Tiny real TensorFlow model files (keras, h5, h5_weights, frozen_graph, saved_model, tflite)."""
    return model_files("tensorflow")


# ---- catalog backends: SQLite and a real PostgreSQL server -------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster for the session (installed if missing; fails under CI=true)."""
    try:
        server = start_server()
    except Exception as error:
        message = f"no PostgreSQL server for the catalog tests: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_backend(request) -> str:
    return request.param


@pytest.fixture
def catalog_url(catalog_backend, zoo_env, request):
    """A new, empty catalog URL on each backend: the test's SQLite file, or a fresh PG database."""
    if catalog_backend == "sqlite":
        yield f"sqlite:///{zoo_env / 'catalog.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    url = server.url(name)
    yield url
    from zoo.catalog import REGISTRY

    REGISTRY.close(url)
    server.drop_database(name)


@pytest.fixture
def catalog_env(catalog_url, monkeypatch) -> str:
    """Run the test with $ZOO_CATALOG on each backend (modules opt in with usefixtures)."""
    monkeypatch.setenv("ZOO_CATALOG", catalog_url)
    return catalog_url
