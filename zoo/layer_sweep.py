"""Cut-layer sweeps: train a head at each cut (and unfreeze depth) and compare validation accuracy."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo.atomic import atomic_path
from zoo.errors import InputError, UnfreezeDepthError, option
from zoo.options import ExtractorOptions, TrainingConfig, accepts_options
from zoo.transfer import load_labels

if TYPE_CHECKING:
    from zoo.catalog import Catalog
    from zoo.engines import Engine

__all__ = ["SweepResult", "SweepRow", "check_plot_path", "sweep"]


@dataclass
class SweepRow:
    """One cut of a sweep: where the features were cached and how the head did."""

    layer: str
    unfreeze: int | str  # blocks unfrozen below the cut, or the cut point above which all train
    cached_at: str  # the layer whose outputs were cached (below the unfrozen ones)
    features: list[int]  # shape of one cached row
    val_accuracy: float | None
    best_epoch: int
    epochs: int
    cache_seconds: float
    train_seconds: float
    reused: bool  # the features came from the cache
    test_accuracy: float | None = None
    val_loss: float | None = None  # of the best epoch: breaks ties in accuracy
    val_rows: int = 0  # rows the validation accuracy was measured on
    trainable_parameters: int = 0  # the head's and the unfrozen blocks': the cost, with the time
    converged: bool = True  # False: the best epoch was the last one, more epochs would likely help
    fit: Any = field(default=None, repr=False, compare=False)  # the FitResult: trained head, history

    def rank(self) -> tuple:
        """Sort key, best first: validation accuracy, then loss, then cost (frozen before
        unfrozen, fewer trained parameters, less time)."""
        return (-(self.val_accuracy or 0.0), self.val_loss if self.val_loss is not None else float("inf"),
                0 if not self.unfreeze else 1, self.trainable_parameters, self.cache_seconds + self.train_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fit"}


@dataclass
class SweepResult:
    """Rows in the order swept; `table()` and `plot()` show them."""

    model: str
    rows: list[SweepRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # combinations that cannot be trained, and why
    plot_path: Path | None = None
    skipped_files: list[dict[str, Any]] = field(default_factory=list)  # unreadable inputs left out: path, reason

    @property
    def best(self) -> SweepRow:
        """The row with the highest validation accuracy; on a tie the lowest validation loss, then
        the cheapest (frozen before unfrozen, fewer trained parameters, less time)."""
        return min(self.rows, key=SweepRow.rank)

    @property
    def warnings(self) -> list[str]:
        """What may make `best` a poor choice: a validation set too small to tell the rows apart,
        heads still improving at their last epoch."""
        from zoo.errors import option

        out = []
        if len(self.rows) > 1:
            best = self.best
            low, high = wilson_interval(best.val_accuracy or 0.0, best.val_rows)
            # rows whose 95% interval overlaps the best one's: the data cannot tell them apart
            close = [r for r in self.rows if r is not best
                     and wilson_interval(r.val_accuracy or 0.0, r.val_rows)[1] >= low]
            if best.val_rows and close:
                names = ", ".join(_row_name(r) for r in close[:3]) + (" ..." if len(close) > 3 else "")
                out.append(
                    f"the validation set ({best.val_rows} rows) is too small to tell {_row_name(best)} from "
                    f"{names}: {100 * (best.val_accuracy or 0):.1f}% has a 95% interval of {100 * low:.0f}-"
                    f"{100 * high:.0f}%; give more validation rows ({option('validation')} or a larger "
                    f"{option('val_fraction', cli='0.3', value=0.3)})")
        late = [r for r in self.rows if not r.converged]
        if late:
            out.append(f"{len(late)} of {len(self.rows)} heads were still improving at their last epoch "
                       f"({', '.join(_row_name(r) for r in late[:3])}{' ...' if len(late) > 3 else ''}); "
                       f"raise {option('epochs')}")
        return out

    def table(self) -> str:
        """A text table: one line per cut."""
        has_test = any(r.test_accuracy is not None for r in self.rows)
        headers = ["layer", "unfreeze", "cached at", "features", "trains", "val acc", "best epoch", "cache s",
                   "train s"]
        if has_test:
            headers.insert(6, "test acc")
        lines = []
        for r in self.rows:
            cells = [
                r.layer,
                r.unfreeze,
                r.cached_at + (" (reused)" if r.reused else ""),
                "x".join(str(d) for d in r.features),
                f"{r.trainable_parameters:,}",
                _pct(r.val_accuracy),
                f"{r.best_epoch}/{r.epochs}",
                f"{r.cache_seconds:.2f}",
                f"{r.train_seconds:.2f}",
            ]
            if has_test:
                cells.insert(6, _pct(r.test_accuracy))
            lines.append(cells)
        return _table(lines, headers)

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of validation (and test) accuracy against the cut layer, one line per unfreeze depth."""
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt

        from zoo.destinations import prepare

        path = check_plot_path(path)
        prepare(path, "the plot")
        order = list(dict.fromkeys(r.layer for r in self.rows))
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(order) + 2), 3.6))
        for k in sorted({r.unfreeze for r in self.rows}, key=str):
            rows = [r for r in self.rows if r.unfreeze == k]
            xs = [order.index(r.layer) for r in rows]
            label = "frozen base" if not k else f"above {k} unfrozen" if isinstance(k, str) else f"top {k} unfrozen"
            line = ax.plot(xs, [r.val_accuracy or 0 for r in rows], marker="o", label=f"{label}: validation")
            if any(r.test_accuracy is not None for r in rows):
                ax.plot(xs, [r.test_accuracy or 0 for r in rows], marker="s", linestyle="--",
                        color=line[0].get_color(), label=f"{label}: test")
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_xlabel("cut layer (deeper to the right)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{self.model}: accuracy of a new head vs cut layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path, suffix=path.suffix) as tmp:  # savefig picks the format from the suffix
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        self.plot_path = path
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rows": [r.to_dict() for r in self.rows],
            "best": self.best.to_dict() if self.rows else None,
            "skipped": self.skipped,
            "skipped_files": self.skipped_files,
            "warnings": self.warnings if self.rows else [],
            "plot": str(self.plot_path) if self.plot_path else None,
        }


