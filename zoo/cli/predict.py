"""`zoo predict`: a classifier's top classes for each input, printed or written to CSV, JSON or Parquet."""
from __future__ import annotations

import os

import click

from zoo.cli._app import cache_option, catalog_option, cli, emit, json_option, quiet_option, skipped_lines, table
from zoo.cli._options import (
    device_option,
    engine_session,
    engine_value,
    image_size_value,
    on_error_value,
    preprocess_option,
    reading_options_decorator,
)

# zoo.predictions imports onnxruntime through zoo.extract: it is imported inside the command.


def _shown_path(path: str | None, index: int) -> str:
    """An input as the table shows it: the file relative to the working folder, else its row."""
    if path is None:
        return f"row {index}"
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


@cli.command("predict")
@click.argument("model")
@click.option("--input", "-i", "--data", "-d", "data", required=True, multiple=True,
              help="Image files (a folder with a sub-folder per class gives each row its label, a flat folder, "
                   "one file, or -i a.jpg -i b.jpg) or a .npy array of model-ready inputs; NAME=FILE.npy once per input of a "
                   "multi-input model.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the table here: .csv, .json or .parquet [default: print it].")
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1), help="Classes per input, best first.")
@click.option("--labels", "-y", type=click.Path(exists=True, dir_okay=False),
              help="The true class of each input (.npy), for a label column and the accuracy.")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@preprocess_option
@device_option
@reading_options_decorator
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              envvar="ZOO_ENGINE", help="Where to run: this process, or a Ray actor pool (pip install 'zoo[ray]').")
@click.option("--address", help="--engine ray: the Ray cluster (e.g. ray://head:10001); default $RAY_ADDRESS "
                                "or a new local instance.")
@click.option("--actors", type=click.IntRange(min=1), help="--engine ray: actors in the pool [default: all CPUs].")
@quiet_option
@json_option
@catalog_option
@cache_option
def predict_command(model, data, output, top, labels, batch_size, threads, preprocess, device, on_error,
                    strict_images, image_size, engine, address, actors, quiet, as_json, catalog, cache_dir):
    """Run the classifier MODEL on inputs: the top classes of each, with their probabilities.

    MODEL is one `zoo train` made, a cataloged image classifier or an .onnx file. One row per
    input, in order; an input that cannot be read keeps its row with the reason (or stops the
    run with --on-error raise). Class names come from the model (the classes `zoo train`
    recorded, or its published labels file); a softmax turns logits into probabilities.

    \b
    Example:
        zoo predict my-classifier -i photos/ -o preds.csv --top 3
        zoo predict my-classifier -i x.npy -y y.npy --json
        zoo predict bvlc_alexnet -i cat.jpg --top 5
    """
    from zoo.cli.extract import input_arg, input_paths
    from zoo.options import ExtractorOptions
    from zoo.predictions import check_output, predict

    data = input_arg(data)
    if output:  # before any work: a known format, not one of the inputs, its folder made
        check_output(output, [*input_paths(data), labels])
    with engine_session(engine_value(engine, address, actors, threads), quiet=quiet or as_json) as running:
        result = predict(model, data, labels, ExtractorOptions(batch_size=batch_size, threads=threads,
                                                               preprocess=preprocess, device=device),
                         top=top, engine=running, on_error=on_error_value(on_error, strict_images),
                         image_size=image_size_value(image_size), progress=not (quiet or as_json), catalog=catalog,
                         cache_dir=cache_dir)
    if output:
        result.save(output)
    payload = {**result.to_dict(), "output": output}
    if output:
        payload.pop("rows")  # they are in the file

    def text() -> str:
        lines: list[str] = []
        if output:
            lines.append(f"wrote {len(result)} predictions to {output} ({result.scores})")
        else:
            has_label = "label" in result.columns
            rows = []
            for row in result:
                best = [f"{row[f'class_{i}']} ({100 * row[f'probability_{i}']:.1f}%)"
                        for i in range(1, top + 1) if row.get(f"class_{i}") is not None]
                cells = [_shown_path(row["path"], row["input"])]
                cells += [row["label"]] if has_label else []
                cells.append(", ".join(best) if not row["skipped"] else f"skipped: {row['skipped']}")
                rows.append(cells)
            lines.append(table(rows, ["INPUT", *(["LABEL"] if has_label else []),
                                      "PREDICTED" if top == 1 else f"TOP {top}"]))
        if result.accuracy is not None:
            lines.append(f"accuracy {100 * result.accuracy:.1f}% on {sum(1 for r in result if not r['skipped'])} "
                         "labelled inputs")
        lines += skipped_lines([{"path": s["path"] or f"row {s['input']}", "reason": s["reason"]}
                                for s in result.skipped], len(result), where="their rows say why")  # never quiet
        if not quiet:
            lines += [f"note: {n}" for n in result.notes]
        return "\n".join(lines)

    emit(payload, as_json, text)
