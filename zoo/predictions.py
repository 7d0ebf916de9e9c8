"""Predictions: run a classifier (one zoo trained, or a cataloged one) on inputs, one row per input.

The last step of the loop: after `zoo train`, `zoo predict pets -i photos/` says what each photo
is. A row per input file (or per row of an array), in input order, with the top classes and
their probabilities; an input that cannot be read keeps its row, with the reason in ``skipped``
(the rule of `zoo.images`), so the table lines up with the inputs. Class names come from the
model's ``meta["classes"]`` (what `zoo train` records) or its published labels file; scores are
probabilities: a softmax is applied when the model outputs logits, which a head zoo trained
records (``meta["outputs"]``) and other models show by their last op or their values.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from zoo.atomic import atomic_open
from zoo.errors import InputError
from zoo.options import ExtractorOptions, accepts_options

if TYPE_CHECKING:
    from zoo.catalog import Catalog
    from zoo.engines import Engine

__all__ = ["Predictions", "check_output", "predict", "scores_kind"]

FORMATS = (".csv", ".json", ".parquet")


@dataclass
class Predictions:
    """A table of predictions, one row per input, that reads like a small DataFrame.

    Columns: ``input`` (position among the inputs), ``path`` (the file, None for array rows),
    ``label`` (the true class, when known: a class folder's, or labels given), ``class_1`` /
    ``probability_1`` ... ``class_K`` / ``probability_K`` (the top K, best first), ``skipped``
    (why an input could not be read, else None; its classes are then None).

    ``len(p)``, ``p["class_1"]`` (a column), ``p[0]`` (a row as a dict), iteration over rows,
    ``p.to_pandas()`` (with pandas installed) and ``p.save("preds.csv" | ".json" | ".parquet")``.
    """

    model: str
    columns: list[str]
    rows: list[dict[str, Any]]
    classes: list[Any]
    scores: str  # "softmax of logits", "probabilities" (the model's own) or "exp of log-probabilities"
    top: int = 1
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.columns:
                raise KeyError(f"no column {key!r}; the columns are {', '.join(self.columns)}")
            return [row[key] for row in self.rows]
        return self.rows[key]

    def __repr__(self) -> str:
        return f"Predictions({self.model!r}, {len(self.rows)} rows, columns={self.columns})"

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """The inputs that could not be read: input, path, reason."""
        return [{"input": r["input"], "path": r["path"], "reason": r["skipped"]} for r in self.rows if r["skipped"]]

    @property
    def accuracy(self) -> float | None:
        """Share of the read inputs whose top class is their label; None without labels."""
        scored = [r for r in self.rows if not r["skipped"] and r.get("label") is not None]
        if not scored:
            return None
        return sum(str(r["class_1"]) == str(r["label"]) for r in scored) / len(scored)

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (pandas is not a dependency of zoo: install it to use this)."""
        from zoo.errors import require

        return require("pandas", "transfer").DataFrame(self.rows, columns=self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "scores": self.scores, "top": self.top, "classes": self.classes,
                "columns": self.columns, "rows": self.rows, "accuracy": self.accuracy,
                "skipped_count": len(self.skipped), "notes": self.notes}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to `path`: ``.csv`` (one line per row), ``.json`` (`to_dict`) or
        ``.parquet`` (pyarrow), atomically. Returns the path."""
        path = check_output(path)
        try:
            self._write(path, path.suffix.lower())
        except OSError as exc:
            from zoo.atomic import write_error

            raise write_error(exc, path) from None
        return path

    def _write(self, path: Path, suffix: str) -> None:
        if suffix == ".csv":
            import csv

            with atomic_open(path, "w") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in self.rows)
        elif suffix == ".json":
            from zoo._json import finite

            with atomic_open(path, "w") as f:
                json.dump(finite(self.to_dict()), f, indent=1, allow_nan=False)
        else:
            from zoo.errors import require

            parquet = require("pyarrow.parquet", "parquet")
            pyarrow = require("pyarrow", "parquet")
            table = pyarrow.Table.from_pylist([{k: _plain(v) for k, v in row.items()} for row in self.rows])
            with atomic_open(path) as f:
                parquet.write_table(table, f)


def check_output(path: str | os.PathLike, inputs: Sequence[Any] = ()) -> Path:
    """`path` made ready for a table of predictions (before any work): its suffix one of
    `FORMATS`, not one of `inputs`, its folder made (said when outside the working directory)."""
    from zoo.destinations import prepare
    from zoo.errors import spelled

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"cannot write predictions to {path.name}: give a file ending in {', '.join(FORMATS)}")
    prepare(path, spelled("path", "--output"), inputs=inputs)
    return path


def _plain(value: Any) -> Any:
    """A cell parquet can store in one column type: class names and labels as text."""
    return value if value is None or isinstance(value, (float, int, str)) and not isinstance(value, bool) else str(value)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def scores_kind(model_meta: dict[str, Any], last_op: str | None, sample: np.ndarray) -> str:
    """What a classifier's outputs are: "logits", "probabilities" or "log-probabilities".

    A model zoo trained records it (``meta["outputs"]``); otherwise the op that makes the output
    says (Softmax, LogSoftmax), else the values do: rows of non-negative numbers summing to 1
    are probabilities, anything else logits.
    """
    recorded = model_meta.get("outputs")
    if recorded in ("logits", "probabilities", "log-probabilities"):
        return recorded
    if last_op == "Softmax":
        return "probabilities"
    if last_op == "LogSoftmax":
        return "log-probabilities"
    if sample.size and sample.min() >= 0 and np.allclose(sample.sum(axis=1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def _probabilities(out: np.ndarray, kind: str) -> np.ndarray:
    out = out.astype(np.float64)
    if kind == "logits":
        return _softmax(out)
    if kind == "log-probabilities":
        return np.exp(out)
    return out


def _class_names(model: Any, width: int, fetch_labels: Any) -> tuple[list[Any], list[str]]:
    """(class of each output index, notes): meta["classes"], the published labels, else the indices."""
    notes: list[str] = []
    meta = getattr(model, "meta", None) or {}
    classes = meta.get("classes")
    if isinstance(classes, list):
        if len(classes) == width:
            return list(classes), notes
        notes.append(f"the catalog lists {len(classes)} classes but the model outputs {width} scores; "
                     "showing class indices")
        return list(range(width)), notes
    labels = fetch_labels()
    if labels is not None:
        if len(labels) == width:
            return labels, notes
        if len(labels) == width - 1:  # TF-slim style: index 0 is "background"
            return ["background", *labels], notes
        notes.append(f"the labels file has {len(labels)} lines but the model outputs {width} scores; "
                     "showing class indices")
    return list(range(width)), notes


def _labels_file(model: Any, catalog: Any, cache_dir: Any) -> list[str] | None:
    """The lines of the model's published labels file (fetched if the catalog knows where), or None."""
    if model is None:
        return None

    def on_disk() -> str | None:
        for artifact in model.artifacts:
            if artifact.role == "labels" and artifact.path and os.path.isfile(artifact.path):
                return artifact.path
            member = (artifact.meta.get("members") or {}).get("labels")
            if artifact.role == "archive" and artifact.path and member:
                found = os.path.join(artifact.path, member)
                if os.path.isfile(found):
                    return found
        return None

    path = on_disk()
    wants = any(a.role == "labels" or "labels" in (a.meta.get("members") or {}) for a in model.artifacts)
    if path is None and wants:
        from zoo.download import fetch
        from zoo.errors import ZooError

        try:
            fetch(model.name, catalog=catalog, cache_dir=cache_dir, quiet=True)
        except ZooError:
            return None
        from zoo.catalog import open_catalog

        model = open_catalog(catalog).get(model.name)
        path = on_disk()
    if path is None:
        return None
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines()]
    return [line for line in lines if line]


