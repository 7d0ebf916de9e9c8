"""New heads on frozen bases: train on cached features, fine-tune the top layers, save as your own model."""
from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from zoo._threads import torch_threads
from zoo.datasources import array_fingerprint
from zoo.errors import InputError, NotConvergedWarning, UnfreezeDepthError, option
from zoo.lineage import training_lineage
from zoo.options import ExtractorOptions, TrainingConfig, accepts_options

if TYPE_CHECKING:
    import torch

    from zoo.catalog import Catalog
    from zoo.lineage import Lineage
    from zoo.records import InputSpec, Model

__all__ = [
    "FitResult",
    "Prepared",
    "TrainResult",
    "fit_head",
    "labels_for",
    "load_labels",
    "make_head",
    "prepare",
    "save_model",
    "compose",
    "fine_tune_parts",
    "train",
    "transfer_model",
]

DEFAULT_LR = 1e-3  # Adam's step size when the TrainingConfig leaves it to the trainer
# Features smaller than this are loaded into RAM once; larger ones are read a batch at a time
# from the memory map, so the cache never has to fit in memory.
IN_MEMORY_BYTES = 256 << 20


@dataclass
class FitResult:
    """A trained head and how training went.

    ``history`` has one dict per epoch: ``epoch``, ``loss``, ``accuracy`` and, with a validation
    set, ``val_loss`` and ``val_accuracy``. The head holds the weights of ``best_epoch`` (lowest
    validation loss), or of the last epoch without validation. ``converged`` is False when the
    validation loss was still falling at the last epoch allowed: more epochs would likely help.
    The head outputs logits (``outputs = "logits"``); `zoo.predict` turns them into probabilities.
    """

    head: Any  # torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    val_accuracy: float | None
    classes: list[Any] = field(default_factory=list)  # output index i means label classes[i]
    stopped_early: bool = False
    seconds: float = 0.0
    converged: bool = True
    val_rows: int = 0  # rows the validation accuracy was measured on
    outputs: str = "logits"

    @property
    def val_loss(self) -> float | None:
        """The validation loss of the best epoch (None without validation)."""
        return self.history[self.best_epoch - 1].get("val_loss") if self.history else None

    @property
    def notes(self) -> list[str]:
        """What the user should know about this fit, in words (the CLI prints them)."""
        if self.converged:
            return []
        from zoo.errors import option

        return [f"not converged: the best epoch is the last one ({self.best_epoch}), the validation loss was "
                f"still falling; raise {option('epochs', cli=str(2 * self.best_epoch), value=2 * self.best_epoch)}"]

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


def make_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), *, dropout: float = 0.0, seed: int = 0,
              standardize: bool = False):
    """A new classifier head: flatten, [standardize,] optional hidden ReLU layers, a linear output layer.

    It outputs logits (no softmax): `zoo.predict` applies one. With `standardize`, its first
    layer after flattening is a `Standardize`, fitted by `fit_head` on the training rows.
    """
    import torch
    from torch import nn

    if num_classes < 2:
        raise InputError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    if standardize:
        from zoo._standardize import Standardize

        layers.append(Standardize(in_features))
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


