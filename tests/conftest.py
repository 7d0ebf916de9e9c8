"""Shared fixtures: every test gets its own catalog and cache in a temp folder (offline by default)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CAFFE_MODELS = SHARED / "caffe" / "models"


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
