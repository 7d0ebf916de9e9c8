"""Published nets the tests run on: Caffe zoo prototxts (carried, else from shared/) and onnx's light models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The whole Caffe Model Zoo set, when a copy of shared/ lies beside the checkout (it does in CI).
CAFFE_MODELS = ROOT.parent / "shared" / "caffe" / "models"
# The few nets the project carries itself, so the suite passes on a fresh clone with nothing beside it.
CARRIED_CAFFE_MODELS = ROOT / "tests" / "data" / "caffe"


def without_shared(reason: str, *, module: bool = False) -> None:
    """Skip a test that needs shared/ when it is not there; under CI=true (which has it) fail instead,
    as the PostgreSQL tests do, so a CI run cannot pass over them unnoticed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, where shared/ must be there")
    pytest.skip(reason, allow_module_level=module)


def caffe_net(name: str) -> Path:
    """The deploy.prototxt of a Caffe zoo net: carried by the project, else from shared/, else skip."""
    for folder in (CARRIED_CAFFE_MODELS, CAFFE_MODELS):
        prototxt = folder / name / "deploy.prototxt"
        if prototxt.is_file():
            return prototxt
    without_shared(f"Caffe zoo net {name!r} needs {CAFFE_MODELS} (shared/ beside the checkout)")


def caffe_zoo_nets() -> list[str]:
    """Names of the shared Caffe zoo nets, empty on a fresh clone with no shared/ beside it."""
    return sorted(p.parent.name for p in CAFFE_MODELS.glob("*/deploy.prototxt"))


def onnx_light_models() -> Path:
    """Folder of real zoo architectures (with reference outputs) shipped inside the onnx package."""
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
