"""`zoo pretrain`: greedy layer-wise pretraining of a stack on unlabelled data, saved to the catalog."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, table
from zoo.cli._options import pretrain_options

if TYPE_CHECKING:
    from zoo.options import PretrainConfig


def _load_rows(path: str):
    """Rows from a .npy file, or a comma-separated .csv/.txt file of numbers."""
    import numpy as np

    from zoo.errors import InputError

    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        from zoo.npy import load

        return load(path, what="--data")
    try:
        if suffix in (".csv", ".txt"):
            return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {path} ({exc}); save the rows with numpy.save(path, X)") from None
    raise InputError(
        f"--data {path}: unknown file type {suffix or '(none)'!r}; use a .npy file "
        "(numpy.save) or a .csv of numbers, one row per line"
    )


def _parse_layers(text: str) -> list[int]:
    from zoo.errors import InputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(
            f"--layers {text!r} is not a list of sizes; give hidden units per layer like 300,100"
        ) from None


@cli.command("pretrain")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Unlabelled rows: a .npy array (rows, features) or a .csv of numbers.")
@click.option("--layers", default="300,100", show_default=True, help="Hidden units per layer, bottom first.")
@click.option("--method", type=click.Choice(["autoencoder", "rbm"]), default="autoencoder",
              show_default=True, help="What each layer is trained as.")
@click.option("--name", required=True, help="Catalog name for the pretrained stack.")
@pretrain_options
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name.")
@json_option
@catalog_option
@cache_option
def pretrain_command(data_path: str, layers: str, method: str, name: str, config: PretrainConfig,
                     replace: bool, as_json: bool, catalog: str | None, cache_dir: str | None) -> None:
    """Pretrain a stack of layers on unlabelled data and save it to the catalog.

    Each layer is an autoencoder or an RBM trained on the outputs of the frozen layers
    below it. The stack is saved as an ONNX model whose layers are named layer1, layer2...

    \b
    Example:
        zoo pretrain --data X.npy --layers 300,100 --method rbm --name my-base
        zoo layers my-base
    """
    from zoo.pretraining import pretrain

    config = config.replace(progress=config.progress and not as_json)
    result = pretrain(_load_rows(data_path), _parse_layers(layers), method, config, name=name, catalog=catalog,
                      replace=replace, cache_dir=cache_dir)

    def text() -> str:
        rows = [
            [f"layer{i}", units, f"{errors[0]:.4f}", f"{errors[-1]:.4f}", f"{seconds:.1f}"]
            for i, (units, errors, seconds) in enumerate(
                zip(result.layers, result.losses, result.seconds), start=1)
        ]
        artifact = result.model.artifacts[0]
        return "\n".join([
            table(rows, ["layer", "units", "error first epoch", "error last epoch", "seconds"]),
            f"saved {name} ({result.method} stack, {result.visible} inputs) to {artifact.path}",
            f"list its layers with `zoo layers {name}`",
        ])

    emit(result.to_dict(), as_json, text)
