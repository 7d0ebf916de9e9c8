"""Engines: where the feature cache's missing chunks are computed, chosen by ``engine=``.

An `Engine` turns a data source's chunks into features, in order; the feature cache writes them.
``"local"`` runs them in this process (`LocalEngine`); ``"ray"`` on a Ray actor pool
(`zoo.ray_engine.RayEngine`, imported only when named); any object with a `computed` method is an
engine too. The names live in one registry, as converters do in `zoo.conversion`: a name maps to
the module and class that implement it, imported on first use, so ``engine="ray"`` costs nothing
until it is asked for. `run_extractor` is the one call of an extractor on one chunk that every
engine makes, so a chunk's features are the same wherever it runs.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from zoo.errors import InputError, option

__all__ = ["ENGINES", "Computed", "Engine", "LocalEngine", "engine_for", "run_extractor"]

# (first input, inputs consumed, features or None when every input of the chunk was skipped, skipped)
Computed = tuple[int, int, "np.ndarray | None", list[dict[str, Any]]]


@runtime_checkable
class Engine(Protocol):
    """Computes the features of a source's chunks from input `start` on, in order."""

    def computed(self, source: Any, extractor: Any, start: int, chunk_size: int) -> Iterator[Computed]:
        """(first input, inputs consumed, features, skipped inputs) of each chunk from `start`.

        The iterator is closed when the caller stops early (a write failed), so an engine with
        workers elsewhere stops them at once.
        """


def run_extractor(extractor: Any, batch: Any, rows: int | None = None) -> np.ndarray:
    """Features of one chunk, one flat row per sample, batch first.

    Args:
        extractor: called on the batch; a dict result (several layers) or a list (several
            outputs) is flattened per sample and put side by side.
        batch: an array, or a dict of named inputs.
        rows: the samples in the batch (a dict of named inputs counts along its batch axis).

    Returns:
        A C-contiguous array with one row per sample.

    Raises:
        InputError: the extractor did not return one row per sample.
    """
    rows = len(batch) if rows is None else rows
    out = extractor(batch)
    # An output whose batch is not its first axis (a recurrent state (layers, N, hidden)) is
    # cached batch first, so every row of the cache is one sample.
    axes = getattr(extractor, "output_batch_axes", None) or {}
    if isinstance(out, dict):  # an extractor cut at several layers: {layer: features}
        out = [np.moveaxis(np.asarray(o), axes.get(k, 0), 0) for k, o in out.items()]
    elif len(axes) == 1 and next(iter(axes.values())):
        out = np.moveaxis(np.asarray(out), next(iter(axes.values())), 0)
    if isinstance(out, (list, tuple)):  # several outputs: cache them side by side, flattened
        out = np.concatenate([np.asarray(o).reshape(rows, -1) for o in out], axis=1)
    out = np.ascontiguousarray(out)
    if out.ndim < 1 or len(out) != rows:
        raise InputError(
            f"the extractor returned {out.shape} for a batch of {rows}; it must return one row per input"
        )
    return out


@dataclass(frozen=True)
class LocalEngine:
    """Compute every chunk in this process, one after the other."""

    def computed(self, source: Any, extractor: Any, start: int, chunk_size: int) -> Iterator[Computed]:
        for first, batch, skipped in source.chunks(start, chunk_size):
            rows = source.rows(batch)
            yield first, rows + len(skipped), run_extractor(extractor, batch, rows) if rows else None, skipped


# Engine name -> "module:class", imported when the name is first used.
ENGINES: dict[str, str] = {
    "local": "zoo.engines:LocalEngine",
    "ray": "zoo.ray_engine:RayEngine",
}


def engine_for(engine: str | Engine) -> Engine:
    """The engine an ``engine=`` argument names: a registered name, or an engine object as it is.

    Raises:
        InputError: an unknown name (the message lists the registered ones), or an object that is
            not an engine.
        MissingDependencyError: the engine needs a package that is not installed (Ray).
    """
    if isinstance(engine, str):
        where = ENGINES.get(engine)
        if where is None:
            raise InputError(
                f"{option('engine', engine)} is not one of {', '.join(map(repr, ENGINES))} (or an object with a "
                "computed(source, extractor, start, chunk_size) method, e.g. zoo.ray_engine.RayEngine)"
            )
        module, _, name = where.partition(":")
        kind = getattr(importlib.import_module(module), name)
        return kind.named() if hasattr(kind, "named") else kind()
    if not isinstance(engine, Engine):
        raise InputError(
            f"engine={engine!r} is not one of {', '.join(map(repr, ENGINES))} (or an object with a "
            "computed(source, extractor, start, chunk_size) method, e.g. zoo.ray_engine.RayEngine)"
        )
    return engine
