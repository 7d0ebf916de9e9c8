"""Extraction commands: layers (list a model's layers and cut points), extract (features to .npy)."""
from __future__ import annotations

import os
import re

import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, quiet_option, skipped_lines, table
from zoo.cli._options import (
    device_option,
    engine_session,
    engine_value,
    image_size_value,
    layer_value,
    on_error_value,
    pooling_option,
    preprocess_option,
    reading_options_decorator,
)
from zoo.errors import InputError


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("N" if d is None and i == 0 else str(d if d is not None else "?") for i, d in enumerate(shape)) + ")"


def _input_shape(shape, batch_axis) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("N" if i == batch_axis else str(d if d else "?") for i, d in enumerate(shape)) + ")"


@cli.command("layers")
@click.argument("name")
@click.option("--inputs", "only_inputs", is_flag=True, help="List only the model's inputs (name, dtype, shape).")
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
              help="Give a scalar input a value (e.g. sr=16000): a top-level If it decides is folded and the "
                   "layers of the branch taken are listed. Repeat for several.")
@json_option
@catalog_option
@cache_option
def layers_command(name: str, only_inputs: bool, args: tuple[str, ...], as_json: bool, catalog: str | None,
                   cache_dir: str | None) -> None:
    """List a model's layers: name, op, output shape, parameters, cut point; then its inputs.

    NAME is a cataloged model or an .onnx file. A cut point (*) is a layer whose output
    everything above depends on: cutting there keeps all the information the top uses.
    Positions count from 0, or from the top with -1 (the last layer). The inputs table shows
    each input's batch axis as N (an input without one, like a sample rate, is fed whole).
    A model whose graph branches on a scalar input (an If on sr) lists the branch's layers
    once the value is given with --arg; `zoo extract ... -i sr=16000` cuts there.

    \b
    Example:
        zoo layers bvlc_alexnet
        zoo layers model.onnx --json
        zoo layers text_encoder.onnx --inputs
        zoo layers silero_vad.onnx --arg sr=16000
    """
    from zoo.extract import branch_hints, layers, model_inputs
    from zoo.input_specs import arg_values

    values = arg_values(args) or None
    inputs = model_inputs(name, args=values, catalog=catalog, cache_dir=cache_dir)
    input_table = table([[i["name"], i["dtype"], _input_shape(i["shape"], i["batch_axis"])] for i in inputs],
                        ["input", "dtype", "shape"])
    if only_inputs:
        emit(inputs, as_json, input_table)
        return
    found = layers(name, args=values, catalog=catalog, cache_dir=cache_dir)
    total = len(found)
    hints = branch_hints(name, args=values, catalog=catalog, cache_dir=cache_dir)

    def text() -> str:
        rows = [
            [layer.index, layer.index - total, layer.name, layer.op_type, _shape(layer.shape),
             f"{layer.parameters:,}", "*" if layer.is_cut_point else ""]
            for layer in found
        ]
        notes = [f"note: {hint}: give it a value (`zoo layers {name} --arg NAME=VALUE`) to list the layers "
                 f"of the branch it takes" for hint in hints]
        return "\n".join([table(rows, ["#", "-#", "layer", "op", "output shape", "params", "cut"]), "",
                          input_table, *notes])

    emit([layer.to_dict() for layer in found], as_json, text)


def _layer_spec(values: tuple[str, ...]):
    """--layer values: ints stay positions, names stay names; several give several outputs."""
    specs = [layer_value(v) for v in values]
    return specs[0] if len(specs) == 1 else specs


@cli.command("extract")
@click.argument("model")
@click.option("--layer", "-l", "layer", multiple=True, default=("-2",), show_default=True,
              help="Layer name or position (-1 the last); repeat for several (writes .npz).")
@click.option("--input", "-i", "--data", "-d", "data", required=True, multiple=True,
              help="A .npy array of inputs (batch first), image files (-i a.jpg -i b.jpg), a folder of images, an image "
                   "folder with a sub-folder per class, or Parquet (a file or folder; one input per row); "
                   "for a model with several inputs, NAME=FILE.npy (or NAME=number) once per input.")
