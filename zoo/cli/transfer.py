"""Transfer commands: train, sweep, walkthrough."""
from __future__ import annotations

import re
import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, quiet_option, table

# zoo.transfer & co. import torch: they are imported inside the commands so `zoo --help` stays fast.


def _layer(value: str) -> str | int:
    return int(value) if re.fullmatch(r"[+-]?\d+", value.strip()) else value.strip()


def _ints(option: str, text: str | None, what: str) -> list[int]:
    from zoo.errors import InputError

    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r} is not a list of {what}; give numbers like 0,1") from None


# Shared with `zoo extract`: how images and cut outputs are prepared.
preprocess_option = click.option(
    "--preprocess/--no-preprocess", default=None,
    help="Apply the model's input spec (resize + centre crop, channel order, mean/std, layout). Image "
         "files get it unless --no-preprocess; a .npy only with --preprocess (it then holds raw 0-255 RGB pixels).")
pooling_option = click.option(
    "--pooling", type=click.Choice(["avg", "max"]),
    help="Global average or max pooling of a 4-D cut over its spatial axes (Keras-style).")
device_option = click.option(
    "--device", help="onnxruntime device for the frozen layers: cpu, cuda, cuda:1...  [default: cpu]")


def _training_options(func):
    """Options shared by `zoo train` and `zoo sweep`."""
    options = [
        click.option("--data", "-d", required=True, type=click.Path(exists=True),
                     help="Inputs: a .npy array (batch first), an image folder (one sub-folder per class), "
                          "or a flat folder / image file with --labels."),
        click.option("--labels", "-y", type=click.Path(exists=True, dir_okay=False),
                     help="A .npy array of one label per row (not needed for an image folder)."),
        click.option("--hidden", metavar="N,N", help="Hidden layer sizes of the new head, e.g. 256,64."),
        click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1)),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1)),
        click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Adam learning rate."),
        click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="Share of the rows held out for validation (stratified)."),
        click.option("--patience", default=5, show_default=True, type=click.IntRange(min=0),
                     help="Stop after this many epochs without a better validation loss (0: never)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--strict-images", is_flag=True,
                     help="Stop at the first unreadable image of a folder instead of skipping it."),
        preprocess_option,
        pooling_option,
        device_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("train")
@click.argument("name")
@click.option("--layer", "-l", default="-2", show_default=True,
              help="Cut layer: a name from `zoo layers NAME` or a position (-2 drops the top layer).")
@click.option("--name", "new_name", required=True, help="Catalog name of the trained model.")
@click.option("--unfreeze", default="0", show_default=True, metavar="K|LAYER",
              help="Also train the top K blocks below the cut (a conv/linear layer with its BatchNorm, Scale and "
                   "activation), or every block above cut point LAYER (fine-tuning).")
@_training_options
@click.option("--replace", is_flag=True, help="Overwrite a model of the same --name.")
@json_option
@quiet_option
@catalog_option
@cache_option
def train_command(name, layer, new_name, unfreeze, data, labels, hidden, epochs, batch_size, lr,
                  val_fraction, patience, seed, strict_images, preprocess, pooling, device, replace, as_json, quiet,
                  catalog, cache_dir):
    """Train a new head on NAME cut at a layer; save base + head as your own model (ONNX).

    The data go through the frozen layers once (cached, resumable, reused by later runs); the
    head trains on the cached outputs. With --unfreeze K the top K blocks below the cut train
    too (--unfreeze res4f: every block above that cut point), on features cached below them.
    It prints how many parameters train.

    \b
    Example:
        zoo train bvlc_alexnet.caffe --layer fc7 --data x.npy --labels y.npy --name my-classifier
        zoo train digits04.cnn --layer relu3 --unfreeze 1 --data x.npy --labels y.npy --name mine
        zoo train resnet50.keras --layer conv5_block3_out --pooling avg --data photos/ --name pets
    """
    from zoo.transfer import train

    result = train(
        name, data, labels if labels is not None else _no_labels(data), layer=_layer(layer),
        new_name=new_name, unfreeze=_unfreeze(unfreeze), hidden=_ints("--hidden", hidden, "layer sizes"),
        epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
        patience=patience or None, seed=seed, catalog=catalog, cache_dir=cache_dir,
        replace=replace, on_error="raise" if strict_images else "skip", progress=not quiet,
        preprocess=preprocess, pooling=pooling, device=device,
    )
    fit = result.fit
    payload = {
        "model": result.model.name,
        "onnx": result.model.artifact("model").path,
        "base": name,
        "layer": result.model.meta.get("layer"),
        "cached_at": result.cut,
        "unfreeze": _unfreeze(unfreeze),
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "cache_key": result.cache_key,
        "classes": fit.classes,
        "val_accuracy": fit.val_accuracy,
        "best_epoch": fit.best_epoch,
        "epochs": len(fit.history),
        "history": fit.history,
    }

    def text() -> str:
        rows = [[h["epoch"], f"{h['loss']:.4f}", f"{100 * h['accuracy']:.1f}%",
                 f"{h['val_loss']:.4f}" if "val_loss" in h else "-",
                 f"{100 * h['val_accuracy']:.1f}%" if "val_accuracy" in h else "-"] for h in fit.history]
        accuracy = "-" if fit.val_accuracy is None else f"{100 * fit.val_accuracy:.1f}%"
        return "\n".join([
            table(rows, ["EPOCH", "LOSS", "ACC", "VAL LOSS", "VAL ACC"]),
            f"best epoch {fit.best_epoch}: validation accuracy {accuracy}"
            + (" (stopped early)" if fit.stopped_early else ""),
            f"trained {result.trainable_parameters:,} of {result.total_parameters:,} parameters",
            f"saved {result.model.name} (frozen {name} + trained head) -> {payload['onnx']}",
        ])

    emit(payload, as_json, text)