@accepts_options(options=ExtractorOptions, exclude=("layer", "pooling"))
def predict(
    model: str | os.PathLike,
    data: Any,
    labels: Any = None,
    options: ExtractorOptions | None = None,
    *,
    top: int = 1,
    engine: str | Engine = "local",
    on_error: str = "skip",
    image_size: Sequence[int] | None = None,
    progress: bool = True,
    catalog: str | os.PathLike | Catalog | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Predictions:
    """Run a classifier on inputs: one row per input with its top classes and their probabilities.

    Args:
        model: a model zoo trained (`zoo train`), a cataloged classifier, or an ``.onnx`` file.
        data: image files (a folder with one sub-folder per class, whose names become the
            ``label`` column; a flat folder; one file; a list), a ``.npy`` path or an array of
            model-ready inputs, or a `zoo.DataSource`.
        labels: the true class of each input (an array or ``.npy`` path), for a ``label``
            column and `Predictions.accuracy`; a class folder brings its own.
        options: batch size, threads, device, preprocessing (`zoo.ExtractorOptions`; the model
            runs whole, so its layer is the last); each field may be passed as a keyword instead.
        top: how many classes per row, best first.
        engine: where the model runs: "local", "ray" or a `zoo.Engine`.
        on_error: an input that cannot be read keeps its row with the reason in ``skipped``
            ("skip") or stops the run ("raise").
        image_size: (height, width) for images when the model does not fix its input size.
        progress: a progress bar on stderr when it is a terminal.
        catalog: the catalog (path, URL or `Catalog`).
        cache_dir: the cache folder.

    Returns:
        A `Predictions` table (``.save("preds.csv")``, ``.to_pandas()``, ``.accuracy``).

    Raises:
        InputError: the model's output is not one score per class, or the data cannot be read.
        UnknownModelError: the model is neither a file nor in the catalog.

    >>> zoo.predict("pets", "photos/", top=3).save("preds.csv")   # doctest: +SKIP
    """
    from tqdm import tqdm

    from zoo.datasources import as_source
    from zoo.engines import engine_for
    from zoo.extract import load_extractor
    from zoo.transfer import load_labels

    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise InputError(f"top={top!r} must be a whole number of classes, at least 1")
    options = (options or ExtractorOptions()).replace(layer=-1, on_error=on_error)
    extractor = load_extractor(model, options=options, catalog=catalog, cache_dir=cache_dir)
    if not isinstance(extractor.layer, str):
        raise InputError(f"{model} has several outputs; predict runs a classifier with one output of class scores")
    record = _record(model, catalog)
    source = as_source(data, extractor, on_error=on_error, image_size=image_size)
    given = None if labels is None else load_labels(labels)
    if given is not None and source.length is not None and len(given) != source.length:
        raise InputError(f"{len(given)} labels for {source.length} inputs; give one label per input, in order")
    files = getattr(source, "files", None)
    folder_labels = None if source.labels is None else [source.classes[i] for i in source.labels]
    kind = classes = None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    chunk = getattr(extractor, "batch_size", None) or 64
    bar = tqdm(total=source.length, unit=getattr(source, "unit", "rows"), desc="predict", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty(), leave=False)
    with bar:
        for start, consumed, out, skipped in engine_for(engine).computed(source, extractor, 0, chunk):
            reasons = {s["index"]: s.get("reason") for s in skipped}
            if out is not None:
                out = out.reshape(len(out), -1)
                if out.shape[1] < 2:
                    raise InputError(
                        f"{model} outputs {out.shape[1]} score per input; predict needs a classifier with one "
                        "score per class (a model `zoo train` made, or an image classifier)")
                if kind is None:
                    kind = scores_kind(getattr(record, "meta", None) or {}, _last_op(extractor), out)
                    classes, notes = _class_names(record, out.shape[1], lambda: _labels_file(record, catalog, cache_dir))
                probabilities = _probabilities(out, kind)
            read = 0
            for index in range(start, start + consumed):
                row: dict[str, Any] = {"input": index, "path": str(files[index]) if files is not None else None}
                if folder_labels is not None or given is not None:
                    label = folder_labels[index] if folder_labels is not None else given[index]
                    row["label"] = label.item() if hasattr(label, "item") else label
                if index in reasons:
                    row.update({f"{k}_{i}": None for i in range(1, top + 1) for k in ("class", "probability")})
                    row["skipped"] = reasons[index]
                else:
                    p = probabilities[read]
                    read += 1
                    best = np.argsort(-p, kind="stable")[:top]
                    for i, c in enumerate(best, start=1):
                        row[f"class_{i}"] = _plain_class(classes[c])
                        row[f"probability_{i}"] = float(p[c])
                    for i in range(len(best) + 1, top + 1):  # fewer classes than `top`
                        row[f"class_{i}"] = row[f"probability_{i}"] = None
                    row["skipped"] = None
                rows.append(row)
            bar.update(consumed)
    if kind is None:
        from zoo.images import describe_skipped

        raise InputError(f"none of the {len(rows)} inputs could be read: "
                         f"{describe_skipped([{'path': r['path'], 'reason': r['skipped']} for r in rows])}")
    columns = ["input", "path", *(["label"] if rows and "label" in rows[0] else []),
               *[f"{k}_{i}" for i in range(1, top + 1) for k in ("class", "probability")], "skipped"]
    shown = {"logits": "softmax of logits", "probabilities": "probabilities",
             "log-probabilities": "exp of log-probabilities"}[kind]
    return Predictions(model=str(model), columns=columns, rows=[{c: r.get(c) for c in columns} for r in rows],
                       classes=list(classes or []), scores=shown, top=top, notes=notes)


def _plain_class(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _record(model: str | os.PathLike, catalog: Any) -> Any:
    """The model's catalog entry (its classes, labels file, what it outputs), None for a bare ONNX file."""
    from zoo.catalog import open_catalog
    from zoo.errors import UnknownModelError

    if not isinstance(model, str):
        return None
    try:
        return open_catalog(catalog).get(model)
    except UnknownModelError:
        return None


def _last_op(extractor: Any) -> str | None:
    """The op type of the node that makes the extractor's output (Softmax for most published classifiers)."""
    graph = extractor.cut_model.graph
    output = extractor.meta.outputs[0]
    node = next((n for n in graph.node if output in n.output), None)
    # A Flatten/Reshape/Squeeze after the softmax (Caffe's prob is often reshaped) says nothing: look through it.
    while node is not None and node.op_type in ("Flatten", "Reshape", "Squeeze", "Identity") and node.input:
        source = node.input[0]
        node = next((n for n in graph.node if source in n.output), None)
    return node.op_type if node is not None else None