@click.option("--output", "-o", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the features: .npy, or .npz (with the row -> file index, labels and "
                   "skipped files of images; one array per layer for several).")
@click.option("--index-out", type=click.Path(dir_okay=False),
              help="Images with an .npy output: the CSV lining rows up with files (input, path, row, label, "
                   "skipped) [default: OUTPUT's stem + .index.csv].")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@preprocess_option
@pooling_option
@device_option
@reading_options_decorator
@click.option("--column", help="Parquet input: the column of inputs (needed when several hold arrays).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              envvar="ZOO_ENGINE", help="Where to run: this process, or a Ray actor pool (pip install 'zoo[ray]').")
@click.option("--address", help="--engine ray: the Ray cluster (e.g. ray://head:10001); default $RAY_ADDRESS "
                                "or a new local instance.")
@click.option("--actors", type=click.IntRange(min=1),
              help="--engine ray: actors in the pool, each with --threads threads (default 1) [default: all CPUs].")
@quiet_option
@json_option
@catalog_option
@cache_option
def extract_command(model: str, layer: tuple[str, ...], data: tuple[str, ...], output_path: str,
                    index_out: str | None, batch_size: int, threads: int | None, preprocess: bool | None,
                    pooling: str | None, device: str | None, on_error: str, strict_images: bool,
                    image_size: str | None, column: str | None, engine: str, address: str | None,
                    actors: int | None, quiet: bool, as_json: bool, catalog: str | None,
                    cache_dir: str | None) -> None:
    """Write the features of MODEL at a layer for a set of inputs.

    For image files the rows are lined up with the files: an .npz output holds `features`,
    `paths` (the file of each row), `labels` and `classes` (a class folder's) and
    `skipped_paths` / `skipped_reasons`; an .npy output gets a CSV index beside it.

    \b
    Example:
        zoo extract bvlc_alexnet --layer fc7 --input images.npy --output fc7.npy
        zoo extract model.onnx --layer -2 -i x.npy -o features.npy --json
        zoo extract vgg16_notop.keras --layer block5_pool --pooling avg -i photos/ -o vgg.npz
        zoo extract text_encoder.onnx -l pool -i input_ids=ids.npy -i attention_mask=mask.npy -o f.npy
        zoo extract vad.onnx -l -1 -i input=audio.npy -i state=state.npy -i sr=16000 -o f.npy
        zoo extract model.onnx -i train.parquet -o f.npy --engine ray --actors 2
    """
    import warnings

    from zoo.destinations import prepare
    from zoo.errors import SkippedInputsWarning
    from zoo.extract import load_extractor
    from zoo.options import ExtractorOptions

    on_error = on_error_value(on_error, strict_images)
    input_path = input_arg(data)
    # Before any work: an output that is an input is refused, a folder made outside here is said.
    prepare(output_path, "--output", inputs=[*input_paths(input_path), index_out])
    # NAME=number inputs (a sample rate) are baked in: an If they decide folds, so its layers can be cut.
    numbers = {k: _number(v) for k, v in input_path.items() if _is_scalar_arg(v)} if isinstance(input_path, dict) else {}
    options = ExtractorOptions(layer=_layer_spec(layer), batch_size=batch_size, threads=threads,
                               preprocess=preprocess, pooling=pooling, device=device, on_error=on_error)
    extractor = load_extractor(model, options=options, catalog=catalog, cache_dir=cache_dir, args=numbers or None)
    shown = _shown_input(input_path)
    if isinstance(input_path, dict):
        input_path = {k: v for k, v in input_path.items() if k not in numbers}
    result = {"model": model, "layer": extractor.layer, "input": shown, "output": output_path,
              "fingerprint": extractor.fingerprint}
    skipped: list = []
    if isinstance(extractor.layer, str):
        # One layer goes through the feature cache: resumable, and free the second time.
        from zoo.datasources import as_source
        from zoo.features import save_features

        source = as_source(input_path, extractor, preprocess=preprocess, column=column, on_error=on_error,
                           image_size=image_size_value(image_size))
        with engine_session(engine_value(engine, address, actors, threads), quiet=quiet or as_json) as running:
            cached = save_features(extractor, source, output_path, index_out=index_out, cache_dir=cache_dir,
                                   progress=not (quiet or as_json), engine=running)
        shapes = list(cached.features.shape)
        skipped = cached.skipped
        result.update(rows=len(cached.features), shape=shapes, cache_key=cached.key, reused=cached.reused,
                      skipped=skipped, skipped_count=len(skipped),
                      index=str(cached.index_path) if cached.index_path else None)
        if getattr(running, "last_run", None) is not None:
            result["ray"] = running.last_run.to_dict()  # where the chunks ran, how long the pool took
        if cached.classes is not None:
            result["classes"] = cached.classes
    else:
        from zoo.features import save_layer_features

        if engine != "local":
            raise InputError("--engine ray extracts one layer at a time; give one --layer")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedInputsWarning)
            features = save_layer_features(extractor, input_path, output_path)
        skipped = [s for w in caught if isinstance(w.message, SkippedInputsWarning) for s in w.message.skipped]
        result.update(skipped=skipped, skipped_count=len(skipped))
        shapes = {k: list(v.shape) for k, v in features.items()}
        first = next(iter(features))
        result.update(rows=features[first].shape[extractor.output_batch_axes.get(first, 0)], shape=shapes)
    lines = [f"wrote {output_path}: features of shape {shapes} at layer {extractor.layer}"]
    if result.get("index"):
        lines.append(f"wrote {result['index']}: the input file of each row")
    lines += skipped_lines(skipped, result["rows"] + len(skipped))  # never quiet: the result left them out
    emit(result, as_json, "\n".join(lines))


def input_arg(values: tuple[str, ...]):
    """--input values: one plain path, several image files (-i a.jpg -i b.jpg), or NAME=FILE.npy /
    NAME=number pairs, one per model input."""
    if len(values) == 1 and (os.path.exists(values[0]) or "=" not in values[0]):
        if not os.path.exists(values[0]):
            raise InputError(f"--input {values[0]}: no such file or folder; give a .npy file, an image folder, "
                             "or NAME=FILE.npy for each input of a multi-input model")
        return values[0]
    from zoo.images import IMAGE_SUFFIXES

    if (all(os.path.isfile(v) or "=" not in v for v in values)
            and any(v.lower().endswith(IMAGE_SUFFIXES) for v in values)):  # several image files, in order
        for value in values:
            if not os.path.isfile(value):
                raise InputError(f"--input {value}: no such file; give image files that exist, one -i each")
            if not value.lower().endswith(IMAGE_SUFFIXES):
                raise InputError(f"--input {value}: several --input files must be images ({', '.join(IMAGE_SUFFIXES)}); "
                                 "give one .npy file, or NAME=FILE.npy for each input of a multi-input model")
        return list(values)
    named: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key:
            raise InputError(f"--input {value!r}: with several inputs give each as NAME=FILE.npy, e.g. "
                             "--input input_ids=ids.npy --input attention_mask=mask.npy")
        if key in named:
            raise InputError(f"--input {key}= is given twice; give each input once")
        if not os.path.isfile(path) and not _is_number(path):
            what = "is not a regular file" if os.path.exists(path) else "no such file"
            raise InputError(f"--input {key}={path}: {what}; give a .npy file (or a number for a scalar input)")
        named[key] = path
    return named


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text.strip()) is not None


def _is_scalar_arg(value: str) -> bool:
    return not os.path.isfile(value) and _is_number(value)


def _number(text: str) -> int | float:
    """'16000' -> 16000, '0.5' -> 0.5 (the model's dtype is applied when it is baked in)."""
    number = float(text)
    return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", text.strip()) else number


def input_paths(value) -> list:
    """The paths `input_arg` gave, as one list (for the rule that an output is not an input)."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list) else [value]


def _shown_input(value):
    """The --input values as the JSON report shows them (numbers as numbers)."""
    if not isinstance(value, dict):
        return value
    return {k: _number(v) if _is_scalar_arg(v) else v for k, v in value.items()}
