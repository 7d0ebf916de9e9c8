"""New heads on frozen bases: train on cached features, fine-tune the top layers, save as your own model."""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from zoo.errors import InputError
from zoo._threads import torch_threads

if TYPE_CHECKING:
    import torch

    from zoo.catalog import Catalog
    from zoo.records import InputSpec, Model

__all__ = [
    "FitResult",
    "TrainResult",
    "fit_head",
    "make_head",
    "save_model",
    "fine_tune_parts",
    "train",
    "transfer_model",
]

# Features smaller than this are loaded into RAM once; larger ones are read a batch at a time
# from the memory map, so the cache never has to fit in memory.
IN_MEMORY_BYTES = 256 << 20


@dataclass
class FitResult:
    """A trained head and how training went.

    ``history`` has one dict per epoch: ``epoch``, ``loss``, ``accuracy`` and, with a validation
    set, ``val_loss`` and ``val_accuracy``. The head holds the weights of ``best_epoch`` (lowest
    validation loss), or of the last epoch without validation.
    """

    head: Any  # torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    val_accuracy: float | None
    classes: list[Any] = field(default_factory=list)  # output index i means label classes[i]
    stopped_early: bool = False
    seconds: float = 0.0

    def predict(self, features: Any, base: Any = None, batch_size: int = 256) -> np.ndarray:
        """Labels (original values) for `features` (or raw inputs through `base`)."""
        logits = _logits(self.head, features, base, batch_size)
        return np.asarray(self.classes)[logits.argmax(1)]

    def accuracy(self, features: Any, labels: Any, base: Any = None) -> float:
        """Fraction of `labels` the head gets right."""
        labels = np.asarray(labels)
        if len(labels) != len(features):
            raise InputError(f"{len(labels)} labels for {len(features)} rows; give one label per row")
        return float(np.mean(self.predict(features, base) == labels))


def make_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), *, dropout: float = 0.0, seed: int = 0):
    """A new classifier head: flatten, optional hidden ReLU layers, a linear output layer."""
    import torch
    from torch import nn

    if num_classes < 2:
        raise InputError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _as_tensor(array: Any) -> torch.Tensor:
    import torch

    if isinstance(array, torch.Tensor):
        return array
    array = np.ascontiguousarray(array, dtype=np.float32)
    # torch wants writable memory; a read-only memory map of the cache is copied, once per batch.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class _Rows:
    """Rows of an array by index: from RAM when small, else gathered from the memory map per batch."""

    def __init__(self, data: Any, indices: np.ndarray) -> None:
        self.indices = indices
        nbytes = getattr(data, "nbytes", 0) * len(indices) / max(1, len(data))
        if nbytes <= IN_MEMORY_BYTES or not isinstance(data, np.ndarray):
            self.ram = _as_tensor(data[indices] if isinstance(data, np.ndarray) else data[_index(indices)])
            self.data = None
        else:
            self.ram, self.data = None, data

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        import torch

        if self.ram is not None:
            return self.ram[positions]
        wanted = self.indices[positions.numpy()]
        # Read in file order (sequential on disk), then put the rows back in batch order.
        order = np.argsort(wanted, kind="stable")
        rows = np.empty((len(wanted), *self.data.shape[1:]), dtype=np.float32)
        rows[order] = self.data[wanted[order]]
        return torch.from_numpy(rows)


def _index(indices: np.ndarray):
    import torch

    return torch.from_numpy(indices)


