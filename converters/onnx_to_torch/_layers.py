"""The modules a converted graph holds: one per source layer's weights, and the small training-time ones."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from converters.onnx_to_torch._graph import LayerSpec, Node


class OnnxLayer(nn.Module):
    """The weights of one source layer: an ONNX node and the bias Add/Sub that only follows it.

    The graph reads them as `conv1.weight`, `conv1.bias`. `onnx_name` is the node's name in the
    source graph, `layer_name` the layer `zoo layers` lists it under, `onnx_nodes` every node the
    weights serve and `onnx_inputs` maps each parameter or buffer to the ONNX tensor it came from.
    """

    __jit_unused_properties__ = ["trainable"]  # torch.jit.script compiles properties otherwise

    def __init__(self, spec: LayerSpec, node: Node):
        super().__init__()
        self.onnx_name = spec.name
        self.layer_name = spec.layer_name
        self.op_type = spec.op_type
        self.onnx_nodes = list(spec.nodes)
        self.onnx_inputs = {**spec.params, **spec.buffers}

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def extra_repr(self) -> str:
        return f"{self.op_type} {' + '.join(map(repr, self.onnx_nodes))}"


class DropoutGate(nn.Module):
    """ONNX Dropout: the identity, except in train mode below a trainable layer (`active`).

    A frozen module is deterministic in either mode; dropout regularises only what is trained.
    OnnxModule sets `active` before each training-mode forward.
    """

    def __init__(self, ratio: float, position: int):
        super().__init__()
        self.ratio = float(ratio)
        self.position = position  # how many weight layers come before it in graph order
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.active and self.ratio > 0.0:
            return F.dropout(x, self.ratio, True)
        return x

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"
