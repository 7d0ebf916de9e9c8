"""Detection and sampling: NonMaxSuppression, GridSample, AffineGrid, Col2Im."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._registry import Unsupported, op


def _iou(boxes: Tensor, centre: bool) -> Tensor:
    """Pairwise intersection over union of [N, 4] boxes ([y1, x1, y2, x2] in any corner order, or centred)."""
    if centre:
        x0, y0 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
        x1, y1 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    else:
        y0, y1 = torch.minimum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 0], boxes[:, 2])
        x0, x1 = torch.minimum(boxes[:, 1], boxes[:, 3]), torch.maximum(boxes[:, 1], boxes[:, 3])
    width = (torch.minimum(x1.unsqueeze(1), x1.unsqueeze(0)) - torch.maximum(x0.unsqueeze(1), x0.unsqueeze(0)))
    height = (torch.minimum(y1.unsqueeze(1), y1.unsqueeze(0)) - torch.maximum(y0.unsqueeze(1), y0.unsqueeze(0)))
    inter = width.clamp(min=0) * height.clamp(min=0)
    area = (x1 - x0) * (y1 - y0)
    union = area.unsqueeze(1) + area.unsqueeze(0) - inter
    ok = (inter > 0) & (area.unsqueeze(1) > 0) & (area.unsqueeze(0) > 0) & (union > 0)
    return torch.where(ok, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(inter))


def non_max_suppression(boxes: Tensor, scores: Tensor, max_out: Optional[Tensor], iou: Optional[Tensor],
                        threshold: Optional[Tensor], centre: bool) -> Tensor:
    """Greedy NMS per batch and class, as onnxruntime: [selected, 3] rows of (batch, class, box)."""
    limit = int(max_out.reshape(-1)[0].item()) if max_out is not None and max_out.numel() > 0 else 0
    iou_limit = float(iou.reshape(-1)[0].item()) if iou is not None and iou.numel() > 0 else 0.0
    rows: List[List[int]] = []
    for b in range(boxes.shape[0]):
        overlaps = _iou(boxes[b].double(), centre)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            # Highest score first; equal scores in box order.
            order = torch.sort(-s.double(), stable=True)[1]
            if threshold is not None and threshold.numel() > 0:
                order = order[s[order] > threshold.reshape(-1)[0]]
            chosen: List[int] = []
            candidates: List[int] = order.tolist()
            for i in candidates:
                if len(chosen) >= limit:
                    break
                keep = True
                for j in chosen:
                    if float(overlaps[i, j]) > iou_limit:
                        keep = False
                        break
                if keep:
                    chosen.append(i)
                    rows.append([b, c, i])
    if len(rows) == 0:
        return torch.zeros([0, 3], dtype=torch.int64)
    return torch.tensor(rows, dtype=torch.int64)


@op("NonMaxSuppression", since=10)
def _nms(g, node, boxes, scores, max_out=None, iou=None, threshold=None):
    def given(v):
        return v if v is not None and v.present else None

    return g.call(non_max_suppression, boxes, scores, given(max_out), given(iou), given(threshold),
                  bool(node.attr("center_point_box", 0)))


def grid_sample(x: Tensor, grid: Tensor, mode: str, padding: str, align: bool) -> Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode, padding, align)


@op("GridSample", since=16)
def _grid_sample(g, node, x, grid):
    mode = node.attr("mode", "bilinear" if node.opset < 20 else "linear")
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    padding = node.attr("padding_mode", "zeros")
    if mode not in ("bilinear", "nearest", "bicubic") or padding not in ("zeros", "border", "reflection"):
        raise Unsupported(f"mode={mode!r}, padding_mode={padding!r}")
    return g.call(grid_sample, x, grid, mode, padding, bool(node.attr("align_corners", 0)))


def affine_grid(theta: Tensor, size: Tensor, align: bool) -> Tensor:
    sizes: List[int] = size.reshape(-1).long().tolist()
    return F.affine_grid(theta, sizes, align)


@op("AffineGrid", since=20)
def _affine_grid(g, node, theta, size):
    return g.call(affine_grid, theta, size, bool(node.attr("align_corners", 0)))


def col2im(x: Tensor, image: Tensor, block: Tensor, dilations: List[int], pads: List[int],
           strides: List[int]) -> Tensor:
    size: List[int] = image.reshape(-1).long().tolist()
    kernel: List[int] = block.reshape(-1).long().tolist()
    n = len(size)
    if n != 2:
        raise ValueError("Col2Im: torch folds 2-D images only")
    if len(dilations) == 0:
        dilations = [1] * n
    if len(strides) == 0:
        strides = [1] * n
    if len(pads) == 0:
        pads = [0] * (2 * n)
    if pads[:n] != pads[n:]:
        raise ValueError("Col2Im: asymmetric pads")
    return F.fold(x, size, kernel, dilations, pads[:n], strides)


@op("Col2Im", since=18)
def _col2im(g, node, x, image, block):
    if image.static is not None and image.static.numel() != 2:
        raise Unsupported(f"{image.static.numel()}-D images (torch folds 2-D ones)")
    return g.call(col2im, x, image, block, [int(v) for v in node.attr("dilations", [])],
                  [int(v) for v in node.attr("pads", [])], [int(v) for v in node.attr("strides", [])])
