"""Global pooling as a torch module, placed between a cut base and its head (see zoo.pooling)."""
from __future__ import annotations

# torch at module level is deliberate: this module is a torch layer and nothing else, and only
# zoo.pooling.pool_module imports it, from inside the function; `import zoo` never reaches it.
from typing import List

import torch
from torch import nn


class GlobalPool(nn.Module):
    """Mean ("avg") or max ("max") over the given spatial axes of a 4-D batch; 2-D passes through."""

    def __init__(self, pooling: str, axes: List[int]) -> None:
        super().__init__()
        self.average = pooling == "avg"
        self.axes = [int(a) for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x
        if self.average:
            return x.mean(dim=self.axes)
        return x.amax(dim=self.axes)

    def extra_repr(self) -> str:
        return f"{'avg' if self.average else 'max'}, axes={self.axes}"
