"""ONNX graph -> `torch.nn.Module` whose weights are frozen `nn.Parameter`s, grouped per source layer."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from converters.onnx_to_torch._module import OnnxLayer, OnnxModule

__all__ = ["OnnxLayer", "OnnxModule", "supported_ops", "to_torch"]


def to_torch(model: onnx.ModelProto | str | Path) -> OnnxModule:
    """Build a frozen `OnnxModule` from an ONNX model (a ModelProto or a .onnx path).

    Every op is checked at conversion time: unsupported ops raise `zoo.errors.UnsupportedLayerError`
    naming all of them and their nodes. Constant subgraphs are evaluated once; shape arithmetic that
    depends on the input (tf2onnx's Shape/Gather/Concat/Reshape) runs on the live tensors, so any
    batch size works.

    The module takes the graph inputs in order or by name (`net(ids, attention_mask=mask)`) and
    returns one tensor, or a tuple in `output_names` order for several outputs. Submodules are
    named like `zoo layers` lists the layers. `torch.save`, `torch.jit.trace` and
    `torch.jit.script` (which compiles `net.scriptable()`, the inference graph) work on it.

    >>> net = to_torch("squeezenet_v1.1.onnx")  # doctest: +SKIP
    >>> net.unfreeze(top=1).trainable_layers()  # doctest: +SKIP
    ['conv10']
    """
    from zoo.errors import require

    require("torch", "torch")
    from converters.onnx_to_torch._graph import load, parse
    from converters.onnx_to_torch._module import OnnxModule

    module = OnnxModule(parse(load(model)))
    return module.freeze().eval()


def supported_ops() -> list[str]:
    """ONNX op types (default domain) this converter translates."""
    from converters.onnx_to_torch._ops import OPS

    return sorted(OPS)


def __getattr__(name: str):
    # The classes subclass torch.nn.Module: import torch only when someone asks for them.
    if name in ("OnnxModule", "OnnxLayer"):
        from converters.onnx_to_torch import _module

        return getattr(_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
