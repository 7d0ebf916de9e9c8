"""Transfer commands: train, sweep, walkthrough."""
from __future__ import annotations

from typing import Any

import click

from zoo.cli._app import (cache_option, catalog_option, cli, echo, emit, json_option, quiet_option, skipped_lines,
                          table)
from zoo.cli._options import (
    engine_options,
    extractor_options,
    layer_value,
    source_value,
    training_data,
    training_options,
    unfreeze_value,
)

# zoo.transfer & co. import torch: they are imported inside the commands so `zoo --help` stays fast.


def _notes(messages: list[str], quiet: bool) -> list[str]:
    return [] if quiet else [f"note: {m}" for m in messages]


@cli.command("train")
@click.argument("model")
@click.option("--name", required=True, help="Catalog name of the trained model.")
@training_data
@extractor_options()
@training_options(unfreeze=True)
@engine_options
@click.option("--replace", is_flag=True, help="Overwrite a model of the same --name.")
@json_option
@catalog_option
@cache_option
def train_command(model, name, data, extractor, training, engine, replace, as_json, catalog, cache_dir):
    """Train a new head on MODEL cut at a layer; save base + head as your own model (ONNX).

    The data go through the frozen layers once (cached, resumable, reused by later runs); the
    head trains on the cached outputs. With --unfreeze K the top K blocks below the cut train
    too (--unfreeze res4f: every block above that cut point), on features cached below them.
    It says how many parameters trained. -q prints only the saved model's line (and the files
    it left out).

    \b
    Example:
        zoo train bvlc_alexnet --layer fc7 --data x.npy --labels y.npy --name my-classifier
        zoo train digits04.cnn --layer relu3 --unfreeze 1 --data x.npy --labels y.npy --name mine
        zoo train resnet50.keras --layer conv5_block3_out --pooling avg --data photos/ --name pets
    """
    import warnings

    from zoo.errors import NotConvergedWarning
    from zoo.transfer import train

    quiet = not training.progress
    with warnings.catch_warnings():  # said below as a note, in the command's words
        warnings.simplefilter("ignore", NotConvergedWarning)
        result = train(model, data.source, data.labels, name=name, extractor=extractor.replace(threads=training.threads),
                       training=training, engine=engine, replace=replace, catalog=catalog, cache_dir=cache_dir)
    fit = result.fit
    payload = {
        "model": result.model.name,
        "onnx": result.model.artifact("model").path,
        "base": model,
        "layer": result.model.meta.get("layer"),
        "cached_at": result.cut,
        "unfreeze": training.unfreeze,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "cache_key": result.cache_key,
        "classes": fit.classes,
        "val_accuracy": fit.val_accuracy,
        "best_epoch": fit.best_epoch,
        "epochs": len(fit.history),
        "converged": fit.converged,
        "notes": fit.notes,
        "history": fit.history,
        "skipped": result.skipped,
        "skipped_count": len(result.skipped),
    }

    def text() -> str:
        rows = [[h["epoch"], f"{h['loss']:.4f}", f"{100 * h['accuracy']:.1f}%",
                 f"{h['val_loss']:.4f}" if "val_loss" in h else "-",
                 f"{100 * h['val_accuracy']:.1f}%" if "val_accuracy" in h else "-"] for h in fit.history]
        accuracy = "-" if fit.val_accuracy is None else f"{100 * fit.val_accuracy:.1f}%"
        saved = (f"saved {result.model.name} (frozen {model} + trained head; trained {result.trainable_parameters:,} "
                 f"of {result.total_parameters:,} parameters) -> {payload['onnx']}")
        if quiet:  # the result and the inputs it left out (never quiet about those), not the epochs
            return "\n".join([*skipped_lines(result.skipped), saved])
        return "\n".join([
            table(rows, ["EPOCH", "LOSS", "ACC", "VAL LOSS", "VAL ACC"]),
            f"best epoch {fit.best_epoch}: validation accuracy {accuracy}"
            + (" (stopped early)" if fit.stopped_early else ""),
            *_notes(fit.notes, quiet),
            *skipped_lines(result.skipped),
            saved,
        ])

    emit(payload, as_json, text)


def _labelled_set(path: str | None, labels: str | None, data: Any, which: str):
    """--validation/--test DATA with --validation-labels/--test-labels: (source, labels) or None."""
    from zoo.errors import InputError

    if path is None:
        if labels is not None:
            raise InputError(f"--{which}-labels needs --{which} DATA, the inputs they label")
        return None
    return source_value(path, getattr(data.source, "on_error", "skip"), getattr(data.source, "image_size", None)), labels


@cli.command("sweep")
@click.argument("model")
@click.option("--layers", "-l", required=True, metavar="L1,L2,...",
              help="Cut layers to compare (names from `zoo layers NAME` or positions).")
@click.option("--unfreeze", default="0", show_default=True, metavar="K1,K2",
              help="Blocks to unfreeze at each cut, e.g. 0,1 (or cut points: 0,res4f).")
