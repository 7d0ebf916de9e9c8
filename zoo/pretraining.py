"""Greedy layer-wise pretraining: stacks of autoencoders or RBMs trained on unlabelled data.

When no pretrained model fits the task but unlabelled data is plentiful, train the layers one
at a time, each on the outputs of the frozen layers below it, then fine-tune with the labels:

>>> result = pretrain(X_unlabelled, layers=[300, 100], method="rbm", name="my-base")  # doctest: +SKIP
>>> classifier = finetune(result, X_few, y_few)                                       # doctest: +SKIP

With ``name`` the stack is saved to the catalog as an ONNX model whose layer outputs are named
``layer1``, ``layer2``..., so it is listed, cut and fine-tuned like any other zoo model.

`python -m zoo.demos.digits` prints the digits check of docs/pretrain.md.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo._threads import torch_threads
from zoo.datasources import array_fingerprint
from zoo.errors import InputError, ResourceLimitError, option
from zoo.lineage import pretraining_lineage
from zoo.options import PretrainConfig, TrainingConfig, accepts_options
from zoo.torch_models import check_new_name

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

    from zoo.catalog import Catalog
    from zoo.records import Model

METHODS = ("autoencoder", "rbm")
MIN_ROWS = 10
# Adam step sizes that train both kinds of layer on inputs in [0, 1] within tens of epochs.
DEFAULT_LR = {"autoencoder": 0.01, "rbm": 0.02}
# Cached outputs of the frozen layers bigger than this go to a memory-mapped file in the cache
# folder instead of RAM; the next layer then streams its batches from disk.
MEMMAP_BYTES = 256 * 2**20


@dataclass
class PretrainResult:
    """What `pretrain` returns.

    ``stack`` is an ``nn.Sequential`` of ``layer1``, ``layer2``... (each ``Linear`` then
    ``Sigmoid``), preceded by a ``standardize`` step when the input units are Gaussian, so it
    takes raw rows. ``losses[i][e]`` is layer i+1's mean squared reconstruction error in epoch
    e; ``seconds[i]`` the time it took to train. ``units`` are the trained RBMs or
    autoencoders (with their decoders), ``model`` the catalog record when saved.
    """

    stack: nn.Sequential
    method: str
    layers: list[int]
    visible: str
    losses: list[list[float]]
    seconds: list[float]
    units: list[Any]
    settings: dict[str, Any] = field(default_factory=dict)
    model: Model | None = None

    def transform(self, X: Any, layer: int | None = None) -> np.ndarray:
        """Outputs of layer ``layer`` (1-based; default the top) for the rows of X."""
        import torch

        layer = len(self.layers) if layer is None else self._check_layer(layer)
        x = torch.from_numpy(_validate_data(X, n_features=self.n_features))
        with torch.no_grad():
            for module in list(self.stack.children())[: layer + self._offset]:
                x = module(x)
        return x.numpy()

    def free_energy(self, X: Any, layer: int = 1) -> np.ndarray:
        """Free energy of each row of X under the RBM of ``layer`` (lower: more probable)."""
        import torch

        if self.method != "rbm":
            raise InputError(f"free energy is defined for RBM stacks; this one is {self.method!r}")
        layer = self._check_layer(layer)
        x = torch.from_numpy(_validate_data(X, n_features=self.n_features))
        with torch.no_grad():
            for module in list(self.stack.children())[: layer - 1 + self._offset]:
                x = module(x)
            return self.units[layer - 1].free_energy(x).numpy()

    @property
    def n_features(self) -> int:
        return self.units[0].weight.shape[1]

    @property
    def _offset(self) -> int:
        return 1 if hasattr(self.stack, "standardize") else 0

    def _check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 1 <= layer <= len(self.layers):
            raise InputError(f"layer {layer!r} is not in this stack; choose 1 to {len(self.layers)}")
        return layer

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layers": self.layers,
            "visible": self.visible,
            "losses": self.losses,
            "seconds": self.seconds,
            "settings": self.settings,
            "model": self.model.to_dict() if self.model is not None else None,
        }


@accepts_options(config=PretrainConfig, renamed={"X": "data"})
def pretrain(
    data: Any,
    layers: Sequence[int] = (300, 100),
    method: str = "autoencoder",
    config: PretrainConfig | None = None,
    *,
    name: str | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
    replace: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> PretrainResult:
    """Train a stack of sigmoid layers greedily, one layer at a time, on unlabelled rows.

    Args:
        data: unlabelled rows of shape (rows, features), finite values.
        layers: hidden units per layer, bottom first.
        method: "autoencoder" (tied weights unless ``config.tied`` is False) or "rbm" (trained
            with CD-k). Upper layers see sigmoid outputs, so they are always Bernoulli units.
        config: epochs, batch size, learning rate, denoising, sparsity, CD-k steps, visible
            units, tied, seed, threads, caching, progress (`zoo.PretrainConfig`; its defaults when
            None). Each field may be passed as a keyword instead (``epochs=60``), as `zoo pretrain`'s flags.
        name, catalog, replace: save the stack to the catalog under `name` (ONNX).
        cache_dir: the cache folder (default $ZOO_CACHE): the saved model and the big scratch
            files go there.

    Returns:
        The stack (`PretrainResult.stack`), its layers' losses and times, the catalog record.

    Raises:
        InputError: bad data, layer sizes, method or settings (one line naming the fix).
        DuplicateModelError: `name` is taken and `replace` is False.

    Example
    -------
    >>> from sklearn.datasets import load_digits
    >>> result = pretrain(load_digits().data / 16, layers=[100, 30], method="rbm", progress=False)
    >>> result.transform(load_digits().data[:5] / 16).shape
    (5, 30)
    """
    config = config or PretrainConfig()
    epochs, batch_size, denoise, cd_k, tied = config.epochs, config.batch_size, config.denoise, config.cd_k, config.tied
    seed, threads, cache, progress = config.seed, config.threads, config.cache, config.progress
    data = _validate_data(data)
    data_sha256 = array_fingerprint(data)  # the lineage's parent: these rows, before any standardizing
    sizes = _validate_layers(layers)
    settings = _validate_settings(method, config, len(data))
    _check_size(data, sizes, config.batch_size, config.tied, config.cache, cache_dir)
    visible = _visible_units(data, config.visible)
    if name is not None:
        check_new_name(name, catalog, replace)

    import torch

    from zoo.autoencoder import Autoencoder
    from zoo.rbm import RBM

    standardize = None
    if visible == "gaussian":
        standardize = _Standardize(data)
        data = standardize.apply(data)

    units: list[Any] = []
    losses: list[list[float]] = []
    seconds: list[float] = []
    with contextlib.ExitStack() as scratch:
        inputs = data  # the cached outputs of the frozen layers below the layer in training
        for index, n_hidden in enumerate(sizes):
            started = time.perf_counter()
            if cache and index > 0:
                inputs = _encode_all(units[-1], inputs, scratch, cache_dir)
            generator = torch.Generator().manual_seed(seed * 7919 + index)
            n_visible = data.shape[1] if index == 0 else sizes[index - 1]
            unit_visible = visible if index == 0 else "bernoulli"
            if settings["method"] == "rbm":
                unit = RBM(n_visible, n_hidden, visible=unit_visible, cd_k=cd_k,
                           sparsity=settings["sparsity"], generator=generator)
            else:
                unit = Autoencoder(n_visible, n_hidden, visible=unit_visible, tied=tied,
                                   denoise=denoise, sparsity=settings["sparsity"],
                                   generator=generator)
            label = f"layer {index + 1}/{len(sizes)} {settings['method']} {n_visible}->{n_hidden}"
            with torch_threads(n_visible * n_hidden, threads):
                losses.append(_train_layer(
                    unit, inputs if cache else data, [] if cache else units, generator,
                    epochs=epochs, batch_size=batch_size, lr=settings["lr"],
                    label=label, progress=progress,
                ))
            unit.eval().requires_grad_(False)  # frozen from here on
            units.append(unit)
            seconds.append(time.perf_counter() - started)

    result = PretrainResult(
        stack=_build_stack(units, standardize),
        method=settings["method"],
        layers=sizes,
        visible=visible,
        losses=losses,
        seconds=seconds,
        units=units,
        settings={**settings, "epochs": epochs, "batch_size": batch_size, "denoise": denoise,
                  "cd_k": cd_k, "tied": tied, "seed": seed, "rows": len(data), "data_sha256": data_sha256},
    )
    if name is not None:
        result.model = save(result, name, catalog=catalog, replace=replace, cache_dir=cache_dir)
    return result


def _train_layer(
    unit: Any,
    inputs: np.ndarray,
    frozen: list[Any],
    generator: torch.Generator,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    label: str,
    progress: bool,
) -> list[float]:
    """Train one layer; return its mean reconstruction error per epoch."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(unit.parameters(), lr=lr)
    rows = len(inputs)
    errors: list[float] = []
    bar = tqdm(range(epochs), desc=label, file=sys.stderr, leave=True,
               disable=not progress or not sys.stderr.isatty())  # no bar in logs and pipes
    for _ in bar:
        order = torch.randperm(rows, generator=generator).numpy()
        total = 0.0
        for start in range(0, rows, batch_size):
            # Sorted indices read a memmap front to back; the batch is the same set of rows.
            index = np.sort(order[start:start + batch_size])
            batch = torch.from_numpy(np.ascontiguousarray(inputs[index]))
            with torch.no_grad():
                for lower in frozen:  # only when not caching: rerun the frozen layers
                    batch = lower.encode(batch)
            loss, error = unit.loss(batch, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(error) * len(index)
        errors.append(total / rows)
        bar.set_postfix(reconstruction_error=f"{errors[-1]:.4f}")
    bar.close()
    return errors


def _encode_all(unit: Any, inputs: np.ndarray, scratch: contextlib.ExitStack, cache_dir: Any = None) -> np.ndarray:
    """Run a frozen layer once over every row: the next layer's training data."""
    import torch

    n_hidden = unit.weight.shape[0]
    shape = (len(inputs), n_hidden)
    if len(inputs) * n_hidden * 4 > MEMMAP_BYTES:
        from zoo.cache import root

        root(cache_dir).mkdir(parents=True, exist_ok=True)
        folder = scratch.enter_context(
            tempfile.TemporaryDirectory(prefix="pretrain-", dir=root(cache_dir))
        )
        outputs = np.lib.format.open_memmap(
            Path(folder) / "features.npy", mode="w+", dtype=np.float32, shape=shape
        )
    else:
        outputs = np.empty(shape, dtype=np.float32)
    chunk = 4096
    with torch.no_grad():
        for start in range(0, len(inputs), chunk):
            block = torch.from_numpy(np.ascontiguousarray(inputs[start:start + chunk]))
            outputs[start:start + chunk] = unit.encode(block).numpy()
    return outputs


class _Standardize:
    """Per-feature mean and standard deviation of the training rows (Gaussian visible units)."""

    def __init__(self, data: np.ndarray) -> None:
        self.mean = data.mean(axis=0).astype(np.float32)
        std = data.std(axis=0)
        # A constant feature would divide by zero; leave it centred instead.
        self.std = np.where(std > 1e-8, std, 1.0).astype(np.float32)

    def apply(self, data: np.ndarray) -> np.ndarray:
        return ((data - self.mean) / self.std).astype(np.float32)


def _build_stack(units: list[Any], standardize: _Standardize | None) -> nn.Sequential:
    """The encoders as a plain torch stack: standardize?, layer1 = Linear + Sigmoid, ..."""
    from collections import OrderedDict

    import torch
    from torch import nn

    class Standardize(nn.Module):
        """(x - mean) / std with the training data's statistics."""

        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    modules: OrderedDict[str, nn.Module] = OrderedDict()
    if standardize is not None:
        modules["standardize"] = Standardize(standardize.mean, standardize.std)
    for index, unit in enumerate(units, start=1):
        n_hidden, n_visible = unit.weight.shape
        linear = nn.Linear(n_visible, n_hidden)
        with torch.no_grad():
            linear.weight.copy_(unit.weight)
            linear.bias.copy_(unit.hidden_bias)
        modules[f"layer{index}"] = nn.Sequential(linear, nn.Sigmoid())
    return nn.Sequential(modules).eval()


# ---------------------------------------------------------------------------------------------
# saving to the catalog


def save(
    result: PretrainResult,
    name: str,
    *,
    catalog: str | os.PathLike | Catalog | None = None,
    replace: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Model:
    """Export the stack to ONNX under the cache folder and register it in the catalog."""
    from zoo.records import InputSpec
    from zoo.torch_models import own_model, register

    check_new_name(name, catalog, replace)
    shape = "-".join(str(n) for n in [result.n_features, *result.layers])
    model = own_model(
        name,
        result.stack,
        task="feature-extraction",
        architecture=f"{result.method} stack {shape}",
        description=(
            f"Greedy layer-wise {result.method} stack ({shape}, sigmoid units) pretrained by "
            f"zoo on {result.settings['rows']} unlabelled rows."
        ),
        tags=["pretrained", result.method],
        input=InputSpec(name="input", shape=[None, result.n_features], dtype="float32", layout="NC"),
        meta={
            "pretrained": {
                "method": result.method,
                "layers": result.layers,
                "visible": result.visible,
                "epochs": result.settings["epochs"],
                "seed": result.settings["seed"],
                "losses": result.losses,
                "seconds": result.seconds,
                "settings": result.settings,
            },
            "layers": [f"layer{i}" for i in range(1, len(result.layers) + 1)],
        },
    )
    settings = {k: v for k, v in result.settings.items() if k not in ("rows", "data_sha256")}
    lineage = pretraining_lineage(
        result.settings.get("data_sha256"), result.settings["rows"],
        {**settings, "layers": result.layers, "visible": result.visible},
        {"final_loss": result.losses[-1][-1] if result.losses and result.losses[-1] else None,
         "layer_final_losses": [losses[-1] if losses else None for losses in result.losses],
         "seconds": [round(s, 3) for s in result.seconds]})
    return register(export_onnx(result.stack, result.n_features), model, catalog=catalog, replace=replace,
                    cache_dir=cache_dir, lineage=lineage)


def export_onnx(stack: nn.Sequential, n_features: int) -> onnx.ModelProto:
    """The stack as ONNX: input ``input`` (batch, features), each layer's output named
    ``layer1``, ``layer2``... (its node too), the top one the graph output."""
    import onnx

    from zoo.torch_models import export_onnx as export

    top = sum(1 for key, _ in stack.named_children() if key.startswith("layer"))
    model = export(stack, [n_features], output_name=f"layer{top}")
    _name_layers(model.graph)
    onnx.checker.check_model(model)
    return model


def _name_layers(graph: Any) -> None:
    """Rename torch's scoped names (/layer1/layer1.1/Sigmoid) to layer1, layer1.linear..."""
    tensors: dict[str, str] = {}
    for node in graph.node:
        scope = node.name.strip("/").split("/")[0]
        if not scope:
            continue
        suffix = {"Sigmoid": "", "Gemm": ".linear", "Sub": ".centre", "Div": ""}.get(node.op_type)
        new = scope + (f".{node.op_type.lower()}" if suffix is None else suffix)
        node.name = new
        for i, output in enumerate(node.output):
            tensors[output] = new if i == 0 else f"{new}:{i}"
    for init in graph.initializer:  # layer1.0.weight -> layer1.weight
        tensors[init.name] = re.sub(r"^(layer\d+)\.0\.", r"\1.", init.name)
    for node in graph.node:
        node.input[:] = [tensors.get(n, n) for n in node.input]
        node.output[:] = [tensors.get(n, n) for n in node.output]
    for init in graph.initializer:
        init.name = tensors.get(init.name, init.name)
    for value in list(graph.output) + list(graph.value_info):
        value.name = tensors.get(value.name, value.name)


# ---------------------------------------------------------------------------------------------
# checking the user's input


def _validate_data(X: Any, n_features: int | None = None) -> np.ndarray:
    """X as a float32 (rows, features) array, or an InputError that says what is wrong."""
    try:
        array = np.asarray(X)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise InputError(f"X cannot be read as an array ({exc}); pass a 2-D numeric array") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"X must be numeric; got dtype {array.dtype}. Convert it with X.astype('float32')")
    if array.ndim != 2:
        raise InputError(
            f"X must be 2-D (rows, features); got shape {array.shape}. "
            "Flatten each row with X.reshape(len(X), -1)"
        )
    if array.size == 0:
        raise InputError(f"X is empty (shape {array.shape}); pass at least {MIN_ROWS} rows of features")
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(
            f"X has {int(bad.sum())} NaN or infinite values (first at row {row}, column {column}); "
            "drop or impute them first"
        )
    if n_features is not None and array.shape[1] != n_features:
        raise InputError(f"X has {array.shape[1]} features; this stack takes {n_features}")
    return array


def _check_size(data: np.ndarray, sizes: list[int], batch_size: int, tied: bool, cache: bool,
                cache_dir: str | os.PathLike | None) -> None:
    """Refuse a stack that would not fit in memory (or its cached layer outputs on disk), before torch
    allocates it: ``--layers 100000000`` is a typo, not a 16 GiB allocation followed by a crash."""
    import shutil

    from zoo.memory import check_training, human

    widths = [int(data.shape[1]), *sizes]
    parameters = sum(a * b * (1 if tied else 2) + a + b for a, b in zip(widths, widths[1:]))
    check_training(parameters, batch_size, max(widths), f"the stack --layers {','.join(map(str, sizes))}",
                   "give fewer hidden units")
    if not cache:
        return
    from zoo.cache import root

    need = len(data) * max(sizes) * 4  # the widest layer's outputs for every row, kept for the next layer
    folder = root(cache_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > MEMMAP_BYTES and need > free:
        raise ResourceLimitError(f"the layer outputs of --layers {','.join(map(str, sizes))} for {len(data):,} rows "
                                 f"would take {human(need)} in the cache, more than the {human(free)} free there; "
                                 f"give fewer hidden units, or point ZOO_CACHE at a bigger disk")


def _validate_layers(layers: Any) -> list[int]:
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    try:
        sizes = list(layers)
    except TypeError:
        sizes = None
    if not sizes or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in sizes
    ):
        raise InputError(f"layers must be positive integers, bottom first, like [300, 100]; got {layers!r}")
    return [int(n) for n in sizes]


def _validate_settings(method: str, config: PretrainConfig, rows: int) -> dict[str, Any]:
    """What depends on the method and the data: the method itself, its learning rate, denoising."""
    if method not in METHODS:
        raise InputError(f"method {method!r} is not known; choose one of: {', '.join(METHODS)}")
    if rows < MIN_ROWS:
        raise InputError(f"X has {rows} rows; pretraining needs at least {MIN_ROWS}")
    if config.denoise and method != "autoencoder":
        raise InputError(f"denoise applies to autoencoders; use {option('method', 'autoencoder')} or "
                         f"{option('denoise', 0)}")
    lr = DEFAULT_LR[method] if config.lr is None else config.lr
    return {"method": method, "lr": float(lr), "sparsity": config.sparsity}


def _visible_units(data: np.ndarray, visible: str) -> str:
    low, high = float(data.min()), float(data.max())
    in_unit_range = low >= 0 and high <= 1
    if visible == "auto":
        return "bernoulli" if in_unit_range else "gaussian"
    if visible == "bernoulli" and not in_unit_range:
        raise InputError(
            f"bernoulli visible units need values in [0, 1]; X ranges from {low:g} to {high:g}. "
            "Scale X into [0, 1] or use visible='gaussian'"
        )
    return visible


# ---------------------------------------------------------------------------------------------
# fine-tuning with a few labels (the digits check, `zoo.demos.digits`, compares it with training from scratch)


def finetune(
    base: PretrainResult | nn.Sequential,
    X: Any,
    y: Any,
    config: TrainingConfig | None = None,
    *,
    num_classes: int | None = None,
) -> nn.Sequential:
    """A copy of the stack plus a softmax head, every layer trained on the labelled rows.

    Returns ``nn.Sequential(<stack layers>, head=Linear)`` giving class logits. Cataloged
    stacks are fine-tuned through `zoo.transfer` like any other model; this is the small
    loop the digits check uses, identical for pretrained and freshly initialised stacks.
    `config` gives epochs (300 by default here), batch size, learning rate, seed and threads
    (`zoo.TrainingConfig`); every epoch runs, there is no validation.
    """
    import copy
    from collections import OrderedDict

    import torch
    from torch import nn

    stack = base.stack if isinstance(base, PretrainResult) else base
    data = torch.from_numpy(_validate_data(X))
    labels = np.asarray(y)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise InputError(
            f"y must be integer class labels, one per row of X ({len(data)}); got shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    targets = torch.from_numpy(labels.astype(np.int64))
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    config = config or TrainingConfig(epochs=300)
    epochs, batch_size, seed = config.epochs, config.batch_size, config.seed
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    top = [m for m in stack.modules() if isinstance(m, nn.Linear)][-1].out_features
    model = nn.Sequential(OrderedDict(
        [*copy.deepcopy(stack).named_children(), ("head", nn.Linear(top, classes))]
    ))
    model.requires_grad_(True).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr or 1e-3)
    with torch_threads(sum(p.numel() for p in model.parameters()), config.threads):
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), batch_size):
                index = order[start:start + batch_size]
                loss = nn.functional.cross_entropy(model(data[index]), targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def fresh_stack(n_features: int, layers: Sequence[int], seed: int = 0) -> nn.Sequential:
    """The same architecture as a pretrained stack, with torch's default initialisation."""
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(seed)
    sizes = [n_features, *_validate_layers(layers)]
    return nn.Sequential(OrderedDict(
        (f"layer{i}", nn.Sequential(nn.Linear(sizes[i - 1], sizes[i]), nn.Sigmoid()))
        for i in range(1, len(sizes))
    ))


def accuracy(model: nn.Module, X: Any, y: Any) -> float:
    """Fraction of rows whose highest logit is the label."""
    import torch

    with torch.no_grad():
        predicted = model(torch.from_numpy(_validate_data(X))).argmax(dim=1).numpy()
    return float((predicted == np.asarray(y)).mean())
