"""ONNX graph -> `torch.nn.Module` whose weights are frozen `nn.Parameter`s, grouped per source layer."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from converters.onnx_to_torch._module import OnnxModule

__all__ = ["OnnxLayer", "OnnxModule", "eager_only_ops", "supported_ops", "to_torch"]


def to_torch(model: onnx.ModelProto | str | Path, *, compile: bool | dict = False,
             pooling: nn.Module | None = None, preprocess: nn.Module | None = None,
             preprocess_input: str | None = None) -> Any:
    """Build a frozen `OnnxModule` from an ONNX model (a ModelProto or a .onnx path).

    Every op is checked at conversion time: unsupported ops raise `zoo.errors.UnsupportedLayerError`
    naming all of them and their nodes. Constant subgraphs are evaluated once; shape arithmetic that
    depends on the input (tf2onnx's Shape/Gather/Concat/Reshape) runs on the live tensors, so any
    batch size works.

    The module takes the graph inputs in order or by name (`net(ids, attention_mask=mask)`) and
    returns one tensor, or a tuple in `output_names` order for several outputs. Submodules are
    named like `zoo layers` lists the layers. `torch.save`, `torch.jit.trace`, `torch.jit.script`,
    `torch.export` and `torch.compile` work on it; `compile=True` returns it `torch.compile`d
    (a dict: the options, e.g. `{"mode": "max-autotune"}`).
    `pooling` and `preprocess` are modules run after every output and before the first input (or
    `preprocess_input`): `Extractor.to_torch` passes the extractor's global pooling and input
    preprocessing.

    >>> net = to_torch("squeezenet_v1.1.onnx")  # doctest: +SKIP
    >>> net.unfreeze(1).trainable_layers()  # doctest: +SKIP
    ['conv10']
    """
    from zoo.errors import require

    require("torch", "torch")
    from converters.onnx_to_torch import _passes
    from converters.onnx_to_torch._graph import load, parse
    from converters.onnx_to_torch._module import OnnxModule

    graph = _passes.run(parse(load(model)))
    module = OnnxModule(graph, preprocess=preprocess, pooling=pooling, preprocess_input=preprocess_input)
    module = module.freeze().eval()
    if compile:
        import torch

        return torch.compile(module, **(compile if isinstance(compile, dict) else {}))
    return module


def supported_ops() -> list[str]:
    """ONNX op types (default domain) this converter translates, from its op table."""
    from converters.onnx_to_torch._lower import ops  # noqa: F401 - registers them
    from converters.onnx_to_torch._registry import OPS

    return sorted(OPS)


def eager_only_ops() -> dict[str, str]:
    """Op types whose converted form runs eagerly (and traces, exports, compiles) but has no
    TorchScript form, each with the reason."""
    from converters.onnx_to_torch._lower import ops  # noqa: F401 - registers them
    from converters.onnx_to_torch._registry import EAGER_ONLY

    return dict(EAGER_ONLY)


def __getattr__(name: str):
    # The classes subclass torch.nn.Module: import torch only when someone asks for them.
    if name == "OnnxModule":
        from converters.onnx_to_torch import _module

        return _module.OnnxModule
    if name == "OnnxLayer":
        from converters.onnx_to_torch import _layers

        return _layers.OnnxLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