def _unfreeze(text: str) -> int | str:
    """--unfreeze: a count of blocks, or the name of a cut point."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _no_labels(data: str) -> None:
    """Labels may be left out only for an image folder, which brings its own."""
    import os

    from zoo.errors import InputError

    if not os.path.isdir(data) or not any(entry.is_dir() for entry in os.scandir(data)):
        raise InputError(f"--labels is missing; give a .npy of one label per row (or image) of {data}, "
                         "or a folder with one sub-folder per class")
    return None


@cli.command("sweep")
@click.argument("name")
@click.option("--layers", "-l", "layers_text", required=True, metavar="L1,L2,...",
              help="Cut layers to compare (names from `zoo layers NAME` or positions).")
@click.option("--unfreeze", "unfreeze_text", default="0", show_default=True, metavar="K1,K2",
              help="Blocks to unfreeze at each cut, e.g. 0,1 (or cut points: 0,res4f).")
@_training_options
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG of accuracy vs cut layer here.")
@json_option
@quiet_option
@catalog_option
@cache_option
def sweep_command(name, layers_text, unfreeze_text, data, labels, hidden, epochs, batch_size, lr,
                  val_fraction, patience, seed, strict_images, preprocess, pooling, device, plot, as_json, quiet,
                  catalog, cache_dir):
    """Train a head at each cut layer of NAME and compare validation accuracy and time.

    Each cut's features are cached once; every head uses the same seed and validation rows.

    \b
    Example:
        zoo sweep bvlc_alexnet.caffe --data x.npy --labels y.npy --layers pool5,fc6,fc7 --plot sweep.png
        zoo sweep digits04.cnn -d x.npy -y y.npy -l pool1,pool2,relu3 --unfreeze 0,1
    """
    from zoo.errors import InputError
    from zoo.layer_sweep import sweep

    layers = [_layer(part) for part in layers_text.split(",") if part.strip()]
    if not layers:
        raise InputError(f"--layers {layers_text!r} names no layer; give names like fc6,fc7")
    result = sweep(
        name, data, labels if labels is not None else _no_labels(data), layers=layers,
        unfreeze=[_unfreeze(part) for part in unfreeze_text.split(",") if part.strip()] or [0],
        hidden=_ints("--hidden", hidden, "layer sizes"), epochs=epochs, batch_size=batch_size, lr=lr,
        val_fraction=val_fraction, patience=patience or None, seed=seed, catalog=catalog,
        cache_dir=cache_dir, plot=plot, on_error="raise" if strict_images else "skip", progress=not quiet,
        preprocess=preprocess, pooling=pooling, device=device,
    )

    def text() -> str:
        best = result.best
        lines = [result.table(), f"best: {best.layer}" + (f" with top {best.unfreeze} unfrozen" if best.unfreeze else "")]
        lines += [f"skipped: {s}" for s in result.skipped]
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
    from zoo.walkthrough import run

    echo = None if (quiet or as_json) else (lambda message: click.echo(message, err=True))
    report = run(out, catalog=catalog, cache_dir=cache_dir, labels_per_class=labels_per_class, echo=echo)
    emit(report.to_dict(), as_json, report.text)

