"""PyTorch to ONNX: TorchScript archives and in-memory nn.Modules, via torch.onnx.export.

A `.pt` file is only ever read with ``torch.jit.load`` (TorchScript) or, to explain a refusal,
``torch.load(weights_only=True)``: unpickling arbitrary objects from a downloaded file can run
any code, so a pickled full model is refused with the way to re-export it.

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter needs
onnxscript, which zoo does not depend on, and cannot trace a ScriptModule anyway.
"""
from __future__ import annotations

import io
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from converters import onnx_model as ox
from converters.report import Conversion, ConversionReport
from zoo.errors import ConversionError, ModelFormatError, UnsupportedLayerError, require

if TYPE_CHECKING:
    import torch

DEFAULT_INPUT_SHAPE = (None, 3, 224, 224)  # used when neither the caller nor the module's weights tell


def load_torchscript(path: str | os.PathLike):
    """Load a TorchScript archive, or raise ModelFormatError saying what the file is instead."""
    torch = require("torch", "torch")
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(
            f"{path} is not a TorchScript archive (not a zip file); export the model with "
            f"torch.jit.script(model).save(path) or torch.onnx.export"
        )
    with zipfile.ZipFile(path) as archive:
        if not any(n.endswith(("data.pkl", "constants.pkl")) for n in archive.namelist()):
            raise ModelFormatError(
                f"{path} is a zip archive but not a PyTorch file (no data.pkl or constants.pkl in it)"
            )
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError:
        pass
    raise ModelFormatError(f"{path} is not TorchScript: {_what_it_is(path)}")


def _what_it_is(path: str) -> str:
    """Explain a non-TorchScript .pt without unpickling anything but tensors."""
    import pickle

    torch = require("torch", "torch")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        return (
            "it is a pickled Python object (for example torch.save(model)), and zoo never unpickles "
            "arbitrary objects from a file because unpickling can run any code; re-export it with "
            "torch.jit.script(model).save(path)"
        )
    if isinstance(data, dict):
        keys = [k for k in data if isinstance(k, str)][:3]
        return (
            f"it is a state_dict ({len(data)} entries such as {', '.join(keys)}): weights without "
            f"the architecture, which is Python code; build the model in Python, load_state_dict() "
            f"and call converters.pytorch.convert_module(model, input_shape=...)"
        )
    return (f"it holds a {type(data).__name__}, not a model; export the model with "
            f"torch.jit.script(model).save(path)")


def guess_input_shape(module) -> list[int | None]:
    """An input shape from the first weight: a conv's input channels, a linear layer's features."""
    for param in module.parameters():
        if param.dim() == 4:
            return [None, int(param.shape[1]), DEFAULT_INPUT_SHAPE[2], DEFAULT_INPUT_SHAPE[3]]
        if param.dim() == 2:
            return [None, int(param.shape[1])]
        break
    return list(DEFAULT_INPUT_SHAPE)


def convert_torchscript(
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int | None] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    verify: bool = True,
) -> Conversion:
    """Convert a TorchScript `.pt` archive; `input_shape` (None for dynamic dims) defaults to a guess."""
    start = time.perf_counter()
    module = load_torchscript(path)
    conversion = convert_module(module, input_shape=input_shape, opset=opset, verify=verify,
                                source_files=[os.fspath(path)], source_format="torchscript")
    conversion.report.seconds = time.perf_counter() - start
    return conversion


def convert_module(
    module: torch.nn.Module,
    *,
    input_shape: Sequence[int | None] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    verify: bool = True,
    source_files: Sequence[str] = (),
    source_format: str = "pytorch",
) -> Conversion:
    """Convert an nn.Module (or ScriptModule) taking one float tensor, with a dynamic batch axis.

    >>> conversion = convert_module(torchvision.models.resnet18(), input_shape=[None, 3, 224, 224])  # doctest: +SKIP
    """
    import onnx

    torch = require("torch", "torch")
    start = time.perf_counter()
    module = module.eval()
    shape = list(input_shape) if input_shape else guess_input_shape(module)
    layout = "NCHW" if len(shape) == 4 else ox.layout_of(shape, None)
    feeds = ox.sample_inputs([("input", [None, *shape[1:]], "float32")], layout="NCHW")
    example = torch.from_numpy(feeds["input"])
    with torch.no_grad():
        try:
            reference = module(example)
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            raise ConversionError(
                f"the module fails on an input of shape {list(example.shape)} ({str(exc)[:200]}); "
                f"give its input shape with input_shape=[None, C, H, W]"
            ) from None
    outputs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    axes = {name: {0: ox.BATCH} for name in ["input", *output_names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy-exporter notice; it is the right exporter here
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=output_names, dynamic_axes=axes)
        except Exception as exc:  # noqa: BLE001 torch.onnx.errors.UnsupportedOperatorError and friends
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UnsupportedLayerError(
                f"torch.onnx.export cannot convert this module at opset {opset}: {message}; "
                f"a higher --opset may help"
            ) from None
    model = onnx.load_from_string(buffer.getvalue())
    report = ConversionReport(
        source_format=source_format,
        source_files={os.fspath(f): ox.file_sha256(f) for f in source_files},
        converter=f"torch.onnx.export {torch.__version__} (TorchScript-based)",
        versions={"torch": torch.__version__, "onnx": onnx.__version__},
        opset=opset,
        input_layout=layout,
    )
    report.notes += ox.make_batch_dynamic(model)
    model = ox.check(model)
    report.opset = ox.opset_of(model)
    if verify:
        ox.verify(report, model, feeds, [o.detach().numpy() for o in outputs], f"torch {torch.__version__}")
    report.seconds = time.perf_counter() - start
    return Conversion(model, report)


def convert(path: str | os.PathLike, **options: Any) -> Conversion:
    """Convert a PyTorch model file (TorchScript only; see the module docstring)."""
    return convert_torchscript(path, **options)


__all__ = ["convert", "convert_module", "convert_torchscript", "guess_input_shape", "load_torchscript"]