@accepts_options(config=TrainingConfig, exclude=("unfreeze",))
def fit_head(
    features: Any,
    labels: Any,
    config: TrainingConfig | None = None,
    *,
    head: Any = None,
    base: Any = None,
    validation: tuple[Any, Any] | None = None,
) -> FitResult:
    """Train the trainable layers on cached outputs of the frozen ones (the seed's loop).

    Every epoch shuffles the training rows; each batch of cached features and targets feeds
    `head` (a new one from :func:`make_head` when None); the rows held out for validation
    (``config.val_fraction``, stratified, or an explicit `validation`) pick the best epoch and
    stop training after ``config.patience`` epochs without improvement. A new head standardizes
    its input (``config.standardize``): the mean and spread of each feature over the training
    rows become its first layer, so features on any scale train at one learning rate.

    Args:
        features: one row per sample (an array, or the memory map `zoo.cache_features` returns).
        labels: one class label per row, any values (``FitResult.classes`` maps them back).
        config: epochs, batch size, learning rate, hidden layers of a new head, validation
            share, patience, seed, threads, standardize, progress (`zoo.TrainingConfig`; its
            defaults when None). Each field may be passed as a keyword instead
            (``fit_head(f, y, epochs=50)``), as the CLI's flags are.
        head: the torch module to train; a new one from :func:`make_head` when None. Its
            `Standardize` layers not yet fitted are fitted on the training rows first.
        base: a frozen torch module: `features` are then raw inputs and every batch goes through
            it first, the costly way the cache avoids, kept as the reference it must equal.
        validation: ``(features, labels)`` to validate on instead of holding rows out.

    Returns:
        The trained head (with its best epoch's weights) and the history of every epoch;
        ``FitResult.converged`` is False when the best epoch was the last one.

    Raises:
        InputError: labels and rows disagree, a single class, or a head with nothing to train.
        UnknownOptionError: a keyword that is no option (the message names the closest).

    >>> result = zoo.fit_head(zoo.cache_features(extractor, "x.npy"), np.load("y.npy"))  # doctest: +SKIP
    >>> result.val_accuracy, result.best_epoch                                        # doctest: +SKIP
    """
    import torch

    config = config or TrainingConfig()
    if len(labels) != len(features):
        raise InputError(
            f"{len(labels)} labels for {len(features)} rows of data; give exactly one label per row"
        )
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
    elif config.val_fraction > 0 and np.bincount(y).max() > 1:
        train_idx, val_idx = _split(y, config.val_fraction, config.seed)
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
        head = make_head(width, len(classes), config.hidden, seed=config.seed, standardize=config.standardize)
    fit_standardizers(head, train_rows, base, config.batch_size)
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise InputError("the head has no trainable parameters; unfreeze some or pass a new head")
    optimizer = torch.optim.Adam(params, lr=config.lr or DEFAULT_LR, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    with torch_threads(sum(p.numel() for p in params), config.threads):
        return _train_loop(head, base, optimizer, generator, (train_rows, train_y), (val_rows, val_target),
                           classes, config)


def fit_standardizers(head: Any, rows: _Rows, base: Any, batch_size: int) -> None:
    """Fit the head's unfitted `Standardize` layers on what reaches them from the training rows.

    One pass per layer, in eval mode without gradients: a hook sums each feature and its square
    as the rows go through (through `base` first, and through any unfrozen layers below the
    standardizer, with their weights as they are before training).
    """
    import torch

    from zoo._standardize import Standardize

    for layer in [m for m in head.modules() if isinstance(m, Standardize) and not bool(m.fitted)]:
        sums: list[Any] = [0.0, 0.0, 0]

        def measure(_module: Any, inputs: tuple) -> None:
            x = inputs[0].detach().to(torch.float64)
            sums[0] = sums[0] + x.sum(0)
            sums[1] = sums[1] + (x * x).sum(0)
            sums[2] += len(x)

        hook = layer.register_forward_pre_hook(measure)
        was_training = head.training
        head.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(rows), max(batch_size, 256)):
                    x = rows.take(torch.arange(i, min(i + max(batch_size, 256), len(rows))))
                    head(base(x) if base is not None else x)
        finally:
            hook.remove()
            head.train(was_training)
        layer.fit(sums[0], sums[1], sums[2])


def _train_loop(head, base, optimizer, generator, train, validation, classes, config: TrainingConfig) -> FitResult:
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    (train_rows, train_y), (val_rows, val_target) = train, validation
    epochs, batch_size, patience = config.epochs, config.batch_size, config.patience
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
    stopped_early = False
    start = time.perf_counter()
    quiet = not config.progress or not sys.stderr.isatty()  # no bar in logs and pipes
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
    result = FitResult(
        head=head,
        history=history,
        best_epoch=best_epoch,
        val_accuracy=best.get("val_accuracy"),
        classes=classes.tolist(),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
        # Still improving when the epochs ran out (only a validation set can tell; one epoch says nothing).
        converged=not (val_rows is not None and epochs > 1 and best_epoch == len(history) == epochs),
        val_rows=0 if val_rows is None else len(val_rows),
    )
    if not result.converged:
        warnings.warn(result.notes[0], NotConvergedWarning, stacklevel=4)  # the caller of fit_head
    return result


