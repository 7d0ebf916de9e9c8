"""The JSON files zoo keeps beside its cached files, as versioned records.

Two formats live on disk: the metadata beside every cut graph (``cuts/<sha>/<key>.json``) and the
manifest of every feature-cache entry (``features/<key>/manifest.json``). Each is one dataclass
with `to_json` / `from_json`, so the keys are spelled once and a file of another version or a
damaged one reads as "not there" (the cache makes it again) rather than as a KeyError later.
Ground floor: no zoo import but errors and the atomic writer.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from zoo.atomic import atomic_open, write_atomic

__all__ = ["CUT_VERSION", "FEATURES_VERSION", "CutInput", "CutMetadata", "FeatureManifest"]

# Bumped when the cut files would differ for the same spec (new rewrite, new metadata).
CUT_VERSION = 4
# Bumped when a feature-cache entry's files would be laid out differently.
FEATURES_VERSION = 1


def _read(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of `cls` (a newer writer's extra keys are left out)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class CutInput:
    """One input a cut depends on: its name, shape (None where unknown), dtype and batch axis.

    ``batch_axis`` is None for an input fed whole with every batch (a scalar sample rate).
    """

    name: str
    shape: list[int | str | None] | None
    dtype: str
    batch_axis: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CutMetadata:
    """What `zoo.extract` knows about one cut graph, written beside it as ``<cut key>.json``.

    ``layers`` are the layer names cut at and ``outputs`` their tensors; ``output_shapes`` and
    ``output_batch_axes`` say where each output's batch sits. ``inputs`` are the inputs the cut
    depends on, ``source_inputs`` every input of the whole model (these may be passed and are
    ignored); ``constants`` the scalar inputs baked in with ``args=`` and ``folded`` the Ifs that
    folded then. ``fixed_batch`` is the batch size a graph that could not be made dynamic takes;
    ``not_cut_point`` names a single layer that other paths bypass (a warning on every load).
    """

    source_sha256: str
    model: str  # who the cut belongs to, for `zoo cache rm --model`
    spec: Any  # the layer spec asked for: a name, a position or a list of them
    layers: list[str]
    outputs: list[str]
    output_shapes: list[list[int | str | None] | None]
    output_batch_axes: list[int]
    inputs: list[CutInput]
    source_inputs: list[str] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)  # scalar inputs baked in with args= (zoo.folding)
    folded: list[str] = field(default_factory=list)  # what folding did to the graph
    fixed_batch: int | None = None
    not_cut_point: str | None = None
    # How the cut was made (`zoo.lineage.Lineage.to_dict()`: its sha256, the model's as parent);
    # None in cuts made before lineage, which get it on their next load.
    lineage: dict[str, Any] | None = None
    version: int = CUT_VERSION

    @property
    def input(self) -> CutInput:
        """The first input, the one the catalog's InputSpec usually describes."""
        return self.inputs[0]

    def to_json(self) -> str:
        data = asdict(self)
        data["input"] = self.input.to_dict()  # kept for readers of single-input cuts
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> CutMetadata | None:
        """The record, or None when the text is not this version's metadata (the cut is made again)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != CUT_VERSION:
                return None
            values = _known(cls, data)
            values["inputs"] = [CutInput(**_known(CutInput, i)) for i in data["inputs"]]
            return cls(**values)
        except (ValueError, TypeError, KeyError):
            return None

    @classmethod
    def read(cls, path: str | os.PathLike) -> CutMetadata | None:
        """The metadata in `path`, None when it is missing, damaged or of another version."""
        try:
            return cls.from_json(Path(path).read_bytes())
        except OSError:
            return None

    def write(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json().encode())


@dataclass
class FeatureManifest:
    """The state of one feature-cache entry, rewritten after every checkpoint (``manifest.json``).

    ``next`` is the first input not yet consumed, ``rows`` the feature rows on disk (fewer than
    ``next`` when inputs were skipped), ``shape``/``dtype`` those of one row. ``dataset`` and
    ``extractor`` are the fingerprints the entry's key hashes; a run resumes only an entry whose
    fingerprints match and that is not ``complete``. ``model`` and ``layer`` say what the features
    are of, for people (`zoo cache list`, `zoo cache rm --model`); the key does not depend on them.
    """

    extractor: str
    dataset: str
    dataset_description: str = ""
    model: str | None = None
    layer: Any = None
    length: int | None = None  # inputs in the source, None for an iterable of unknown length
    created: float = field(default_factory=time.time)
    next: int = 0
    rows: int = 0
    chunks: int = 0
    shape: list[int] | None = None
    dtype: str | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable inputs: index, path, reason
    complete: bool = False
    completed: float | None = None
    classes: list[str] | None = None  # an image folder's class names
    revision: str | None = None  # the revision of the model whose extractor computed them
    # How the complete entry was made (`zoo.lineage.Lineage.to_dict()`: the sha256 of its feature
    # rows, the cut and the data as parents); set when the entry is complete.
    lineage: dict[str, Any] | None = None
    format: int = FEATURES_VERSION

    def resumes(self, extractor: str, dataset: str) -> bool:
        """Whether a run of `extractor` over `dataset` can go on from this unfinished entry."""
        return (self.format == FEATURES_VERSION and self.extractor == extractor
                and self.dataset == dataset and not self.complete)

    def row_bytes(self) -> int:
        """Bytes of one feature row (0 before the first chunk fixed the shape)."""
        import numpy as np

        if self.shape is None or self.dtype is None:
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureManifest | None:
        """The manifest, or None when the text is not one (a damaged or foreign file)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                return None
            return cls(**_known(cls, data))
        except (ValueError, TypeError):
            return None

    @classmethod
    def read(cls, path: str | os.PathLike) -> FeatureManifest | None:
        """The manifest in `path`, None when it is missing or damaged."""
        data = _read(path)
        if data is None:
            return None
        try:
            return cls(**_known(cls, data))
        except TypeError:  # a required key is missing
            return None

    def write(self, path: str | os.PathLike) -> None:
        """Write it so a reader sees the old manifest or the new one, durable before it is renamed."""
        with atomic_open(path, "w", fsync=True) as f:
            f.write(self.to_json())
