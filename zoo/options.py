"""Options objects: how to train, how to run a frozen extractor, how to pretrain; each defined once.

`TrainingConfig` is shared by `zoo.fit_head`, `zoo.train`, `zoo.sweep`, pretraining's fine-tune
and the CLI (one click decorator builds it); `ExtractorOptions` by `zoo.load_extractor`, the
scikit-learn transformer, `zoo.train` and `zoo.sweep`; `PretrainConfig` by `zoo.pretrain` and
`zoo pretrain`. They are passed on whole, never relayed field by field, and check their values
when made, so a bad one fails before any work. (The download's is `zoo.transport.RetryPolicy`.)

A public function also takes each field as a plain keyword, spelled and defaulted as the CLI's
flag (`accepts_options`): ``zoo.fit_head(f, y, epochs=50)`` is
``zoo.fit_head(f, y, zoo.TrainingConfig(epochs=50))``, as ``zoo train --epochs 50`` is.
Ground floor: no zoo import but the errors and the pooling names.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from zoo.errors import InputError, UnknownOptionError, option
from zoo.pooling import check_pooling

__all__ = ["ExtractorOptions", "PretrainConfig", "TrainingConfig", "accepts_options"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainingConfig:
    """How a head (and any unfrozen layers) is trained on cached features.

    Attributes:
        hidden: sizes of the hidden ReLU layers of a new head (none: a linear head).
        epochs: passes over the training rows, at most (early stopping may end sooner).
        batch_size: rows per optimiser step.
        lr: Adam's learning rate; None for the trainer's default (1e-3; pretraining's per method).
        weight_decay: Adam's L2 penalty.
        val_fraction: share of the rows held out, per class, to pick the best epoch.
        patience: epochs without a better validation loss before stopping; 0 or None never stops early.
        seed: seeds the head's initialisation, the shuffling and the validation split.
        threads: torch threads while training; None for one on a small model, torch's choice otherwise.
        unfreeze: top blocks of the base (a conv/linear layer with its BatchNorm, Scale and
            activation) trained too, on features cached below them; or a cut point's name: every
            block above it trains (`zoo.train`; `zoo.sweep` takes the depths to try itself).
        standardize: a new head first scales each feature to mean 0 and variance 1 over the
            training rows (the scaling is part of the saved head, so it needs no setup to run).
        progress: progress bars on stderr when it is a terminal.

    >>> zoo.fit_head(features, labels, zoo.TrainingConfig(epochs=50, hidden=(256,)))  # doctest: +SKIP
    >>> zoo.fit_head(features, labels, epochs=50, hidden=(256,))                      # doctest: +SKIP
    """

    hidden: Sequence[int] = ()
    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    patience: int | None = 5
    seed: int = 0
    threads: int | None = None
    unfreeze: int | str = 0
    standardize: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if _whole(self.patience) and self.patience == 0:  # the CLI's --patience 0: never stop early
            object.__setattr__(self, "patience", None)
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not all(_whole(n) and n > 0 for n in self.hidden):
            raise InputError(f"{option('hidden', list(self.hidden), cli=','.join(map(str, self.hidden)))} must be "
                             f"layer sizes of at least 1, e.g. {option('hidden', (256, 64), cli='256,64')}")
        if not (_whole(self.epochs) and self.epochs >= 1 and _whole(self.batch_size) and self.batch_size >= 1):
            raise InputError(f"{option('epochs', self.epochs)} and {option('batch_size', self.batch_size)} must both "
                             "be at least 1")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"{option('lr', self.lr)} must be a positive number like 1e-3")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InputError(f"{option('weight_decay', self.weight_decay)} must be 0 or more")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"{option('val_fraction', self.val_fraction)} must be in [0, 1)")
        if self.patience is not None and not (_whole(self.patience) and self.patience >= 0):
            raise InputError(f"{option('patience', self.patience)} must be a whole number of epochs (0: never stop early)")
        if not (_whole(self.seed) and self.seed >= 0):
            raise InputError(f"{option('seed', self.seed)} must be a non-negative whole number")
        if self.threads is not None and not (_whole(self.threads) and self.threads >= 1):
            raise InputError(f"{option('threads', self.threads)} must be a whole number of at least 1")
        if isinstance(self.unfreeze, str) and not self.unfreeze.strip():
            raise InputError(f"{option('unfreeze', self.unfreeze)} names no layer; give a count of blocks "
                             f"({option('unfreeze', 1)}) or a cut point ({option('unfreeze', 'res4f')})")
        if not isinstance(self.unfreeze, str) and not (_whole(self.unfreeze) and self.unfreeze >= 0):
            raise InputError(f"{option('unfreeze', self.unfreeze)} must be 0 or more blocks, or the name of a cut point")

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}


@dataclass(frozen=True)
class ExtractorOptions:
    """Which layer to cut at and how the frozen layers run.

    Attributes:
        layer: a layer name (`zoo layers NAME`), an ONNX tensor name, a position (-1 the last
            layer, -2 drops the top one) or a list of those (the extractor then returns a dict).
        batch_size: inputs per onnxruntime run.
        threads: onnxruntime intra-op threads; None for its default.
        device: "cpu", "cuda", "cuda:1"... or a list of onnxruntime providers.
        providers: onnxruntime execution providers by name (another spelling of `device`).
        preprocess: None: image files get the model's InputSpec and arrays are model-ready;
            True: arrays are raw 0-255 pixels and get it too; False: nothing gets it.
        pooling: "avg" or "max": global pooling of a 4-D cut over its spatial axes.
        on_error: an image file the extractor is called on that cannot be read is left out with a
            `zoo.errors.SkippedInputsWarning` naming it ("skip"), or stops the call ("raise"): the
            feature cache's rule too (see `zoo.images`).

    >>> zoo.load_extractor("resnet50.keras", options=zoo.ExtractorOptions(pooling="avg"))  # doctest: +SKIP
    >>> zoo.load_extractor("resnet50.keras", pooling="avg")                                # doctest: +SKIP
    """

    layer: str | int | Sequence[str | int] = -2
    batch_size: int = 64
    threads: int | None = None
    device: str | Sequence[Any] | None = None
    providers: Sequence[str] | None = None
    preprocess: bool | None = None
    pooling: str | None = None
    on_error: str = "skip"

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "raise"):
            raise InputError(f"{option('on_error', self.on_error)} is not one of 'skip', 'raise'")
        if not isinstance(self.layer, (str, int)):
            object.__setattr__(self, "layer", tuple(self.layer))
        if not (_whole(self.batch_size) and self.batch_size >= 1):
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.threads is not None and not (_whole(self.threads) and self.threads >= 1):
            raise InputError(f"{option('threads', self.threads)} must be a whole number of at least 1")
        if self.device is not None and self.providers:
            raise InputError("give device= or providers=, not both (device='cuda:1' stands for the CUDA provider list)")
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", tuple(self.device))
        check_pooling(self.pooling)

    def replace(self, **changes: Any) -> ExtractorOptions:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


VISIBLE_UNITS = ("auto", "bernoulli", "gaussian")


def _positive_whole(label: str, value: Any) -> None:
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise InputError(f"{label} must be a positive integer; got {value!r}")


@dataclass(frozen=True)
class PretrainConfig:
    """How each layer of a greedily pretrained stack is trained (`zoo.pretrain`).

    Attributes:
        epochs, batch_size: training of each layer.
        lr: Adam's step size; None for the method's default (0.01 autoencoder, 0.02 RBM).
        denoise: fraction of each autoencoder's inputs zeroed during training (masking noise).
        sparsity: target mean activation of the hidden units, or ``(target, weight)``; adds
            ``weight * KL(target || mean activation)`` to each layer's loss (weight 0.1 by default).
        cd_k: Gibbs steps of contrastive divergence (RBMs).
        visible: units of the bottom layer: "bernoulli" for inputs in [0, 1], "gaussian" for real
            values (standardized inside the stack), "auto" picks from the data's range.
        tied: autoencoders decode with their encoder's weights, transposed.
        seed: seeds every layer's initialisation, shuffling and sampling.
        threads: torch threads; None for one on layers under a million weights.
        cache: train each layer on the stored outputs of the frozen layers below (the default),
            or recompute them for every batch (False; only to measure what caching saves).
        progress: a progress bar per layer on stderr, with its reconstruction error.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None
    denoise: float = 0.0
    sparsity: float | tuple[float, float] | None = None
    cd_k: int = 1
    visible: str = "auto"
    tied: bool = True
    seed: int = 0
    threads: int | None = None
    cache: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        import numbers

        if self.visible not in VISIBLE_UNITS:
            raise InputError(f"visible {self.visible!r} is not known; choose one of: {', '.join(VISIBLE_UNITS)}")
        for label in ("epochs", "batch_size", "cd_k"):
            _positive_whole(label, getattr(self, label))
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer; got {self.seed!r}")
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or not self.lr > 0):
            raise InputError(f"lr must be a positive number like 0.01; got {self.lr!r}")
        if not isinstance(self.denoise, (int, float)) or not 0 <= self.denoise < 1:
            raise InputError(f"denoise is the fraction of inputs zeroed, in [0, 1); got {self.denoise!r}")
        object.__setattr__(self, "sparsity", _sparsity(self.sparsity))
        if self.threads is not None and not (_whole(self.threads) and self.threads >= 1):
            raise InputError(f"{option('threads', self.threads)} must be a whole number of at least 1")

    def replace(self, **changes: Any) -> PretrainConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _sparsity(value: Any) -> tuple[float, float] | None:
    """A sparsity target as (target, weight), the weight 0.1 when only a target is given."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,)
    try:
        target, weight = (*value, 0.1)[:2] if len(value) == 1 else value
        valid = 0 < target < 1 and weight > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(
            f"sparsity is a target activation in (0, 1), optionally with a weight > 0, "
            f"like 0.05 or (0.05, 0.1); got {value!r}"
        )
    return float(target), float(weight)


def accepts_options(
    *,
    shared: Sequence[str] = (),
    exclude: Sequence[str] = (),
    renamed: Mapping[str, str] | None = None,
    **targets: type,
) -> Callable[[_F], _F]:
    """Let a function take its options objects' fields as plain keywords too.

    ``@accepts_options(config=TrainingConfig)`` on ``fit_head(features, labels, config=None)``
    makes ``fit_head(f, y, epochs=50)`` mean ``fit_head(f, y, TrainingConfig(epochs=50))``, and
    ``fit_head(f, y, cfg, epochs=50)`` mean ``cfg.replace(epochs=50)``: the same names and defaults
    as the CLI's flags, one vocabulary for both. The object is what the function receives, so
    options still travel as objects inside the library. The keywords appear in the function's
    signature (``help()``, IDEs); one that names no field fails at once, naming the closest.

    Args:
        shared: field names that go to every target that has them (``threads`` on `train`: the
            torch and the onnxruntime threads); any other name goes to the first target that has it.
        exclude: field names the function does not take as keywords (`sweep` has ``layers``).
        renamed: old keyword -> new one, still accepted with a DeprecationWarning.
        targets: parameter name -> options class, e.g. ``training=TrainingConfig``.
    """

    def decorate(func: _F) -> _F:
        signature = inspect.signature(func)
        own = set(signature.parameters)
        routes: dict[str, list[str]] = {}
        extra: list[inspect.Parameter] = []
        for param, cls in targets.items():
            for f in dataclasses.fields(cls):
                if f.name in own or f.name in exclude or (f.name in routes and f.name not in shared):
                    continue
                if f.name not in routes:
                    extra.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                                   annotation=f.type))
                routes.setdefault(f.name, []).append(param)
        moved = dict(renamed or {})

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in moved.items():
                if old in kwargs:
                    warnings.warn(f"{func.__name__}({old}=...) is now {func.__name__}({new}=...)",
                                  DeprecationWarning, stacklevel=2)
                    kwargs.setdefault(new, kwargs.pop(old))
            given = {k: kwargs.pop(k) for k in [k for k in kwargs if k not in own]}
            for name in given:
                if name not in routes:
                    known = sorted(own | set(routes))
                    closest = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                    raise UnknownOptionError(
                        f"{func.__name__}() has no option {name!r}"
                        + (f"; closest: {', '.join(closest)}" if closest else "")
                        + f". It takes: {', '.join(p for p in signature.parameters if p not in ('args', 'kwargs'))}, "
                        + ", ".join(routes),
                        option=name, closest=closest,
                    )
            bound = signature.bind(*args, **kwargs)
            for param, cls in targets.items():
                current = bound.arguments.get(param)
                if current is not None and not isinstance(current, cls):
                    raise InputError(
                        f"{func.__name__}({param}=...) takes a zoo.{cls.__name__}, not a {type(current).__name__}; "
                        f"or pass its fields as keywords, e.g. {func.__name__}(..., {next(iter(routes), 'x')}=...)"
                    )
                mine = {k: v for k, v in given.items() if param in routes[k]}
                if mine:
                    bound.arguments[param] = (current or cls()).replace(**mine)
            return func(*bound.args, **bound.kwargs)

        params = list(signature.parameters.values())
        keyword_at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*params[:keyword_at], *extra, *params[keyword_at + 1:]])
        wrapper.__zoo_options__ = dict(targets)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
