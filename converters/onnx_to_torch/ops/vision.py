"""Detection and sampling: NonMaxSuppression, RoiAlign, DeformConv, GridSample, AffineGrid, Col2Im."""
from __future__ import annotations

import math
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


def roi_align(x: Tensor, rois: Tensor, batch: Tensor, average: bool, out_h: int, out_w: int, ratio: int,
              scale: float, half_pixel: bool) -> Tensor:
    """ONNX RoiAlign: bilinear samples on a grid inside each region, averaged (or maxed) per bin."""
    height, width = x.shape[2], x.shape[3]
    outs: List[Tensor] = []
    offset = 0.5 if half_pixel else 0.0
    for n in range(rois.shape[0]):
        box = rois[n].double() * scale - offset
        start_w, start_h = float(box[0]), float(box[1])
        roi_w, roi_h = float(box[2]) - start_w, float(box[3]) - start_h
        if not half_pixel:  # malformed regions become 1x1
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = ratio if ratio > 0 else int(math.ceil(roi_h / out_h))
        grid_w = ratio if ratio > 0 else int(math.ceil(roi_w / out_w))
        iy = torch.arange(out_h, dtype=torch.float64).reshape(-1, 1) * bin_h + \
            (torch.arange(grid_h, dtype=torch.float64).reshape(1, -1) + 0.5) * bin_h / grid_h + start_h
        ix = torch.arange(out_w, dtype=torch.float64).reshape(-1, 1) * bin_w + \
            (torch.arange(grid_w, dtype=torch.float64).reshape(1, -1) + 0.5) * bin_w / grid_w + start_w
        y = iy.reshape(out_h, 1, grid_h, 1).expand(out_h, out_w, grid_h, grid_w)
        xx = ix.reshape(1, out_w, 1, grid_w).expand(out_h, out_w, grid_h, grid_w)
        outside = (y < -1.0) | (y > height) | (xx < -1.0) | (xx > width)
        y, xx = y.clamp(min=0.0), xx.clamp(min=0.0)
        y_low, x_low = y.floor().long(), xx.floor().long()
        y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
        y_low, x_low = torch.where(y_edge, height - 1, y_low), torch.where(x_edge, width - 1, x_low)
        y = torch.where(y_edge, y_low.double(), y)
        xx = torch.where(x_edge, x_low.double(), xx)
        y_high, x_high = torch.where(y_edge, y_low, y_low + 1), torch.where(x_edge, x_low, x_low + 1)
        ly, lx = y - y_low.double(), xx - x_low.double()
        hy, hx = 1.0 - ly, 1.0 - lx
        plane = x[int(batch[n])].reshape(x.shape[1], -1).double()  # [C, H*W]
        corners: List[Tensor] = []
        for pos, w in ((y_low * width + x_low, hy * hx), (y_low * width + x_high, hy * lx),
                       (y_high * width + x_low, ly * hx), (y_high * width + x_high, ly * lx)):
            w = torch.where(outside, torch.zeros_like(w), w)
            corners.append(plane[:, pos.reshape(-1)].reshape([x.shape[1]] + list(pos.shape)) * w)
        if average:
            value = (corners[0] + corners[1] + corners[2] + corners[3]).sum([3, 4]) / max(grid_h * grid_w, 1)
        else:
            value = torch.maximum(torch.maximum(corners[0], corners[1]),
                                  torch.maximum(corners[2], corners[3])).amax([3, 4])
        outs.append(value)
    if len(outs) == 0:
        return x.new_zeros([0, x.shape[1], out_h, out_w])
    return torch.stack(outs).to(x.dtype)


@op("RoiAlign", since=10)
def _roi_align_v10(g, node, x, rois, batch):
    """Opset 10 had no coordinate_transformation_mode: output_half_pixel, i.e. no half-pixel shift."""
    return _roi_align(g, node, x, rois, batch, half_pixel=False)


