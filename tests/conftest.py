"""Shared fixtures: every test gets its own catalog and cache in a temp folder (offline by default)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The whole Caffe Model Zoo set, when a copy of shared/ lies beside the checkout (it does in CI).
CAFFE_MODELS = ROOT.parent / "shared" / "caffe" / "models"
# The few nets the project carries itself, so the suite passes on a fresh clone with nothing beside it.
CARRIED_CAFFE_MODELS = ROOT / "tests" / "data" / "caffe"


def caffe_net(name: str) -> Path:
    """The deploy.prototxt of a Caffe zoo net: carried by the project, else from shared/, else skip."""
    for folder in (CARRIED_CAFFE_MODELS, CAFFE_MODELS):
        prototxt = folder / name / "deploy.prototxt"
        if prototxt.is_file():
            return prototxt
    pytest.skip(f"Caffe zoo net {name!r} needs {CAFFE_MODELS} (shared/ beside the checkout)")


def caffe_zoo_nets() -> list[str]:
    """Names of the shared Caffe zoo nets, empty on a fresh clone with no shared/ beside it."""
    return sorted(p.parent.name for p in CAFFE_MODELS.glob("*/deploy.prototxt"))


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


def onnx_light_models() -> Path:
    """Folder of real zoo architectures (with reference outputs) shipped inside the onnx package."""
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


# ---- catalog backends: SQLite and a real PostgreSQL server -------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster for the session (installed if missing; fails under CI=true)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _postgres_server

    try:
        server = _postgres_server.start_server()
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
    from zoo import catalog

    opened = catalog._OPEN.pop(url, None)
    if opened is not None:
        opened.close()
    server.drop_database(name)


@pytest.fixture
def catalog_env(catalog_url, monkeypatch) -> str:
    """Run the test with $ZOO_CATALOG on each backend (modules opt in with usefixtures)."""
    monkeypatch.setenv("ZOO_CATALOG", catalog_url)
    return catalog_url
