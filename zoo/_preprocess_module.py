"""A model's input preprocessing as a torch module, placed before a converted base (see zoo.images)."""
from __future__ import annotations

# torch at module level is deliberate: this module is a torch layer and nothing else, and only
# zoo.images.preprocess_module imports it, from inside the function; `import zoo` never reaches it.
from typing import List, Optional

import torch
from torch import nn


class Preprocess(nn.Module):
    """Raw pixels (N, H, W, C), RGB, 0-255 -> the model's input, as zoo.images.preprocess does it.

    The pixels move onto the spec's pixel range, channels are reordered (BGR nets), then
    ``(x * scale - mean) / std`` per channel, and the batch is laid out as the model takes it
    (NCHW or NHWC). The images must already have the net's height and width (zoo.images resizes
    and crops files before this).
    """

    def __init__(self, layout: Optional[str], channel_order: Optional[str], scale: Optional[float],
                 mean: Optional[List[float]], std: Optional[List[float]], pixel_range: Optional[List[float]]):
        super().__init__()
        low, high = pixel_range or [0.0, 255.0]
        self.range_scale = float((high - low) / 255.0)
        self.range_offset = float(low)
        self.nchw = layout != "NHWC"
        self.bgr = channel_order == "BGR"
        self.scale = 1.0 if scale is None else float(scale)
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"preprocessing takes a batch of images (N, H, W, C), got {x.dim()} dimensions")
        x = x.to(torch.float32)
        if self.range_scale != 1.0 or self.range_offset != 0.0:
            x = x * self.range_scale + self.range_offset
        if self.bgr:
            x = x.flip(-1)
        x = (x * self.scale - self.mean) / self.std
        if self.nchw:
            x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return x

    def extra_repr(self) -> str:
        return f"{'NCHW' if self.nchw else 'NHWC'}{', BGR' if self.bgr else ''}, scale={self.scale}"