def _encode(labels: Any, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels have shape {labels.shape}; give one class label per row (a 1-D array)")
    if classes is None:
        classes, encoded = np.unique(labels, return_inverse=True)
        return classes, encoded.astype(np.int64)
    lookup = {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
    try:
        return classes, np.asarray([lookup[v.item() if hasattr(v, "item") else v] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise InputError(
            f"validation label {exc.args[0]!r} is not among the training labels {classes.tolist()}"
        ) from None


def _split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: each class gives `fraction` of its rows (at least one when it has 2+)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fraction * len(rows)))
        n = min(max(n, 1 if len(rows) > 1 else 0), len(rows) - 1)
        val.append(rows[:n])
        train.append(rows[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _logits(head: Any, features: Any, base: Any, batch_size: int) -> np.ndarray:
    import torch

    head.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            x = _as_tensor(features[i : i + batch_size])
            if base is not None:
                x = base(x)
            outs.append(head(x).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _evaluate(head: Any, rows: _Rows, y: torch.Tensor, base: Any, batch_size: int) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F

    head.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            positions = torch.arange(i, min(i + batch_size, len(rows)))
            x = rows.take(positions)
            if base is not None:
                x = base(x)
            out = head(x)
            target = y[positions]
            total += float(F.cross_entropy(out, target, reduction="sum"))
            correct += int((out.argmax(1) == target).sum())
    return total / len(rows), correct / len(rows)


def fit_head(
    features: Any,
    labels: Any,
    *,
    head: Any = None,
    hidden: Sequence[int] = (),
    base: Any = None,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.2,
    validation: tuple[Any, Any] | None = None,
    patience: int | None = 5,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
) -> FitResult:
    """Train the trainable layers on cached outputs of the frozen ones (the seed's loop).

    Every epoch shuffles the training rows; each batch of cached features and targets feeds
    `head` (a new one from :func:`make_head` when None); the rows held out for validation
    (`val_fraction`, stratified, or an explicit `validation=(features, labels)`) pick the best
    epoch and stop training after `patience` epochs without improvement.

    With `base` (a frozen torch module), `features` are raw inputs and every batch goes through
    `base` first: the costly way this cache avoids, kept as the reference it must equal.

    >>> result = zoo.fit_head(zoo.cache_features(extractor, "x.npy"), np.load("y.npy"))  # doctest: +SKIP
    >>> result.val_accuracy, result.best_epoch                                        # doctest: +SKIP
    """
    import torch

    if len(labels) != len(features):
        raise InputError(
            f"{len(labels)} labels for {len(features)} rows of data; give exactly one label per row"
        )
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs={epochs} and batch_size={batch_size} must both be at least 1")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction={val_fraction} must be in [0, 1)")
    classes, y = _encode(labels)
    if len(classes) < 2:
        raise InputError(f"the labels hold a single class ({classes.tolist()}); a classifier needs at least 2")
    if validation is not None:
        train_idx, val_idx = np.arange(len(y)), None
        val_features, val_labels = validation
        if len(val_labels) != len(val_features):
            raise InputError(f"{len(val_labels)} validation labels for {len(val_features)} rows; give one per row")
        _, val_y = _encode(val_labels, classes)
        val_rows = _Rows(val_features, np.arange(len(val_y)))
    elif val_fraction > 0 and np.bincount(y).max() > 1:
        train_idx, val_idx = _split(y, val_fraction, seed)
        val_y = y[val_idx]
        val_rows = _Rows(features, val_idx)
    else:  # no validation asked for, or no class has a row to spare for it
        train_idx, val_rows, val_y = np.arange(len(y)), None, None
    train_rows = _Rows(features, train_idx)
    train_y = torch.from_numpy(y[train_idx])
    val_target = torch.from_numpy(val_y) if val_rows is not None else None

    if base is not None:
        base.eval()  # frozen: BatchNorm statistics and dropout stay as trained
    if head is None:
        with torch.no_grad():
            sample = train_rows.take(torch.arange(1))
            width = int(np.prod((base(sample) if base is not None else sample).shape[1:]))
        head = make_head(width, len(classes), hidden, seed=seed)
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise InputError("the head has no trainable parameters; unfreeze some or pass a new head")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    with torch_threads(sum(p.numel() for p in params), threads):
        return _train_loop(
            head, base, optimizer, generator, train_rows, train_y, val_rows, val_target,
            classes, epochs, batch_size, patience, progress,
        )


def _train_loop(
    head, base, optimizer, generator, train_rows, train_y, val_rows, val_target,
    classes, epochs, batch_size, patience, progress,
) -> FitResult:
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
    stopped_early = False
    start = time.perf_counter()
    quiet = not progress or not sys.stderr.isatty()  # no bar in logs and pipes
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=quiet, leave=False):
        head.train()
        order = torch.randperm(len(train_rows), generator=generator)
        total, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            positions = order[i : i + batch_size]
            x = train_rows.take(positions)
            if base is not None:
                with torch.no_grad():
                    x = base(x)
            target = train_y[positions]
            out = head(x)
            loss = F.cross_entropy(out, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(positions)
            correct += int((out.argmax(1) == target).sum())
        row = {"epoch": epoch, "loss": total / len(order), "accuracy": correct / len(order)}
        if val_rows is not None:
            row["val_loss"], row["val_accuracy"] = _evaluate(head, val_rows, val_target, base, 256)
            if row["val_loss"] < best_loss:
                best_loss, best_epoch, stale = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(head.state_dict())
            else:
                stale += 1
        history.append(row)
        if patience is not None and val_rows is not None and stale >= patience:
            stopped_early = epoch < epochs
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    head.eval()
    best = history[best_epoch - 1]
    return FitResult(
        head=head,
        history=history,
        best_epoch=best_epoch,
        val_accuracy=best.get("val_accuracy"),
        classes=classes.tolist(),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Whole models: a frozen base from the extractor plus a head.


def trainable_head(top: Any, head: Any, pool: Any = None):
    """The unfrozen top layers, the global pooling (if any) and the new head, trained together on the cache."""
    from collections import OrderedDict

    from torch import nn

    parts = OrderedDict(top=top, pool=pool, head=head) if pool is not None else OrderedDict(top=top, head=head)
    return nn.Sequential(parts)


def _compose(base: Any, head: Any, pool: Any = None):
    from collections import OrderedDict

    from torch import nn

    if pool is not None:
        return nn.Sequential(OrderedDict(base=base, pool=pool, head=head))
    return nn.Sequential(OrderedDict(base=base, head=head))


def _pool_module(pooling: str | None, extractor: Any):
    """The torch module doing the extractor's global pooling, or None without pooling."""
    if not pooling:
        return None
    from zoo.pooling import pool_module

    return pool_module(pooling, getattr(extractor.input_spec, "layout", None))


def _load_extractor(name: str, layer: Any, catalog: Any, cache_dir: Any = None, **options: Any):
    from zoo.extract import load_extractor

    return load_extractor(name, layer=layer, catalog=catalog, cache_dir=cache_dir, **options)


def transfer_model(
    name: str,
    layer: str | int = -2,
    *,
    head: Any = None,
    num_classes: int | None = None,
    hidden: Sequence[int] = (),
    unfreeze: int | str = 0,
    catalog: str | os.PathLike | Catalog | None = None,
    seed: int = 0,
    pooling: str | None = None,
    verbose: bool = True,
):
    """A cataloged model cut at `layer`, frozen, with a new head: one ``nn.Module`` to train.

    The result is ``nn.Sequential(base=..., head=...)``; with ``pooling="avg"`` or ``"max"`` the
    base pools the cut's spatial axes (as the extractor does). The base's weights are frozen
    (BatchNorm in eval mode) except its top `unfreeze` blocks (a conv/linear layer with its
    BatchNorm, Scale and activation), or every block above the cut point `unfreeze` names
    (``unfreeze="res4f"``); the default ``layer=-2`` drops the old output layer, which the head
    replaces. Prints how many parameters train (``verbose=False``: quiet).

    >>> model = zoo.transfer_model("bvlc_alexnet", layer="fc7", num_classes=10, unfreeze=1)  # doctest: +SKIP
    """
    if head is None and num_classes is None:
        raise InputError("give the new head (head=nn.Module) or the number of classes (num_classes=N)")
    _check_unfreeze(unfreeze)
    extractor = _load_extractor(name, layer, catalog, pooling=pooling)
    base = extractor.to_torch()
    if unfreeze:
        base.unfreeze(unfreeze, verbose=False)
    if head is None:
        width = int(np.prod([d for d in extractor.output_shape[1:]]))
        head = make_head(width, num_classes, hidden, seed=seed)
    model = _compose(base, head)
    if verbose:
        print(trainable_summary(model, base), file=sys.stderr)
    return model


def _check_unfreeze(unfreeze: int | str) -> None:
    if isinstance(unfreeze, str):
        if not unfreeze.strip():
            raise InputError("unfreeze='' names no layer; give a count of blocks (1) or a cut point ('res4f')")
    elif unfreeze < 0:
        raise InputError(f"unfreeze={unfreeze} must be 0 or more blocks, or the name of a cut point")


def trainable_summary(model: Any, base: Any = None) -> str:
    """One line: how many parameters of `model` train, and which blocks of its base."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = f"{trained:,} of {total:,} parameters train"
    if base is not None and hasattr(base, "parameter_summary"):
        line += f"; base: {base.parameter_summary()}"
    return line


def save_model(
    model: Any,
    name: str,
    *,
    input_shape: Sequence[int],
    catalog: str | os.PathLike | Catalog | None = None,
    path: str | os.PathLike | None = None,
    layout: str | None = None,
    input_spec: InputSpec | None = None,
    classes: Sequence[Any] | None = None,
    description: str | None = None,
    meta: dict[str, Any] | None = None,
    replace: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Model:
    """Export a torch model to ONNX and register it in the catalog as your own model.

    The file goes to `path` (default ``<cache>/models/<name>/<name>.onnx``); the catalog entry
    has framework "onnx", source "local" and one artifact with role "model". `input_spec` (the
    base's) keeps its preprocessing (mean, std, resize, crop...) so images reach the new model
    as they reached the base.
    """
    from dataclasses import replace as _replace

    from zoo.records import InputSpec, Model
    from zoo.torch_models import check_new_name, export_onnx, register

    check_new_name(name, catalog, replace, example="my-model")
    record = Model(
        name=name,
        framework="onnx",
        format="onnx",
        task="classification",
        source="local",
        description=description,
        input=_replace(input_spec or InputSpec(), name="input", shape=[None, *input_shape], dtype="float32",
                       layout=layout or (input_spec.layout if input_spec else None)),
        parameters=int(sum(p.numel() for p in model.parameters())),
        meta={"trained_by": "zoo", **({"classes": list(classes)} if classes is not None else {}), **(meta or {})},
    )
    return register(export_onnx(model, input_shape), record, catalog=catalog, path=path, replace=replace,
                    cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------
# `zoo train`: cache, fit, compose, save.


@dataclass
class TrainResult:
    """What `train` made: the catalog entry, the fit, the composed torch model, the cache key."""

    model: Model
    fit: FitResult
    module: Any
    cache_key: str
    cut: Any
    trainable_parameters: int = 0  # how many parameters trained (head and unfrozen blocks)
    total_parameters: int = 0  # of the whole saved model


def fine_tune_parts(
    name: str,
    layer: str | int,
    unfreeze: int | str,
    *,
    catalog: Any = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[str, Any]:
    """Where to cache for fine-tuning the top `unfreeze` blocks of `name` cut at `layer`.

    `unfreeze` is a count of blocks (a conv/linear layer with its BatchNorm, Scale and activation)
    or a cut point: every block above it trains. Returns (the layer to cache at: the last cut
    point below the lowest unfrozen layer, or the named cut point; the torch module that maps
    that cache to `layer`'s output, its unfrozen blocks trainable). Training this module and a
    head on the cached outputs is the same as training ``transfer_model(..., unfreeze=...)``
    without running the frozen layers below every epoch.
    """
    from converters.onnx_to_torch import to_torch
    from zoo.extract import layers as list_layers

    _check_unfreeze(unfreeze)
    if not unfreeze:
        raise InputError(f"unfreeze={unfreeze!r}: fine-tuning needs at least one block to unfreeze")
    extractor = _load_extractor(name, layer, catalog, cache_dir)
    full = extractor.to_torch()
    all_layers = list_layers(name, catalog=catalog, cache_dir=cache_dir)
    output = extractor.meta["outputs"][0]
    target = next(info for info in all_layers if info.output == output)
    if isinstance(unfreeze, str):
        low = next((info for info in all_layers if info.name == unfreeze), None)
        cuts = [info.name for info in all_layers if info.is_cut_point and info.index < target.index]
        if low is None or not low.is_cut_point or low.index >= target.index:
            raise InputError(
                f"unfreeze={unfreeze!r} is not a cut point below {target.name} in {name}; cut points: "
                f"{', '.join(cuts[-8:]) or 'none'} (zoo layers {name})"
            )
        chosen = full._layers_above(low.output)
    else:
        if unfreeze > len(full.blocks):
            raise InputError(
                f"unfreeze={unfreeze}, but {name} cut at {extractor.layer!r} has {len(full.blocks)} blocks "
                f"(a conv/linear layer with its BatchNorm/Scale/activation); choose --unfreeze between 0 "
                f"and {len(full.blocks)}, or a cut point"
            )
        chosen = [node for block in full.blocks[len(full.blocks) - unfreeze:] for node in block.layers]
        lowest = next(info for info in all_layers if chosen[0] in info.nodes)
        below = [info for info in all_layers if info.index < lowest.index and info.is_cut_point]
        if not below:
            raise InputError(
                f"unfreeze={unfreeze} unfreezes every block of {name} up to {target.name}: nothing stays "
                f"frozen to cache; choose --unfreeze below {unfreeze} (or train from scratch)"
            )
        low = below[-1]
    top = to_torch(_segment(extractor.cut_model, low.output, low.shape))
    top.unfreeze(layers=[node for node in chosen if node in {name for name, _ in top.layers}], verbose=False)
    return low.name, top


def _segment(model: Any, start: str, shape: list | None) -> Any:
    """The part of a cut model above tensor `start`: `start` becomes its input (batch dynamic)."""
    import onnx
    from onnx import helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    keep, needed, stack = [], set(), [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        if name in needed or name == start:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and node not in keep:
            keep.append(node)
            stack.extend(i for i in node.input if i)
    nodes = [node for node in graph.node if node in keep]  # graph order is topological
    dims = ["batch", *(d if isinstance(d, int) else None for d in (shape or [None])[1:])]
    inp = helper.make_tensor_value_info(start, onnx.TensorProto.FLOAT, dims)
    inits = [t for t in graph.initializer if t.name in needed]
    sub = helper.make_graph(nodes, "top", [inp], list(graph.output), inits)
    # The source's producer: zoo layers and to_torch then name the segment's layers as in the whole model.
    out = helper.make_model(sub, opset_imports=model.opset_import, producer_name=model.producer_name or "zoo")
    out.ir_version = model.ir_version
    return out


def train(
    name: str,
    data: Any,
    labels: Any,
    *,
    layer: str | int = -2,
    new_name: str,
    unfreeze: int | str = 0,
    hidden: Sequence[int] = (),
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    val_fraction: float = 0.2,
    patience: int | None = 5,
    seed: int = 0,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
    replace: bool = False,
    on_error: str = "skip",
    progress: bool = True,
    preprocess: bool | None = None,
    pooling: str | None = None,
    device: str | Sequence[Any] | None = None,
) -> TrainResult:
    """Cache `data` through `name` cut at `layer`, train a head (and the top `unfreeze` blocks), save.

    The trained model (frozen base + trained layers) is registered as `new_name`, exported to
    ONNX. With ``unfreeze=k`` the features are cached below the top k blocks of the base (a
    block: a conv/linear layer with its BatchNorm, Scale and activation), with ``unfreeze="res4f"``
    at that cut point; those blocks train with the head on the cached outputs. How many
    parameters train is printed (with `progress`) and kept in the result.

    `data` is a .npy path or array (model-ready unless ``preprocess=True``: raw pixels), a folder
    with one sub-folder per class (its labels), or a flat folder, image file or list of image
    paths with `labels`; image files get the model's InputSpec unless ``preprocess=False``.
    ``pooling="avg"|"max"`` pools the cut's spatial axes before the head; `device` runs the
    frozen layers on an onnxruntime device ("cpu", "cuda", "cuda:1"; see :func:`zoo.load_extractor`).
    """
    from zoo.catalog import open_catalog
    from zoo.features import extract_features

    from zoo.torch_models import check_new_name

    cat = open_catalog(catalog)
    check_new_name(new_name, cat, replace, example="my-model")
    labels = None if labels is None else _load_labels(labels)
    data_len = _length(data)
    if labels is not None and data_len is not None and len(labels) != data_len:
        raise InputError(f"{len(labels)} labels for {data_len} rows of data; give exactly one label per row")
    if labels is None and not (isinstance(data, (str, os.PathLike)) and Path(data).is_dir()):
        raise InputError("labels are missing; give one label per row (`--labels y.npy`), or an image folder")
    _check_unfreeze(unfreeze)
    cut, top = (layer, None) if not unfreeze else fine_tune_parts(name, layer, unfreeze, catalog=cat,
                                                                   cache_dir=cache_dir)
    # Pooling belongs to the cut layer: cached features are pooled only when cached at it.
    extractor = _load_extractor(name, cut, cat, cache_dir, preprocess=preprocess, device=device,
                                pooling=pooling if top is None else None)
    cached = extract_features(extractor, data, cache_dir=cache_dir, progress=progress, on_error=on_error)
    if cached.skipped and progress:
        print(f"skipped {len(cached.skipped)} unreadable files, e.g. {cached.skipped[0]['path']}", file=sys.stderr)
    labels = _labels_for(cached, labels)
    classes = np.unique(labels)
    pool = _pool_module(pooling, extractor)
    if top is None:
        width = int(np.prod(cached.features.shape[1:]))
    else:
        width = _width(top if pool is None else trainable_head(top, pool), cached.features)
    head = make_head(width, len(classes), hidden, seed=seed)
    trainable = head if top is None else trainable_head(top, head, pool)
    base = extractor.to_torch()  # the frozen part; with `top`, the layers up to where the cache is
    counts = _parameter_counts(base, trainable)
    if progress and sys.stderr.isatty():  # as the progress bars: not in logs and pipes (`zoo train` says it)
        print(f"training {counts[0]:,} of {counts[1]:,} parameters", file=sys.stderr)
    fit = fit_head(
        cached.features,
        labels,
        head=trainable,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        patience=patience,
        seed=seed,
        progress=progress,
    )
    module = _compose(base, fit.head)
    input_shape = _input_shape(extractor, data)
    spec = getattr(extractor, "input_spec", None)
    record = save_model(
        module,
        new_name,
        input_shape=input_shape,
        catalog=cat,
        layout=getattr(spec, "layout", None),
        input_spec=spec,
        # an image folder's classes are its sub-folder names
        classes=[cached.classes[c] for c in fit.classes] if cached.classes else fit.classes,
        description=f"{name} cut at {layer}, new head trained by zoo",
        meta={
            "base_model": name,
            "layer": layer,
            "unfreeze": unfreeze,
            **({"pooling": pooling} if pooling else {}),
            "val_accuracy": fit.val_accuracy,
            "best_epoch": fit.best_epoch,
        },
        replace=replace,
        cache_dir=cache_dir,
    )
    return TrainResult(model=record, fit=fit, module=module, cache_key=cached.key, cut=cut,
                       trainable_parameters=counts[0], total_parameters=counts[1])


def _parameter_counts(base: Any, trainable: Any) -> tuple[int, int]:
    """(parameters that train, all parameters) of a frozen base and the trained layers on top of it."""
    trained = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    total = sum(p.numel() for p in base.parameters()) + sum(p.numel() for p in trainable.parameters())
    return trained, total


def _labels_for(cached: Any, labels: Any) -> np.ndarray:
    """The labels of the cached rows: a class folder's own, or the given ones minus skipped files."""
    if cached.labels is not None:
        return cached.labels
    if labels is None:
        raise InputError("labels are missing; give one label per image (`--labels y.npy`), or one sub-folder per class")
    labels = np.asarray(labels)
    dropped = [s["index"] for s in cached.skipped]
    if dropped and len(labels) == len(cached.features) + len(dropped):
        labels = np.delete(labels, dropped)
    if len(labels) != len(cached.features):
        raise InputError(
            f"{len(labels)} labels for {len(cached.features)} inputs (+{len(dropped)} unreadable); "
            "give exactly one label per input, in order (a folder's files sorted by name)"
        )
    return labels


def _width(top: Any, features: np.ndarray) -> int:
    import torch

    with torch.no_grad():
        return int(np.prod(top(_as_tensor(np.asarray(features[:1]))).shape[1:]))


def _load_labels(labels: Any) -> np.ndarray:
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise InputError(f"labels file {path} does not exist; give a .npy array of one label per row")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read labels from {path} ({exc}); save them with numpy.save") from None
    return np.asarray(labels)


def _length(data: Any) -> int | None:
    if isinstance(data, np.ndarray):
        return len(data)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        try:
            return len(np.load(data, mmap_mode="r"))
        except (OSError, ValueError):
            return None
    return None


def _input_shape(extractor: Any, data: Any) -> list[int]:
    spec = getattr(extractor, "input_spec", None)
    shape = list(getattr(spec, "shape", None) or [])[1:]
    if shape and all(isinstance(d, int) for d in shape):
        return shape
    if isinstance(data, np.ndarray):
        return list(data.shape[1:])
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        return list(np.load(data, mmap_mode="r").shape[1:])
    raise InputError("cannot tell the model's input shape; the extractor's input_spec has no fixed shape")
