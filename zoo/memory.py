"""How much memory one tensor or one training run may need, checked from shapes before anything is allocated.

A graph may declare a 2^40-element input, a ``ConstantOfShape`` or an ``Expand`` to terabytes, a
Caffe input of 1x3x100000x100000, a pretraining stack of 10^8 units: numpy, onnxruntime, OpenCV
or torch would then fail deep inside (or the kernel would kill the process) after trying. zoo
computes what the shapes need first and refuses with one line naming the tensor and the size.

The bound is `limit_bytes`: ``ZOO_MAX_MEMORY`` (e.g. ``8G``) or half of this machine's memory
(its cgroup limit when that is lower).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoo.errors import ResourceLimitError

if TYPE_CHECKING:
    import onnx

# Bytes per element of ONNX tensor element types (strings and unknown types count as 8).
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
               16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def physical_memory() -> int | None:
    """Bytes of memory this process can use: the machine's, or its cgroup's limit when lower."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                raw = fh.read().strip()
        except OSError:
            continue
        if raw.isdigit() and (total is None or int(raw) < total):
            total = int(raw)
    return total


def limit_bytes() -> int:
    """The most one tensor (or one training run) may plan: ZOO_MAX_MEMORY, else half of the memory."""
    raw = os.environ.get("ZOO_MAX_MEMORY", "").strip()
    if raw:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", raw, re.IGNORECASE)
        if not match:
            raise ResourceLimitError(f"ZOO_MAX_MEMORY={raw!r} is not a size; set it like ZOO_MAX_MEMORY=8G")
        return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    total = physical_memory()
    return total // 2 if total else 8 << 30


def human(n: float) -> str:
    """A byte count for people: 4.0 TiB, 512.0 MiB."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def _why(limit: int, what: str = "one tensor") -> str:
    return (f"more than the {human(limit)} zoo lets {what} take here (half this machine's memory; "
            f"ZOO_MAX_MEMORY raises it)")


def check_tensor(name: str, shape: Sequence[int], itemsize: int, what: str, fix: str) -> None:
    """Refuse a tensor of `shape` whose bytes exceed `limit_bytes`, before it is allocated."""
    count = 1
    for dim in shape:
        count *= max(int(dim), 0)
    nbytes = count * itemsize
    limit = limit_bytes()
    if nbytes > limit:
        dims = "x".join(str(int(d)) for d in shape)
        raise ResourceLimitError(f"{what} {name!r} of shape {dims} would need {human(nbytes)}, {_why(limit)}; {fix}")


def check_onnx(model: onnx.ModelProto, label: str, batch: int | None = None,
               feeds: Mapping[str, Any] | None = None) -> None:
    """Refuse an ONNX graph whose inferred shapes plan a tensor past `limit_bytes`.

    Reads the shapes the model carries (graph inputs and outputs, and ``value_info`` from shape
    inference); a symbolic first axis counts as `batch` (skipped when None), other symbolic axes
    as unknown. `feeds` gives the real shapes of the inputs that will be fed.
    """
    shapes = {name: list(value.shape) for name, value in (feeds or {}).items()}
    graph = model.graph
    entries = []
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = shapes.get(value.name) or (
            [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
            if tensor.HasField("shape") else None)
        entries.append((value.name, tensor.elem_type, dims))
    check_shapes(entries, label, model, batch)


def check_shapes(entries: Iterable[tuple[str, int, Sequence[Any] | None]], label: str,
                 model: onnx.ModelProto | None = None, batch: int | None = None) -> None:
    """`check_onnx` on (tensor name, ONNX element type, dims) entries, e.g. ``zoo.graph.GraphInfo.types``.

    A dim that is not an int counts as `batch` on axis 0 (skipped when None) and as unknown elsewhere.
    """
    limit = limit_bytes()
    producers = {out: node for node in model.graph.node for out in node.output} if model is not None else {}
    for name, elem_type, dims in entries:
        known = _known(dims, batch)
        if known is None:
            continue
        nbytes = _elements(known) * _ELEM_BYTES.get(elem_type, 8)
        if nbytes > limit:
            node = producers.get(name)
            made = f" (made by {node.op_type} node {node.name!r})" if node is not None else ""
            raise ResourceLimitError(
                f"{label}: tensor {name!r}{made} of shape {'x'.join(map(str, known))} would need "
                f"{human(nbytes)}, {_why(limit)}; the model declares a size it cannot run at, or needs a "
                f"bigger machine")


def _known(dims: Sequence[Any] | None, batch: int | None) -> list[int] | None:
    if dims is None:
        return None
    known = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
            known.append(dim)
        elif axis == 0 and batch is not None:
            known.append(batch)
        else:
            return None
    return known


def _elements(dims: Sequence[int]) -> int:
    count = 1
    for dim in dims:
        count *= max(int(dim), 0)
    return count


def check_training(parameters: int, rows_per_batch: int, widest: int, what: str, fix: str) -> None:
    """Refuse training a network of `parameters` floats whose weights, gradients, Adam moments and
    activations (a batch through its widest layer, a few times over) need more than `limit_bytes`."""
    need = 4 * (4 * parameters + 4 * rows_per_batch * widest)
    limit = limit_bytes()
    if need > limit:
        raise ResourceLimitError(f"{what} has {parameters:,} parameters and would need about {human(need)} to "
                                 f"train (weights, gradients, optimizer state), {_why(limit, 'a training run')}; {fix}")


__all__ = ["check_onnx", "check_shapes", "check_tensor", "check_training", "human", "limit_bytes", "physical_memory"]