# ---------------------------------------------------------------------------------------------
# Whole models: a frozen base from the extractor plus a head.


def trainable_head(top: Any, head: Any, pool: Any = None):
    """The unfrozen top layers, the global pooling (if any) and the new head, trained together on the cache."""
    from collections import OrderedDict

    from torch import nn

    parts = OrderedDict(top=top, pool=pool, head=head) if pool is not None else OrderedDict(top=top, head=head)
    return nn.Sequential(parts)


def compose(base: Any, head: Any, pool: Any = None):
    """One module: the frozen base, the global pooling (if any) and the head (``base``, ``pool``, ``head``)."""
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


@accepts_options(options=ExtractorOptions)
def transfer_model(
    name: str,
    layer: str | int = -2,
    options: ExtractorOptions | None = None,
    *,
    head: Any = None,
    num_classes: int | None = None,
    hidden: Sequence[int] = (),
    unfreeze: int | str = 0,
    seed: int = 0,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
):
    """A cataloged model cut at `layer`, frozen, with a new head: one ``nn.Module`` to train.

    The result is ``nn.Sequential(base=..., head=...)``; with ``pooling="avg"`` or ``"max"`` the
    base pools the cut's spatial axes (as the extractor does). The base's weights are frozen
    (BatchNorm in eval mode) except its top `unfreeze` blocks (a conv/linear layer with its
    BatchNorm, Scale and activation), or every block above the cut point `unfreeze` names
    (``unfreeze="res4f"``); the default ``layer=-2`` drops the old output layer, which the head
    replaces. Prints how many parameters train.

    Args:
        name: the base model (cataloged name or ONNX file).
        layer: where to cut it.
        options: pooling, device, preprocessing of the base (`zoo.ExtractorOptions`); each field
            may be passed as a keyword instead (``pooling="avg"``).
        head: the new head; None makes one for `num_classes` with `hidden` layers (seeded by `seed`).
        num_classes, hidden, seed: the new head's shape and initialisation.
        unfreeze: top blocks of the base left trainable, or the cut point above which they are.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.
        cache_dir: the cache folder.
        verbose: print how many parameters train (to stderr); False is quiet.

    Returns:
        ``nn.Sequential(base=..., head=...)``.

    Raises:
        InputError: neither a head nor a number of classes, a negative `unfreeze`, or one
            naming no cut point of the base.
        UnknownLayerError: the layer is not in the model.

    >>> model = zoo.transfer_model("bvlc_alexnet", layer="fc7", num_classes=10, unfreeze=1)  # doctest: +SKIP
    """
    from zoo.extract import load_extractor

    if head is None and num_classes is None:
        raise InputError("give the new head (head=nn.Module) or the number of classes (num_classes=N)")
    _check_unfreeze(unfreeze)
    options = (options or ExtractorOptions()).replace(layer=layer)
    extractor = load_extractor(name, options=options, catalog=catalog, cache_dir=cache_dir)
    base = extractor.to_torch()  # pools as the extractor does
    if unfreeze:
        base.unfreeze(unfreeze, verbose=False)
    if head is None:
        width = int(np.prod([d for d in extractor.output_shape[1:]]))
        head = make_head(width, num_classes, hidden, seed=seed)
    model = compose(base, head)
    if verbose:
        print(trainable_summary(model, base), file=sys.stderr)
    return model


