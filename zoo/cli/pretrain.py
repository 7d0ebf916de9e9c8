"""`zoo pretrain`: greedy layer-wise pretraining of a stack on unlabelled data, saved to the catalog."""
from __future__ import annotations

from pathlib import Path

import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, quiet_option, table


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


def _parse_sparsity(text: str | None) -> tuple[float, ...] | None:
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


@cli.command("pretrain")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Unlabelled rows: a .npy array (rows, features) or a .csv of numbers.")
@click.option("--layers", default="300,100", show_default=True, help="Hidden units per layer, bottom first.")
@click.option("--method", type=click.Choice(["autoencoder", "rbm"]), default="autoencoder",
              show_default=True, help="What each layer is trained as.")
@click.option("--name", required=True, help="Catalog name for the pretrained stack.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs per layer.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, help="Adam step size [0.01 autoencoder, 0.02 rbm].")
@click.option("--denoise", type=float, default=0.0, show_default=True,
              help="Fraction of inputs zeroed while training autoencoders.")
@click.option("--sparsity", metavar="TARGET[,WEIGHT]", help="Target mean activation of hidden units.")
@click.option("--cd-k", type=int, default=1, show_default=True, help="Gibbs steps of CD-k (rbm).")
@click.option("--visible", type=click.Choice(["auto", "bernoulli", "gaussian"]), default="auto",
              show_default=True, help="Input units: bernoulli for [0, 1] data, gaussian for real values.")
@click.option("--untied", is_flag=True, help="Autoencoders get their own decoder weights.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name.")
@json_option
@catalog_option
@cache_option
@quiet_option
def pretrain_command(data_path: str, layers: str, method: str, name: str, epochs: int,
                     batch_size: int, lr: float | None, denoise: float, sparsity: str | None,
                     cd_k: int, visible: str, untied: bool, seed: int, replace: bool,
                     as_json: bool, catalog: str | None, cache_dir: str | None, quiet: bool) -> None:
    """Pretrain a stack of layers on unlabelled data and save it to the catalog.

    Each layer is an autoencoder or an RBM trained on the outputs of the frozen layers
    below it. The stack is saved as an ONNX model whose layers are named layer1, layer2...

    \b
    Example:
        zoo pretrain --data X.npy --layers 300,100 --method rbm --name my-base
        zoo layers my-base
    """
    from zoo.pretraining import pretrain

    result = pretrain(
        _load_rows(data_path), _parse_layers(layers), method, epochs=epochs,
        batch_size=batch_size, lr=lr, denoise=denoise, sparsity=_parse_sparsity(sparsity),
        cd_k=cd_k, visible=visible, tied=not untied, seed=seed, name=name, catalog=catalog,
        replace=replace, progress=not quiet and not as_json, cache_dir=cache_dir,
    )

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
