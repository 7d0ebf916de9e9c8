"""The op table: one decorator registers each ONNX op's lowering, versioned by opset (as tf2onnx does).

A lowering is `fn(g, node, *inputs) -> Value | list[Value]`: it writes the node into the torch.fx
graph through `g` (converters.onnx_to_torch._lower.Lowering) as calls of typed functions with the
node's attributes as literals. The same lowering runs eagerly for constant folding, so an op
exists once: in the eager module, in its TorchScript form and in `supported_ops()` together.
"""
from __future__ import annotations

from collections.abc import Callable

__all__ = ["EAGER_ONLY", "LAYER_CLASSES", "OPS", "Unsupported", "eager", "layer_class", "lowering", "op"]


class Unsupported(Exception):
    """A node uses an op, attribute value or input form this converter cannot translate."""


# op type -> [(first opset it applies from, lowering)], sorted by opset.
OPS: dict[str, list[tuple[int, Callable]]] = {}
# op type -> why its lowering calls a function TorchScript cannot compile. Such a graph runs
# eagerly, traces and compiles; only torch.jit.script refuses, naming the node.
EAGER_ONLY: dict[str, str] = {}
# op type -> the OnnxLayer subclass that holds a node's weights when it needs behaviour of its own
# (BatchNorm's batch statistics while trained); others get the plain OnnxLayer.
LAYER_CLASSES: dict[str, type] = {}


def op(*names: str, since: int = 1, eager_only: str | None = None):
    """Register a lowering for ONNX op types `names`, from opset `since` until the next version.

    >>> @op("Clip", since=11)          # min and max became inputs in opset 11  # doctest: +SKIP
    ... def clip(g, node, x, low, high): ...
    """

    def register(fn: Callable) -> Callable:
        for name in names:
            versions = OPS.setdefault(name, [])
            if any(v == since for v, _ in versions):
                raise RuntimeError(f"{name} opset {since} is registered twice")
            versions.append((since, fn))
            versions.sort(key=lambda item: item[0])
            if eager_only:
                EAGER_ONLY[name] = eager_only
        return fn

    return register


def lowering(op_type: str, opset: int) -> Callable:
    """The lowering of `op_type` for a model of `opset`, or Unsupported."""
    versions = OPS.get(op_type)
    if not versions:
        raise Unsupported("")
    chosen = [fn for since, fn in versions if since <= opset]
    if not chosen:
        raise Unsupported(f"needs opset {versions[0][0]} or newer (the model has {opset})")
    return chosen[-1]


def layer_class(*names: str):
    """Register the OnnxLayer subclass that holds the weights of `names` nodes."""

    def register(cls: type) -> type:
        for name in names:
            LAYER_CLASSES[name] = cls
        return cls

    return register


def eager(fn: Callable) -> Callable:
    """Mark a run-time function TorchScript cannot compile (scripting a graph that calls it names the node)."""
    fn.__zoo_eager_only__ = True
    return fn