def _check_unfreeze(unfreeze: int | str) -> None:
    """A count of blocks (0 or more) or a layer name; TrainingConfig is where that is checked."""
    TrainingConfig(unfreeze=unfreeze)


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
    task: str | None = None,
    outputs: str = "logits",
    lineage: Lineage | None = None,
) -> Model:
    """Export a torch model to ONNX and register it in the catalog as your own model.

    The file goes to `path` (default ``<cache>/models/<name>/<name>.onnx``); the catalog entry
    has framework "onnx", source "local" and one artifact with role "model". `input_spec` (the
    base's) keeps its preprocessing (mean, std, resize, crop...) so images reach the new model
    as they reached the base. `task` defaults to "image-classification" for a model fed images
    (a 4-D input with a layout), else "classification"; ``meta["outputs"]`` records what the
    model outputs ("logits" or "probabilities"), so `zoo.predict` knows whether to apply a softmax. `lineage` says how it was
    made (`zoo.lineage.training_lineage`).
    """
    from dataclasses import replace as _replace

    from zoo.records import InputSpec
    from zoo.torch_models import check_new_name, export_onnx, own_model, register

    check_new_name(name, catalog, replace, example="my-model")
    if outputs not in ("logits", "probabilities"):
        raise InputError(f"outputs={outputs!r} is not one of 'logits', 'probabilities'")
    if task is None:
        images = len(input_shape) == 3 and (layout or (input_spec.layout if input_spec else None))
        task = "image-classification" if images else "classification"
    record = own_model(
        name, model, task=task, description=description,
        input=_replace(input_spec or InputSpec(), name="input", shape=[None, *input_shape], dtype="float32",
                       layout=layout or (input_spec.layout if input_spec else None)),
        meta={"trained_by": "zoo", "outputs": outputs, **({"classes": list(classes)} if classes is not None else {}),
              **(meta or {})},
    )
    return register(export_onnx(model, input_shape), record, catalog=catalog, path=path, replace=replace,
                    cache_dir=cache_dir, lineage=lineage)


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
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable inputs left out: index, path, reason
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
    from zoo.extract import load_extractor

    _check_unfreeze(unfreeze)
    if not unfreeze:
        raise InputError(f"{option('unfreeze', unfreeze)}: fine-tuning needs at least one block to unfreeze")
    extractor = load_extractor(name, layer, catalog=catalog, cache_dir=cache_dir)
    full = extractor.to_torch()
    all_layers = list_layers(name, catalog=catalog, cache_dir=cache_dir)
    output = extractor.meta.outputs[0]
    target = next(info for info in all_layers if info.output == output)
    if isinstance(unfreeze, str):
        low = next((info for info in all_layers if info.name == unfreeze), None)
        cuts = [info.name for info in all_layers if info.is_cut_point and info.index < target.index]
        if low is None or not low.is_cut_point or low.index >= target.index:
            error = InputError if low is None else UnfreezeDepthError  # a sweep skips the latter's row
            raise error(
                f"{option('unfreeze', unfreeze)} is not a cut point below {target.name} in {name}; cut points: "
                f"{', '.join(cuts[-8:]) or 'none'} (zoo layers {name})"
            )
        chosen = full.layers_above(low.output)
    else:
        blocks = len(full.blocks)
        if unfreeze > blocks:
            raise UnfreezeDepthError(
                f"{option('unfreeze', unfreeze)}, but {name} cut at {extractor.layer!r} has {blocks} blocks "
                f"(a conv/linear layer with its BatchNorm/Scale/activation); choose {option('unfreeze')} between 0 "
                f"and {blocks}, or a cut point", unfreeze=unfreeze, layers=blocks,
            )
        chosen = [node for block in full.blocks[blocks - unfreeze:] for node in block.layers]
        lowest = next(info for info in all_layers if chosen[0] in info.nodes)
        below = [info for info in all_layers if info.index < lowest.index and info.is_cut_point]
        if not below:
            raise UnfreezeDepthError(
                f"{option('unfreeze', unfreeze)} unfreezes every block of {name} up to {target.name}: nothing "
                f"stays frozen to cache; choose {option('unfreeze')} below {unfreeze} (or train from scratch)",
                unfreeze=unfreeze, layers=blocks,
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


@dataclass
class Prepared:
    """One cut made ready to train at: its features cached, its labels, and what trains on them.

    With ``unfreeze=0`` the features are the cut layer's and only a new head trains; with
    ``unfreeze=k`` they are cached below the top k blocks (`cut`; ``unfreeze="res4f"``: at that
    cut point), and `top`, those blocks as a torch module, trains with the head.
    """

    name: str
    layer: Any  # the cut asked for
    cut: Any  # where the features were cached
    extractor: Any  # the frozen part, cut at `cut` (zoo.extract.Extractor)
    cached: Any  # its features (zoo.features.CachedFeatures)
    labels: np.ndarray  # one per cached row
    top: Any = None  # the unfrozen layers (a torch module), or None
    pool: Any = None  # the head's global pooling when the cut is pooled above the cache, else None
    seconds: float = 0.0  # spent caching

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def trainable(self, training: TrainingConfig) -> Any:
        """What trains on the cached features: a new head (its hidden layers and seed from
        `training`), after the unfrozen layers and the pooling when there are any."""
        features = self.cached.features
        if self.top is None:
            width = int(np.prod(features.shape[1:]))
        else:
            width = _width(self.top if self.pool is None else trainable_head(self.top, self.pool), features)
        head = make_head(width, len(self.classes), training.hidden, seed=training.seed,
                         standardize=training.standardize)
        return head if self.top is None else trainable_head(self.top, head, self.pool)

    def module(self, fit: FitResult) -> Any:
        """The whole trained model: the frozen base (pooling as its extractor does) and the trained layers."""
        return compose(self.extractor.to_torch(), fit.head)

    def parameter_counts(self, trainable: Any) -> tuple[int, int]:
        """(parameters that train, all parameters of the model) for `trainable` on this cut."""
        trained = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.extractor.to_torch().parameters())
        return trained, frozen + sum(p.numel() for p in trainable.parameters())


