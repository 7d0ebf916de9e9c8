"""Feature standardization as a torch module: the first layer of a head zoo trains (see zoo.transfer)."""
from __future__ import annotations

# torch at module level is deliberate, as in zoo/_global_pool.py: this module is a torch layer and
# nothing else, imported only from inside zoo.transfer's functions; `import zoo` never reaches it.
import torch
from torch import nn


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with the mean and std of the training rows.

    Made unfitted (mean 0, std 1); `zoo.fit_head` measures the rows that reach it before the first
    epoch and stores them as buffers, so they are saved, exported to ONNX and never trained. A
    feature that does not vary keeps a std of 1 (it is only centred).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("inv_std", torch.ones(width))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, total: torch.Tensor, squares: torch.Tensor, count: int) -> None:
        """Set the mean and std from per-feature sums and sums of squares (float64) over `count` rows."""
        mean = total / max(count, 1)
        var = (squares / max(count, 1) - mean**2).clamp_min(0)
        std = var.sqrt()
        std = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.inv_std.copy_((1.0 / std).to(self.inv_std.dtype))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std

    def extra_repr(self) -> str:
        return f"{self.mean.numel()}, fitted={bool(self.fitted)}"
