"""Option groups that build one options object each: the command gets the object, not its fields.

`training_options` builds a `zoo.TrainingConfig`, `extractor_options` a `zoo.ExtractorOptions`,
`engine_options` the ``engine=`` value, `training_data` the data and labels of `zoo train` and
`zoo sweep`, `pretrain_options` a `zoo.PretrainConfig`. Each is one decorator, so a flag is
declared once and every command that takes it spells and checks it the same way.
"""
from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import click

from zoo.cli._app import echo, quiet_option

# zoo.options imports nothing heavy; the objects are made when the command runs.


def _group(target: str, options: list[Callable], build: Callable[..., Any]) -> Callable:
    """A decorator adding `options` to a command and passing it `target`=build(their values)."""

    def decorator(func: Callable) -> Callable:
        names = [option(lambda: None).__click_params__[0].name for option in options]  # type: ignore[attr-defined]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            kwargs[target] = build(**values)
            return func(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorator


def int_list(option: str, text: str | None, what: str) -> list[int]:
    from zoo.errors import InputError

    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r} is not a list of {what}; give numbers like 0,1") from None


def layer_value(value: str) -> str | int:
    """A --layer value: an integer is a position, anything else a name."""
    return int(value) if re.fullmatch(r"[+-]?\d+", value.strip()) else value.strip()


def unfreeze_value(value: str | int) -> str | int:
    """An --unfreeze value: a count of blocks, or the name of a cut point (every block above it)."""
    return layer_value(str(value))


# How images and cut outputs are prepared, for every command that runs an extractor.
preprocess_option = click.option(
    "--preprocess/--no-preprocess", default=None,
    help="Apply the model's input spec (resize + centre crop, channel order, mean/std, layout). Image "
         "files get it unless --no-preprocess; a .npy only with --preprocess (it then holds raw 0-255 RGB pixels).")
pooling_option = click.option(
    "--pooling", type=click.Choice(["avg", "max"]),
    help="Global average or max pooling of a 4-D cut over its spatial axes (Keras-style).")
device_option = click.option(
    "--device", help="onnxruntime device for the frozen layers: cpu, cuda, cuda:1...  [default: cpu]")


def training_options(*, unfreeze: bool = False) -> Callable:
    """--hidden --epochs --batch-size --lr --weight-decay --val-fraction --patience --seed --threads
    --standardize/--no-standardize [--unfreeze] --quiet, passed on as ``training``: a `zoo.TrainingConfig`.

    Defaults are the TrainingConfig's own (tests/test_vocabulary.py holds them equal)."""
    options = [
        click.option("--hidden", metavar="N,N", help="Hidden layer sizes of the new head, e.g. 256,64."),
        click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1)),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Rows per training step of the head."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate [default: 1e-3]."),
        click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0),
                     help="Adam's L2 penalty on the trained weights."),
        click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="Share of the rows held out for validation (stratified)."),
        click.option("--patience", default=5, show_default=True, type=click.IntRange(min=0),
                     help="Stop after this many epochs without a better validation loss (0: never)."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0)),
        click.option("--threads", type=click.IntRange(min=1),
                     help="Threads for training and for the frozen layers [default: the libraries' choice]."),
        click.option("--standardize/--no-standardize", default=True, show_default=True,
                     help="Scale each feature to mean 0, variance 1 over the training rows (saved in the head)."),
    ]
    if unfreeze:
        options.append(click.option(
            "--unfreeze", default="0", show_default=True, metavar="K|LAYER",
            callback=lambda ctx, param, value: unfreeze_value(value),
            help="Also train the top K blocks below the cut (a conv/linear layer with its BatchNorm, Scale and "
                 "activation), or every block above cut point LAYER (fine-tuning)."))
    options.append(quiet_option)

    def build(hidden, quiet, **values):
        from zoo.options import TrainingConfig

        return TrainingConfig(hidden=int_list("--hidden", hidden, "layer sizes"), progress=not quiet, **values)

    return _group("training", options, build)


def extractor_options(*, layer: bool = True) -> Callable:
    """[--layer] --preprocess/--no-preprocess --pooling --device, passed on as ``extractor``: a
    `zoo.ExtractorOptions` (without --layer its layer is the default, for commands that set it)."""
    options = [preprocess_option, pooling_option, device_option]
    if layer:
        options.insert(0, click.option(
            "--layer", "-l", default="-2", show_default=True,
            help="Cut layer: a name from `zoo layers NAME` or a position (-2 drops the top layer)."))

    def build(layer: str = "-2", **values):
        from zoo.options import ExtractorOptions

        return ExtractorOptions(layer=layer_value(layer), **values)

    return _group("extractor", options, build)