def prepare(
    name: str,
    data: Any,
    labels: Any = None,
    *,
    extractor: ExtractorOptions | None = None,
    training: TrainingConfig | None = None,
    engine: Any = "local",
    on_error: str = "skip",
    image_size: Sequence[int] | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Prepared:
    """Cache `data` through `name` where training starts, and pair the cached rows with labels.

    The shared first half of `train` and `zoo.sweep`: cut at ``extractor.layer``, or with
    ``training.unfreeze = k`` at the last cut point below the top k blocks (which then train
    too; ``unfreeze="res4f"``: at that cut point); cache the data's features there (reused when cached); drop the labels of
    unreadable images.

    Args:
        name: the base model (cataloged name or ONNX file).
        data: a `zoo.DataSource` or anything `zoo.as_source` takes; a folder with one sub-folder
            per class brings its own labels.
        labels: one label per input (array or ``.npy`` path); None for a class folder.
        extractor: the cut layer and how the frozen layers run (`zoo.ExtractorOptions`).
        training: ``unfreeze`` and ``progress`` are read here (`zoo.TrainingConfig`).
        engine: where the features are computed ("local", "ray" or a `zoo.Engine`).
        on_error: an unreadable image is left out and reported ("skip") or stops the run ("raise").
        image_size: (height, width) images are resized to when the model does not fix its input size.
        catalog: the catalog the base model is in.
        cache_dir: the cache folder.

    Returns:
        A `Prepared` cut: `trainable` makes what trains, `module` the whole model after.

    Raises:
        InputError: labels missing or not one per input; `unfreeze` too deep for the cut.
    """
    from zoo.extract import load_extractor
    from zoo.features import extract_features

    extractor = extractor or ExtractorOptions()
    training = training or TrainingConfig()
    labels = None if labels is None else load_labels(labels)
    data_len = _length(data)
    if labels is not None and data_len is not None and len(labels) != data_len:
        raise InputError(f"{len(labels)} labels for {data_len} rows of data; give exactly one label per row")
    if labels is None and not _brings_labels(data):
        raise InputError("labels are missing; give one label per row (`--labels y.npy`), or an image folder")
    if not training.unfreeze:
        cut, top = extractor.layer, None
    else:
        cut, top = fine_tune_parts(name, extractor.layer, training.unfreeze, catalog=catalog, cache_dir=cache_dir)
    # Pooling belongs to the cut layer: cached features are pooled only when cached at it.
    frozen = load_extractor(name, cut, extractor.replace(pooling=extractor.pooling if top is None else None),
                            catalog=catalog, cache_dir=cache_dir)
    started = time.perf_counter()
    cached = extract_features(frozen, data, cache_dir=cache_dir, progress=training.progress, engine=engine,
                              on_error=on_error, image_size=image_size)
    seconds = time.perf_counter() - started
    return Prepared(name=name, layer=extractor.layer, cut=cut, extractor=frozen, cached=cached,
                    labels=labels_for(cached, labels), top=top,
                    pool=None if top is None else _pool_module(extractor.pooling, frozen),
                    seconds=seconds)


def _brings_labels(data: Any) -> bool:
    """Data whose labels come with it: a folder (of class sub-folders), or a source that has them."""
    from zoo.datasources import is_source

    if is_source(data):
        return data.labels is not None or bool(getattr(data, "root", None))
    return isinstance(data, (str, os.PathLike)) and Path(data).is_dir()


@accepts_options(training=TrainingConfig, extractor=ExtractorOptions, shared=("threads",),
                 renamed={"new_name": "name"})
def train(
    model: str,
    data: Any,
    labels: Any = None,
    *,
    name: str,
    extractor: ExtractorOptions | None = None,
    training: TrainingConfig | None = None,
    engine: Any = "local",
    on_error: str = "skip",
    image_size: Sequence[int] | None = None,
    replace: bool = False,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Cache `data` through `model` cut at a layer, train a head (and the top layers), save it.

    The trained model (frozen base + trained layers) is registered as `name`, exported to
    ONNX. With ``unfreeze=k`` the features are cached below the top k blocks of the base (a
    block: a conv/linear layer with its BatchNorm, Scale and activation), with
    ``unfreeze="res4f"`` at that cut point; those blocks train with the head on the cached
    outputs. How many parameters train is printed (with progress, on a terminal) and kept in the
    result. Every option is a keyword spelled as the CLI's flag (``layer="fc7", epochs=50,
    pooling="avg"``), or a field of the `extractor` / `training` objects; ``batch_size`` is the
    head's (the extractor's goes in its object), ``threads`` both the torch and the onnxruntime
    threads.

    Args:
        model: the base model (cataloged name or ONNX file).
        data: a ``.npy`` path or array (model-ready unless ``preprocess=True``: raw pixels),
            a folder with one sub-folder per class (its labels), a flat folder, image file or list
            of image paths with `labels`, or a `zoo.DataSource`.
        labels: one label per input; None for a class folder.
        name: the catalog name of the trained model.
        extractor: the cut layer (``-2`` drops the top layer), pooling, device, preprocessing
            (`zoo.ExtractorOptions`).
        training: epochs, batch size, learning rate, hidden layers, validation share, patience,
            seed, threads, unfreeze, standardize, progress (`zoo.TrainingConfig`).
        engine: where the features are computed: "local", "ray" or a `zoo.Engine`.
        on_error: an unreadable image is left out and reported ("skip", its label dropped too)
            or stops the run ("raise").
        image_size: (height, width) images are resized to when the model does not fix its input size.
        replace: overwrite a model called `name`.
        catalog: the catalog (path, URL or `Catalog`).
        cache_dir: the cache folder.

    Returns:
        The catalog entry, the fit, the torch module, the cache key, where it was cached and the
        inputs skipped.

    Raises:
        DuplicateModelError: `name` is taken and `replace` is False (checked before any work).
        InputError: labels missing or not one per input, bad options.
        UnknownOptionError: a keyword that is no option (the message names the closest).

    >>> zoo.train("bvlc_alexnet", "photos/", name="pets", layer="fc7", epochs=50)  # doctest: +SKIP
    """
    from zoo.catalog import open_catalog
    from zoo.torch_models import check_new_name

    extractor = extractor or ExtractorOptions()
    training = training or TrainingConfig()
    cat = open_catalog(catalog)
    check_new_name(name, cat, replace, example="my-model")
    prepared = prepare(model, data, labels, extractor=extractor, training=training, engine=engine, on_error=on_error,
                       image_size=image_size, catalog=cat, cache_dir=cache_dir)
    trainable = prepared.trainable(training)
    counts = prepared.parameter_counts(trainable)
    if training.progress and sys.stderr.isatty():  # as the progress bars: not in logs and pipes (`zoo train` says it)
        print(f"training {counts[0]:,} of {counts[1]:,} parameters", file=sys.stderr)
    with warnings.catch_warnings():  # said again below, to the caller of train
        warnings.simplefilter("ignore", NotConvergedWarning)
        fit = fit_head(prepared.cached.features, prepared.labels, training, head=trainable)
    if not fit.converged:
        warnings.warn(fit.notes[0], NotConvergedWarning, stacklevel=3)
    module = prepared.module(fit)
    frozen = prepared.extractor
    spec = getattr(frozen, "input_spec", None)
    cached = prepared.cached
    layer = extractor.layer
    base = _base_record(model, cat)
    lineage = training_lineage(
        frozen, {**(cached.lineage or {}), "key": cached.key}, array_fingerprint(prepared.labels),
        settings={"base_model": model, "layer": layer if isinstance(layer, (str, int)) else list(layer),
                  "cached_at": prepared.cut, "unfreeze": training.unfreeze, "hidden": list(training.hidden),
                  "epochs": training.epochs, "batch_size": training.batch_size, "lr": training.lr,
                  "weight_decay": training.weight_decay, "val_fraction": training.val_fraction,
                  "patience": training.patience, "seed": training.seed, "pooling": extractor.pooling},
        figures={"val_accuracy": fit.val_accuracy, "best_epoch": fit.best_epoch,
                 "epochs_run": len(fit.history), "rows": int(len(prepared.labels)),
                 "classes": len(prepared.classes)})
    record = save_model(
        module,
        name,
        input_shape=_input_shape(frozen, data),
        catalog=cat,
        layout=getattr(spec, "layout", None),
        input_spec=spec,
        # an image folder's classes are its sub-folder names
        classes=[cached.classes[c] for c in fit.classes] if cached.classes else fit.classes,
        description=f"{model} cut at {layer}, new head trained by zoo",
        task=base.task if base is not None and base.task and base.task.endswith("classification") else None,
        meta={
            "base_model": model,
            "layer": layer if isinstance(layer, (str, int)) else list(layer),
            "unfreeze": training.unfreeze,
            **({"pooling": extractor.pooling} if extractor.pooling else {}),
            "standardized": training.standardize,
            "val_accuracy": fit.val_accuracy,
            "best_epoch": fit.best_epoch,
            "converged": fit.converged,
        },
        replace=replace,
        cache_dir=cache_dir,
        lineage=lineage,
    )
    return TrainResult(model=record, fit=fit, module=module, cache_key=cached.key, cut=prepared.cut,
                       skipped=list(cached.skipped), trainable_parameters=counts[0], total_parameters=counts[1])


def _base_record(name: str, catalog: Any) -> Model | None:
    """The base model's catalog entry, None for an ONNX file that is not in the catalog."""
    from zoo.errors import UnknownModelError

    try:
        return catalog.get(name)
    except UnknownModelError:
        return None