@op("RoiAlign", since=16)
def _roi_align_v16(g, node, x, rois, batch):
    return _roi_align(g, node, x, rois, batch,
                      half_pixel=node.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel")


def _roi_align(g, node, x, rois, batch, half_pixel: bool):
    mode = node.attr("mode", "avg")
    if mode not in ("avg", "max"):
        raise Unsupported(f"mode={mode!r}")
    return g.call(roi_align, x, rois, batch, mode == "avg", int(node.attr("output_height", 1)),
                  int(node.attr("output_width", 1)), int(node.attr("sampling_ratio", 0)),
                  float(node.attr("spatial_scale", 1.0)), half_pixel)


def deform_conv(x: Tensor, w: Tensor, offset: Tensor, b: Optional[Tensor], mask: Optional[Tensor],
                strides: List[int], pads: List[int], dilations: List[int], group: int,
                offset_group: int) -> Tensor:
    """ONNX DeformConv (2-D): each kernel tap samples the input bilinearly at its learned offset."""
    n, channels, ih, iw = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    oc, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    oh, ow = offset.shape[2], offset.shape[3]
    off = offset.reshape(n, offset_group, kh, kw, 2, oh, ow).double()
    gate = mask.reshape(n, offset_group, kh, kw, oh, ow).double() if mask is not None else \
        torch.ones([n, offset_group, kh, kw, oh, ow], dtype=torch.float64)
    base_h = (torch.arange(oh, dtype=torch.float64) * strides[0] - pads[0]).reshape(1, 1, oh, 1)
    base_w = (torch.arange(ow, dtype=torch.float64) * strides[1] - pads[1]).reshape(1, 1, 1, ow)
    tap_h = (torch.arange(kh, dtype=torch.float64) * dilations[0]).reshape(kh, 1, 1, 1)
    tap_w = (torch.arange(kw, dtype=torch.float64) * dilations[1]).reshape(1, kw, 1, 1)
    per = channels // offset_group
    columns: List[Tensor] = []
    for g in range(offset_group):
        h = base_h + tap_h + off[:, g, :, :, 0]  # [n, kh, kw, oh, ow]
        ww = base_w + tap_w + off[:, g, :, :, 1]
        grid = torch.stack([ww / (iw - 1) * 2 - 1, h / (ih - 1) * 2 - 1], -1).reshape(n, kh * kw * oh, ow, 2)
        sampled = F.grid_sample(x[:, g * per:(g + 1) * per].double(), grid, "bilinear", "zeros", True)
        columns.append(sampled.reshape(n, per, kh, kw, oh, ow) * gate[:, g].unsqueeze(1))
    cols = torch.cat(columns, 1).reshape(n, group, (channels // group) * kh * kw, oh * ow)
    weights = w.double().reshape(group, oc // group, (channels // group) * kh * kw)
    y = torch.einsum("gok,ngkp->ngop", weights, cols).reshape(n, oc, oh, ow)
    if b is not None:
        y = y + b.double().reshape(1, -1, 1, 1)
    return y.to(x.dtype)


@op("DeformConv", since=19)
def _deform_conv(g, node, x, w, offset, b=None, mask=None):
    if w.rank is not None and w.rank != 4:
        raise Unsupported(f"{w.rank - 2}-D kernels (2-D only)")
    given = [v if v is not None and v.present else None for v in (b, mask)]
    return g.call(deform_conv, x, w, offset, given[0], given[1], [int(s) for s in node.attr("strides", [1, 1])],
                  [int(p) for p in node.attr("pads", [0, 0, 0, 0])], [int(d) for d in node.attr("dilations", [1, 1])],
                  int(node.attr("group", 1)), int(node.attr("offset_group", 1)))


def grid_sample(x: Tensor, grid: Tensor, mode: str, padding: str, align: bool) -> Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode, padding, align)


@op("GridSample", since=16)
def _grid_sample_v16(g, node, x, grid):
    return _grid_sample(g, node, x, grid, node.attr("mode", "bilinear"))


@op("GridSample", since=20)
def _grid_sample_v20(g, node, x, grid):
    """Opset 20 renamed the modes linear and cubic (and took N-D grids)."""
    return _grid_sample(g, node, x, grid, node.attr("mode", "linear"))


def _grid_sample(g, node, x, grid, mode: str):
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
    """ONNX Col2Im: sum the sliding blocks (columns) back into an image of any rank."""
    size: List[int] = image.reshape(-1).long().tolist()
    kernel: List[int] = block.reshape(-1).long().tolist()
    n = len(size)
    if len(dilations) == 0:
        dilations = [1] * n
    if len(strides) == 0:
        strides = [1] * n
    if len(pads) == 0:
        pads = [0] * (2 * n)
    if n == 2 and pads[:n] == pads[n:]:
        return F.fold(x, size, kernel, dilations, pads[:n], strides)
    # Per axis: how many blocks fit, then every (kernel offset, block) pair's image coordinate.
    blocks: List[int] = []
    for j in range(n):
        blocks.append((size[j] + pads[j] + pads[n + j] - dilations[j] * (kernel[j] - 1) - 1) // strides[j] + 1)
    flat = torch.zeros([1], dtype=torch.long)
    inside = torch.ones([1], dtype=torch.bool)
    for j in range(n):  # kernel offsets, in row-major order
        k = torch.arange(kernel[j]).reshape(-1, 1)
        flat = (flat.reshape(-1, 1) * size[j] + k * dilations[j] - pads[j]).reshape(-1)
    coords = flat
    position = torch.zeros([1], dtype=torch.long)
    for j in range(n):  # block positions, in row-major order
        position = (position.reshape(-1, 1) * size[j] + torch.arange(blocks[j]).reshape(1, -1) * strides[j]).reshape(-1)
    index = coords.reshape(-1, 1) + position.reshape(1, -1)  # [prod(kernel), prod(blocks)], may be off the image
    # Validity per axis: recompute each axis's coordinate and check it is inside the image.
    valid = torch.ones(index.shape, dtype=torch.bool)
    k_rest = torch.arange(index.shape[0]).reshape(-1, 1)
    b_rest = torch.arange(index.shape[1]).reshape(1, -1)
    for j in range(n - 1, -1, -1):
        coord = (k_rest % kernel[j]) * dilations[j] - pads[j] + (b_rest % blocks[j]) * strides[j]
        valid = valid & (coord >= 0) & (coord < size[j])
        k_rest = k_rest // kernel[j]
        b_rest = b_rest // blocks[j]
    total = 1
    for s in size:
        total *= s
    batch, channels = x.shape[0], x.shape[1] // index.shape[0]
    cols = x.reshape(batch, channels, index.shape[0] * index.shape[1])
    safe = torch.where(valid, index, torch.zeros_like(index)).reshape(-1)
    weights = valid.reshape(-1).to(x.dtype)
    out = torch.zeros([batch, channels, total], dtype=x.dtype)
    out = out.index_add(2, safe, cols * weights)
    return out.reshape([batch, channels] + size)


@op("Col2Im", since=18)
def _col2im(g, node, x, image, block):
    return g.call(col2im, x, image, block, [int(v) for v in node.attr("dilations", [])],
                  [int(v) for v in node.attr("pads", [])], [int(v) for v in node.attr("strides", [])])