@training_data
@click.option("--validation", type=click.Path(exists=True), metavar="DATA",
              help="Validate on these inputs (.npy or an image folder) instead of holding out --val-fraction.")
@click.option("--validation-labels", type=click.Path(exists=True, dir_okay=False),
              help="Labels of --validation (not needed for an image folder).")
@click.option("--test", type=click.Path(exists=True), metavar="DATA",
              help="Also score every row's head on these inputs (.npy or an image folder).")
@click.option("--test-labels", type=click.Path(exists=True, dir_okay=False),
              help="Labels of --test (not needed for an image folder).")
@extractor_options(layer=False)
@training_options()
@engine_options
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG of accuracy vs cut layer here.")
@json_option
@catalog_option
@cache_option
def sweep_command(model, layers, unfreeze, data, validation, validation_labels, test, test_labels, extractor,
                  training, engine, plot, as_json, catalog, cache_dir):
    """Train a head at each cut layer of MODEL and compare validation accuracy and time.

    Each cut's features are cached once; every head uses the same seed and validation rows. The
    table's "trains" column counts the parameters each row trains (head and unfrozen blocks).
    The best row has the highest validation accuracy, then the lowest validation loss, then the
    lowest cost (frozen before unfrozen, fewer trained parameters, less time); a note says when
    the validation set is too small to tell the best from the others. -q prints only the table.

    \b
    Example:
        zoo sweep bvlc_alexnet --data x.npy --labels y.npy --layers pool5,fc6,fc7 --plot sweep.png
        zoo sweep digits04.cnn -d x.npy -y y.npy -l pool1,pool2,relu3 --unfreeze 0,1
        zoo sweep digits04.cnn -d train/ -l pool1,relu3 --validation val/ --test test/
    """
    from zoo.destinations import check_not_an_input
    from zoo.errors import InputError
    from zoo.layer_sweep import sweep

    if plot:  # before the sweep's work: a plot that would overwrite an input, or that cannot be written
        from zoo.layer_sweep import check_plot_path

        inputs = [*data.source.paths(), data.labels, validation, validation_labels, test, test_labels]
        check_not_an_input(plot, [p for p in inputs if p], "--plot")
        check_plot_path(plot)
    cuts = [layer_value(part) for part in layers.split(",") if part.strip()]
    if not cuts:
        raise InputError(f"--layers {layers!r} names no layer; give names like fc6,fc7")
    quiet = not training.progress
    result = sweep(model, data.source, data.labels, layers=cuts,
                   unfreeze=[unfreeze_value(part) for part in unfreeze.split(",") if part.strip()] or [0],
                   validation=_labelled_set(validation, validation_labels, data, "validation"),
                   test=_labelled_set(test, test_labels, data, "test"),
                   extractor=extractor.replace(threads=training.threads), training=training, engine=engine,
                   catalog=catalog, cache_dir=cache_dir)
    if plot is not None:
        result.plot(plot)

    def text() -> str:
        best = result.best
        unfrozen = "" if not best.unfreeze else (f" with the blocks above {best.unfreeze} unfrozen"
                                                  if isinstance(best.unfreeze, str) else f" with top {best.unfreeze} unfrozen")
        lines = [result.table(), f"best: {best.layer}{unfrozen}"]
        lines += [f"skipped: {s}" for s in result.skipped]
        lines += skipped_lines(result.skipped_files)  # never quiet: the result left these inputs out
        lines += _notes(result.warnings, quiet)
        if result.plot_path:
            lines.append(f"plot: {result.plot_path}")
        return "\n".join(lines)

    emit(result.to_dict(), as_json, text)


@cli.command("walkthrough")
@click.option("--out", "-o", default="out/walkthrough", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the ONNX models, the sweep plot and report.json.")
@click.option("--labels-per-class", default=5, show_default=True, type=click.IntRange(min=1, max=100),
              help="Labels per class of the new task (digits 5-9).")
@json_option
@quiet_option
@catalog_option
@cache_option
def walkthrough_command(out: str, labels_per_class: int, as_json: bool, quiet: bool,
                        catalog: str | None, cache_dir: str | None) -> None:
    """Transfer learning end to end, offline, on scikit-learn's digits (the README's main job).

    Trains a small CNN on digits 0-4, registers it as your own model and exports it to ONNX,
    then reuses it frozen for digits 5-9 with a few labels per class: cached features, a new
    head, a sweep over cut layers with its plot, and the same CNN trained from scratch beside it.
    Safe to run twice (models are re-registered, features reused).

    \b
    Example:
        zoo walkthrough
        zoo walkthrough --out /tmp/wt --catalog /tmp/wt/catalog.db
    """
    from zoo.demos.walkthrough import run

    say = None if (quiet or as_json) else (lambda message: echo(message, err=True))
    report = run(out, catalog=catalog, cache_dir=cache_dir, labels_per_class=labels_per_class, echo=say)
    emit(report.to_dict(), as_json, report.text)