def labels_for(cached: Any, labels: Any) -> np.ndarray:
    """The labels of the cached rows: a class folder's own, or the given ones minus skipped files.

    Given labels are one per input, in order; those of the inputs that could not be read are
    dropped with them, so labels and rows stay aligned.
    """
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


def load_labels(labels: Any) -> np.ndarray:
    """Labels as an array: given as one, or read from a ``.npy`` file (never unpickled)."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise InputError(f"labels file {path} does not exist; give a .npy array of one label per row")
        from zoo.npy import load

        return load(path, what="labels")
    return np.asarray(labels)


def _length(data: Any) -> int | None:
    """Rows of an array or a .npy file (of such a source too); None for others (images may be skipped)."""
    from zoo.datasources import ArraySource, NpyFileSource

    if isinstance(data, (ArraySource, NpyFileSource)):
        return data.length
    if isinstance(data, np.ndarray):
        return len(data)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        from zoo.npy import read_header

        try:
            shape = read_header(data).shape
        except InputError:
            return None  # not a .npy file (an image): the caller counts otherwise
        return shape[0] if shape else None
    return None


def _input_shape(extractor: Any, data: Any) -> list[int]:
    spec = getattr(extractor, "input_spec", None)
    shape = list(getattr(spec, "shape", None) or [])[1:]
    if shape and all(isinstance(d, int) for d in shape):
        return shape
    from zoo.datasources import ArraySource, NpyFileSource

    if isinstance(data, ArraySource):
        data = data.array
    if isinstance(data, (np.ndarray, NpyFileSource)):
        return list(data.shape[1:])
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        from zoo.npy import read_header

        return list(read_header(data).shape[1:])
    raise InputError("cannot tell the model's input shape; the extractor's input_spec has no fixed shape")