def _row_name(row: SweepRow) -> str:
    if not row.unfreeze:
        return row.layer
    return row.layer + (f" (blocks above {row.unfreeze} unfrozen)" if isinstance(row.unfreeze, str)
                        else f" (top {row.unfreeze} unfrozen)")


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy measured on `n` rows.

    Better than the normal approximation at the small `n` and the accuracies near 1 that few-label
    transfer learning gives; (0, 1) when there are no rows.
    """
    if n <= 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * ((accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def check_plot_path(path: str | os.PathLike) -> Path:
    """`path` when matplotlib can write a plot in the format its suffix names; else InputError."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise InputError(f"--plot {path}: {path.suffix or 'no suffix'} is not an image format matplotlib writes; "
                         f"end the name with .png, .pdf or .svg (or {', '.join(sorted(formats))})")
    return path


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@accepts_options(training=TrainingConfig, extractor=ExtractorOptions, shared=("threads",), exclude=("layer",))
def sweep(
    model: str,
    data: Any,
    labels: Any = None,
    *,
    layers: Sequence[str | int] = (-2,),
    unfreeze: Sequence[int | str] = (0,),
    validation: tuple[Any, Any] | None = None,
    test: tuple[Any, Any] | None = None,
    extractor: ExtractorOptions | None = None,
    training: TrainingConfig | None = None,
    engine: str | Engine = "local",
    on_error: str = "skip",
    image_size: Sequence[int] | None = None,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SweepResult:
    """Train a new head at each cut layer (and each unfreeze depth) and compare them.

    Each cut's features are cached once (a second sweep, or a `zoo train` at the same cut,
    reuses them); every head trains with the same seed and the same validation rows, so the
    rows differ only by where the network was cut (the table says how many parameters each
    trains). ``unfreeze=[0, 1]`` also fine-tunes the top block below each cut (a conv/linear
    layer with its BatchNorm, Scale and activation), on features cached one cut lower; a cut
    point's name (``"res4f"``) fine-tunes every block above it. The best row has the highest
    validation accuracy; ties go to the lower validation loss, then to the cheaper row.

    Args:
        model: the base model (cataloged name or ONNX file).
        data: as `zoo.train`'s: an array, a ``.npy`` path, image files, or a `zoo.DataSource`.
        labels: one label per input; None for a class folder.
        layers: the cut layers to compare (names or positions).
        unfreeze: the blocks to unfreeze at each cut (counts, or cut point names).
        validation: ``(data, labels)`` to validate on (labels None for a class folder); without
            it ``val_fraction`` of `data` is held out.
        test: ``(data, labels)`` scored by every row's head.
        extractor: pooling (of 4-D cuts), device, preprocessing (`zoo.ExtractorOptions`; its
            layer is replaced by each of `layers`).
        training: epochs, batch size, learning rate, hidden layers, patience, seed...
            (`zoo.TrainingConfig`; its unfreeze by each of `unfreeze`). Every field of both
            objects may be passed as a keyword instead, as `zoo.train` takes them.
        engine: where the features are computed: "local", "ray" or a `zoo.Engine`.
        on_error: an unreadable image is left out and reported ("skip") or stops the sweep ("raise").
        image_size: (height, width) images are resized to when the model does not fix its input size.
        catalog: the catalog the base model is in.
        cache_dir: the cache folder.

    Returns:
        The rows in the order swept (`SweepResult.table()`, `.plot(path)`, `.best`,
        `.warnings`: a validation set too small to tell the best from others, heads not converged).

    Raises:
        InputError: no layers, negative depths or names that are no layer, labels missing or not
            one per input.

    >>> result = zoo.sweep("bvlc_alexnet", "x.npy", "y.npy", layers=["fc6", "fc7"])  # doctest: +SKIP
    >>> print(result.table()); result.plot("sweep.png")                            # doctest: +SKIP
    """
    import warnings as _warnings

    from zoo.catalog import open_catalog
    from zoo.errors import NotConvergedWarning
    from zoo.extract import load_extractor
    from zoo.features import extract_features
    from zoo.transfer import fit_head, prepare

    if not layers:
        raise InputError(f"no layers to sweep; give them as {option('layers', ['fc6', 'fc7'], cli='fc6,fc7')}")
    if isinstance(layers, (str, int)):
        layers = [layers]
    if isinstance(unfreeze, (str, int)):
        unfreeze = [unfreeze]
    if not unfreeze or any(not isinstance(k, str) and k < 0 for k in unfreeze):
        raise InputError(f"{option('unfreeze', list(unfreeze), cli=','.join(map(str, unfreeze)))} must be block "
                         f"counts of 0 or more or cut points, e.g. {option('unfreeze', [0, 1], cli='0,1')}")
    extractor = extractor or ExtractorOptions()
    training = training or TrainingConfig()
    cat = open_catalog(catalog)
    named = [k for k in unfreeze if isinstance(k, str)]
    if named:  # a misspelt name fails before any caching; one above a cut only skips that row
        from zoo.extract import layers as list_layers

        known = {info.name for info in list_layers(model, catalog=cat, cache_dir=cache_dir)}
        unknown = [k for k in named if k not in known]
        if unknown:
            raise InputError(f"{option('unfreeze', unknown[0])} is not a layer of {model}; give a number of blocks "
                             f"({option('unfreeze', 1)}) or a cut point from `zoo layers {model}`")
    labels = None if labels is None else load_labels(labels)
    pairs = {which: (pair[0], None if pair[1] is None else load_labels(pair[1]))
             for which, pair in (("validation", validation), ("test", test)) if pair is not None}
    reading = {"on_error": on_error, "image_size": image_size}
    result = SweepResult(model=model)
    for layer in layers:
        for k in unfreeze:
            try:
                prepared = prepare(model, data, labels, extractor=extractor.replace(layer=layer),
                                   training=training.replace(unfreeze=k), engine=engine, catalog=cat,
                                   cache_dir=cache_dir, **reading)
            except UnfreezeDepthError as exc:  # too deep for this cut: the other rows go on
                result.skipped.append(f"{layer} unfreeze={k}: {exc}")
                continue
            known = {s["path"] for s in result.skipped_files}
            result.skipped_files += [s for s in prepared.cached.skipped if s["path"] not in known]
            started = time.perf_counter()
            sets = {which: _labelled(extract_features(prepared.extractor, pair[0], cache_dir=cache_dir,
                                                      progress=training.progress, engine=engine, **reading),
                                     pair[1], which, prepared.cached.classes)
                    for which, pair in pairs.items()}
            cache_seconds = prepared.seconds + time.perf_counter() - started
            features = prepared.cached.features
            trainable = prepared.trainable(training)
            with _warnings.catch_warnings():  # said once for the whole sweep (SweepResult.warnings)
                _warnings.simplefilter("ignore", NotConvergedWarning)
                fit = fit_head(features, prepared.labels, training.replace(progress=False), head=trainable,
                               validation=sets.get("validation"))
            test_accuracy = fit.accuracy(*sets["test"]) if "test" in sets else None
            at = prepared.extractor.layer if not k else load_extractor(model, layer, catalog=cat,
                                                                         cache_dir=cache_dir).layer
            result.rows.append(
                SweepRow(
                    layer=str(at),
                    unfreeze=k,
                    cached_at=str(prepared.extractor.layer),
                    features=[int(d) for d in features.shape[1:]],
                    val_accuracy=fit.val_accuracy,
                    best_epoch=fit.best_epoch,
                    epochs=len(fit.history),
                    cache_seconds=cache_seconds,
                    train_seconds=fit.seconds,
                    reused=prepared.cached.reused,
                    test_accuracy=test_accuracy,
                    val_loss=fit.val_loss,
                    val_rows=fit.val_rows,
                    trainable_parameters=sum(p.numel() for p in trainable.parameters() if p.requires_grad),
                    converged=fit.converged,
                    fit=fit,
                )
            )
    return result


def _labelled(cached: Any, labels: Any, which: str, classes: list[str] | None) -> tuple[Any, Any]:
    """A validation or test set's features and labels: a class folder's own (as indices of the
    training folder's `classes`), or the given ones."""
    import numpy as np

    from zoo.errors import option
    from zoo.transfer import labels_for

    if labels is None and cached.labels is None:
        raise InputError(f"the {which} data has no labels; give them with it "
                         f"({option(which, cli='DATA --' + which + '-labels Y.npy', value=('data', 'labels'))}), "
                         "or a folder with one sub-folder per class")
    found = labels_for(cached, labels)
    if labels is None and cached.classes and classes and cached.classes != classes:
        unknown = sorted(set(cached.classes) - set(classes))
        if unknown:
            raise InputError(f"the {which} folder has classes the training data has not: {', '.join(unknown)}")
        found = np.asarray([classes.index(cached.classes[i]) for i in found])
    return cached.features, found
