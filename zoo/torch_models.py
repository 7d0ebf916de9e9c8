"""Save a torch module as the user's own catalog model: export to ONNX, check it, write it, register it.

`zoo train` (`zoo.transfer.save_model`) and `zoo pretrain --name` (`zoo.pretraining.save`) both end
here, so a trained model is exported, checked and registered the same way whichever made it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.atomic import write_atomic
from zoo.cache import model_folder
from zoo.errors import DuplicateModelError, InputError, ZooError
from zoo.records import Artifact, Model, check_name

if TYPE_CHECKING:
    import onnx

    from zoo.catalog import Catalog
    from zoo.lineage import Lineage

OPSET = 17
TOLERANCE = 1e-4  # of the output's scale: the ONNX model must match torch this closely


def check_new_name(name: str, catalog: str | os.PathLike | Catalog | None, replace: bool,
                   example: str = "my-base") -> None:
    """Refuse a bad or taken name before the work that makes the model, not after minutes of it."""
    check_name(name, InputError, example)
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    known = cat.get(name) if cat.exists(name) else None
    if replace and known is not None and known.source != "local":
        # a published model (a zoo's or a source's) is never replaced by one's own: its next sync would clash
        raise DuplicateModelError(f"model {name!r} is in the catalog from source {known.source!r}; replace only "
                                  "replaces your own models, so pick another name")
    if not replace and known is not None:
        raise DuplicateModelError(
            f"model {name!r} is already in the catalog; pick another name or replace it "
            "(replace=True, or --replace on the command line)"
        )


def export_onnx(module: Any, input_shape: Sequence[int], *, output_name: str = "logits",
                opset: int = OPSET) -> onnx.ModelProto:
    """`module` as ONNX (input ``input``, dynamic batch), checked against torch on another batch size."""
    import onnxruntime as ort
    import torch

    from converters.pytorch import export

    module.eval()
    example = torch.zeros(2, *input_shape)
    model = export(module, (example,), input_names=["input"], output_names=[output_name],
                   dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}}, opset=opset)
    probe = torch.from_numpy(np.random.default_rng(0).standard_normal((3, *input_shape)).astype(np.float32))
    with torch.no_grad():
        expected = module(probe).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": probe.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    if not np.allclose(got, expected, atol=TOLERANCE * scale):
        raise ZooError(f"the ONNX export of the model differs from torch by {np.abs(got - expected).max():.3g}")
    return model


def model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a saved model's ONNX file goes unless the caller names a path."""
    return model_folder(name, cache_dir) / f"{name}.onnx"


def own_model(name: str, module: Any, **fields: Any) -> Model:
    """The catalog record of a model zoo made from `module`: an ONNX model of source "local".

    `fields` are the rest of the `Model` (task, description, input, meta...); the parameter count
    is the module's.
    """
    parameters = int(sum(p.numel() for p in module.parameters()))
    return Model(name=name, framework="onnx", format="onnx", source="local", parameters=parameters, **fields)


def register(model: onnx.ModelProto, record: Model, *, catalog: str | os.PathLike | Catalog | None = None,
             path: str | os.PathLike | None = None, replace: bool = False,
             cache_dir: str | os.PathLike | None = None, lineage: Lineage | None = None) -> Model:
    """Write `model` (atomically) and add `record` to the catalog with the file as its "model" artifact.

    `lineage` (how the model was made; its sha256 is set here) goes in the artifact's meta.
    """
    from dataclasses import replace as _replace

    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    check_new_name(record.name, cat, replace)
    if path is None:
        from zoo.store import Store

        Store(cache_dir).ensure()  # as fetch does: a new cache is marked new before its first file
    target = Path(path) if path else model_path(record.name, cache_dir)
    content = model.SerializeToString()
    write_atomic(target, content)
    sha256 = hashlib.sha256(content).hexdigest()
    meta = {}
    if lineage is not None:
        lineage.sha256 = sha256
        meta["lineage"] = lineage.to_dict()
    artifact = Artifact(role="model", filename=target.name, path=str(target.absolute()), size=len(content),
                        sha256=sha256, checksum=None, meta=meta)
    return cat.add_model(_replace(record, artifacts=[artifact]), replace=replace)


__all__ = ["check_new_name", "export_onnx", "model_path", "own_model", "register"]