def engine_options(func: Callable) -> Callable:
    """--engine --address --actors, passed on as ``engine``: "local" or a `zoo.ray_engine.RayEngine`,
    whose actor pool is closed when the command ends (see `engine_session`)."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     envvar="ZOO_ENGINE",
                     help="Where the frozen layers run: this process, or a Ray actor pool (pip install 'zoo[ray]')."),
        click.option("--address", help="--engine ray: the Ray cluster (e.g. ray://head:10001); default $RAY_ADDRESS "
                                       "or a new local instance."),
        click.option("--actors", type=click.IntRange(min=1),
                     help="--engine ray: actors in the pool, each with one thread [default: all CPUs]."),
    ]

    def build(engine: str, address: str | None, actors: int | None):
        return engine_value(engine, address, actors)

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        training = kwargs.get("training")
        with engine_session(kwargs["engine"], quiet=training is not None and not training.progress):
            return func(*args, **kwargs)

    return _group("engine", options, build)(run)


@contextlib.contextmanager
def engine_session(engine: Any, *, quiet: bool = False) -> Iterator[Any]:
    """One command's engine: a Ray engine's actor pool is closed when the command ends, and its
    one-line report (how long the pool took to start; whether --engine local would have been
    faster) goes to stderr unless `quiet`."""
    try:
        yield engine
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    summary = getattr(engine, "summary", None)
    line = summary() if summary is not None and not quiet else None
    if line:
        echo(line, err=True, one_line=True)  # through the output layer: escapes, one line


def engine_value(engine: str, address: str | None, actors: int | None, threads: int | None = None) -> Any:
    """The engine= value the Ray options describe: "local", or a RayEngine."""
    from zoo.errors import InputError

    if engine == "local":
        if address or actors:
            raise InputError("--address and --actors apply to --engine ray; add --engine ray or drop them")
        return "local"
    from zoo.ray_engine import RayEngine

    return RayEngine(address=address, actors=actors, threads=threads or 1)


@dataclass(frozen=True)
class TrainingData:
    """--data and --labels of `zoo train` / `zoo sweep`: a data source (read with --on-error and
    --image-size) and the labels file, None for a folder of class sub-folders."""

    source: Any
    labels: str | None


def image_size_value(text: str | None) -> tuple[int, int] | None:
    """--image-size H,W (or one number for a square) as (height, width)."""
    from zoo.errors import InputError

    if not text:
        return None
    sizes = int_list("--image-size", text, "pixel sizes")
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise InputError(f"--image-size {text!r}: give height,width in pixels like 224,224 (or 224)")
    return (sizes[0], sizes[-1])


def reading_options() -> list[Callable]:
    """--on-error and --image-size: how image files are read, for every command that reads them."""
    return [
        click.option("--on-error", type=click.Choice(["skip", "raise"]), default="skip", show_default=True,
                     help="An image that cannot be read: leave it out and list it (skip), or stop (raise)."),
        click.option("--strict-images", is_flag=True, hidden=True, help="Old spelling of --on-error raise."),
        click.option("--image-size", metavar="H,W",
                     help="Resize images to this size when the model does not fix its input size."),
    ]


def reading_options_decorator(func: Callable) -> Callable:
    """--on-error --image-size (and the hidden --strict-images) on a command, as plain parameters."""
    for option in reversed(reading_options()):
        func = option(func)
    return func


def on_error_value(on_error: str, strict_images: bool) -> str:
    return "raise" if strict_images else on_error


def source_value(path: str, on_error: str, image_size: tuple[int, int] | None) -> Any:
    """The data source for a path given on the command line."""
    from zoo.datasources import as_source

    return as_source(path, on_error=on_error, image_size=image_size)


def training_data(func: Callable) -> Callable:
    """--data --labels --on-error --image-size, passed on as ``data``: a `TrainingData`."""
    options = [
        click.option("--data", "-d", required=True, type=click.Path(exists=True),
                     help="Inputs: a .npy array (batch first), an image folder (one sub-folder per class), "
                          "or a flat folder / image file with --labels."),
        click.option("--labels", "-y", type=click.Path(exists=True, dir_okay=False),
                     help="A .npy array of one label per row (not needed for an image folder)."),
        *reading_options(),
    ]

    def build(data: str, labels: str | None, on_error: str, strict_images: bool, image_size: str | None):
        if labels is None:
            _no_labels(data)
        return TrainingData(source_value(data, on_error_value(on_error, strict_images), image_size_value(image_size)),
                            labels)

    return _group("data", options, build)(func)


def _no_labels(data: str) -> None:
    """Labels may be left out only for an image folder, which brings its own."""
    import os

    from zoo.errors import InputError

    if not os.path.isdir(data) or not any(entry.is_dir() for entry in os.scandir(data)):
        raise InputError(f"--labels is missing; give a .npy of one label per row (or image) of {data}, "
                         "or a folder with one sub-folder per class")


def pretrain_options(func: Callable) -> Callable:
    """The settings of each pretrained layer, passed on as ``config``: a `zoo.PretrainConfig`.

    Defaults are the PretrainConfig's own (tests/test_vocabulary.py holds them equal)."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Epochs per layer."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                     help="Adam step size [default: 0.01 autoencoder, 0.02 rbm]."),
        click.option("--denoise", type=float, default=0.0, show_default=True,
                     help="Fraction of inputs zeroed while training autoencoders."),
        click.option("--sparsity", metavar="TARGET[,WEIGHT]", help="Target mean activation of hidden units."),
        click.option("--cd-k", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Gibbs steps of CD-k (rbm)."),
        click.option("--visible", type=click.Choice(["auto", "bernoulli", "gaussian"]), default="auto",
                     show_default=True, help="Input units: bernoulli for [0, 1] data, gaussian for real values."),
        click.option("--tied/--untied", default=True, show_default=True,
                     help="Autoencoders decode with their encoder's weights (--untied: their own)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), help="torch threads [default: one for small layers]."),
        quiet_option,
    ]

    def build(sparsity: str | None, quiet: bool, **values):
        from zoo.options import PretrainConfig

        return PretrainConfig(sparsity=_sparsity(sparsity), progress=not quiet, **values)

    return _group("config", options, build)(func)


def _sparsity(text: str | None) -> tuple[float, ...] | None:
    from zoo.errors import InputError

    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise InputError(f"--sparsity {text!r}: give a target activation like 0.05, or 0.05,0.1 with a weight")
    return values
