"""Extraction commands: layers (list a model's layers and cut points), extract (features to .npy)."""
from __future__ import annotations

import os
import re

import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, table
from zoo.errors import InputError


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("N" if d is None and i == 0 else str(d if d is not None else "?") for i, d in enumerate(shape)) + ")"


@cli.command("layers")
@click.argument("name")
@json_option
@catalog_option
@cache_option
def layers_command(name: str, as_json: bool, catalog: str | None, cache_dir: str | None) -> None:
    """List a model's layers: name, op, output shape, parameters, cut point.

    NAME is a cataloged model or an .onnx file. A cut point (*) is a layer whose output
    everything above depends on: cutting there keeps all the information the top uses.
    Positions count from 0, or from the top with -1 (the last layer).

    \b
    Example:
        zoo layers bvlc_alexnet.caffe
        zoo layers model.onnx --json
    """
    from zoo.extract import layers

    found = layers(name, catalog=catalog, cache_dir=cache_dir)
    total = len(found)

    def text() -> str:
        rows = [
            [layer.index, layer.index - total, layer.name, layer.op_type, _shape(layer.shape),
             f"{layer.parameters:,}", "*" if layer.is_cut_point else ""]
            for layer in found
        ]
        return table(rows, ["#", "-#", "layer", "op", "output shape", "params", "cut"])

    emit([layer.to_dict() for layer in found], as_json, text)


def _layer_spec(values: tuple[str, ...]):
    """--layer values: ints stay positions, names stay names; several give several outputs."""
    specs: list[str | int] = [int(v) if re.fullmatch(r"[+-]?\d+", v.strip()) else v for v in values]
    return specs[0] if len(specs) == 1 else specs


@cli.command("extract")
@click.argument("name")
@click.option("--layer", "-l", "layer", multiple=True, default=("-2",), show_default=True,
              help="Layer name or position (-1 the last); repeat for several (writes .npz).")
@click.option("--input", "-i", "input_path", required=True, type=click.Path(exists=True),
              help="A .npy array of inputs (batch first), an image folder with a sub-folder per class, "
                   "or Parquet (a file or folder; one input per row).")
@click.option("--output", "-o", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the features (.npy; .npz for several layers).")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.option("--preprocess", is_flag=True, help="Inputs are raw pixels: apply the model's mean/scale/order.")
@click.option("--column", help="Parquet input: the column of inputs (needed when several hold arrays).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              envvar="ZOO_ENGINE", help="Where to run: this process, or a Ray actor pool (pip install 'zoo[ray]').")
@click.option("--address", help="--engine ray: the Ray cluster (e.g. ray://head:10001); default $RAY_ADDRESS "
                                "or a new local instance.")
@click.option("--actors", type=click.IntRange(min=1),
              help="--engine ray: actors in the pool, each with --threads threads (default 1) [default: all CPUs].")
@json_option
@catalog_option
@cache_option
def extract_command(name: str, layer: tuple[str, ...], input_path: str, output_path: str,
                    batch_size: int, threads: int | None, preprocess: bool, column: str | None, engine: str,
                    address: str | None, actors: int | None, as_json: bool,
                    catalog: str | None, cache_dir: str | None) -> None:
    """Write the features of an array file at a layer of a model.

    \b
    Example:
        zoo extract bvlc_alexnet.caffe --layer fc7 --input images.npy --output fc7.npy
        zoo extract model.onnx --layer -2 -i x.npy -o features.npy --json
        zoo extract model.onnx -i train.parquet -o f.npy --engine ray --actors 2
    """
    from zoo.extract import load_extractor

    extractor = load_extractor(name, _layer_spec(layer), catalog=catalog, cache_dir=cache_dir,
                               batch_size=batch_size, threads=threads, preprocess=preprocess)
    result = {"model": name, "layer": extractor.layer, "input": input_path, "output": output_path,
              "fingerprint": extractor.fingerprint}
    if isinstance(extractor.layer, str):
        # One layer goes through the feature cache: resumable, and free the second time.
        from zoo.features import save_features

        cached = save_features(extractor, input_path, output_path, cache_dir=cache_dir,
                               progress=not as_json, column=column,
                               engine=_engine(engine, address, actors, threads))
        shapes = list(cached.features.shape)
        result.update(rows=len(cached.features), shape=shapes, cache_key=cached.key,
                      reused=cached.reused, skipped=cached.skipped)
        if cached.classes is not None:
            result["classes"] = cached.classes
    else:
        if engine != "local":
            raise InputError("--engine ray extracts one layer at a time; give one --layer")
        if os.path.isdir(input_path):
            raise InputError(f"{input_path} is a folder; several layers at once need a .npy input "
                             "(or extract one layer at a time)")
        data = _read_array(input_path)
        features = extractor(data)
        _write_features(output_path, features)
        shapes = {k: list(v.shape) for k, v in features.items()}
        result.update(rows=len(data), shape=shapes)
    emit(result, as_json, f"wrote {output_path}: features of shape {shapes} at layer {extractor.layer}")


def _engine(engine: str, address: str | None, actors: int | None, threads: int | None):
    """The engine= value for the feature cache: "local", or a RayEngine from the Ray options."""
    if engine == "local":
        if address or actors:
            raise InputError("--address and --actors apply to --engine ray; add --engine ray or drop them")
        return "local"
    from zoo.ray_engine import RayEngine

    return RayEngine(address=address, actors=actors, threads=threads or 1)


def _read_array(path: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a .npy array ({exc}); save inputs with numpy.save") from None


def _write_features(path: str, features) -> None:
    """Write .npy (or .npz for a dict) through a temp file so a crash leaves no half file."""
    import tempfile

    import numpy as np

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(features, dict):
                np.savez(f, **features)
            else:
                np.save(f, features)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
