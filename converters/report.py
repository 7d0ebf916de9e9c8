"""What every converter returns: an ONNX model plus a report of how it was made and checked."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

# Outputs must agree within RTOL x the scale of the reference output (its max abs value, at least 1).
DEFAULT_RTOL = 1e-4


@dataclass
class OutputDiff:
    """How far one converted output is from the source framework's output."""

    name: str
    max_abs: float
    max_rel: float  # max_abs / scale
    scale: float  # max |reference|, at least 1.0
    shape: list[int] = field(default_factory=list)
    # Why the output cannot agree whatever the tolerance (NaN or infinite values, a missing
    # output); max_abs and max_rel are then infinite.
    problem: str | None = None


@dataclass
class ConversionReport:
    """How a model was converted and how closely it matches its source."""

    source_format: str
    source_files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    converter: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # package -> version
    opset: int | None = None
    input_layout: str | None = None  # "NCHW" / "NHWC"
    reference: str | None = None  # what the outputs were compared with, e.g. "opencv 4.10"
    outputs: list[OutputDiff] = field(default_factory=list)
    tolerance: float = DEFAULT_RTOL
    verified: bool | None = None  # None: not compared (no reference engine available)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Quantized models: per output, the quantization step, the tolerance in steps, top-class agreement.
    quantization: dict[str, Any] | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def unverified_outputs(self) -> list[OutputDiff]:
        """The outputs beyond tolerance (`not <=`, so a NaN difference counts as beyond)."""
        return [o for o in self.outputs if o.problem or not o.max_rel <= self.tolerance]

    def describe_unverified(self) -> str:
        """One line naming every output beyond tolerance with its figures or its problem."""
        bad = self.unverified_outputs()
        if not self.outputs:
            return "no output could be compared"
        if not bad:
            return f"every output is within tolerance {self.tolerance:g}"
        return "; ".join(
            f"{o.name}: {o.problem}" if o.problem else
            f"{o.name}: max abs diff {o.max_abs:.3g} = {o.max_rel:.3g} x scale {o.scale:.3g} "
            f"(tolerance {self.tolerance:g})" for o in bad
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: an output's infinite difference (see `OutputDiff.problem`) is null."""
        data = dataclasses.asdict(self)
        for output in data["outputs"]:
            for key in ("max_abs", "max_rel"):
                if not math.isfinite(output[key]):
                    output[key] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionReport:
        values = dict(data)
        values["outputs"] = []
        for output in data.get("outputs", []):
            output = dict(output)
            for key in ("max_abs", "max_rel"):
                output[key] = float("inf") if output.get(key) is None else output[key]
            values["outputs"].append(OutputDiff(**output))
        return cls(**values)


@dataclass
class Conversion:
    """An ONNX model and its report; `save` writes the model atomically."""

    model: onnx.ModelProto
    report: ConversionReport
    inputs: list[dict[str, Any]] | None = None  # ``input_records`` of the model when already read

    def save(self, path) -> None:
        import os

        import onnx

        from zoo.atomic import atomic_path

        with atomic_path(os.path.abspath(path)) as tmp:
            onnx.save(self.model, os.fspath(tmp))


def compare_outputs(
    names: list[str], reference: list[np.ndarray], converted: list[np.ndarray]
) -> list[OutputDiff]:
    """Per-output max abs difference and difference relative to the reference's scale.

    NaN or infinite values agree only where both sides have the same one; otherwise, like an
    output one side lacks, they are recorded as an infinite difference with a `problem` that
    says what happened (a bare NaN difference would compare as "within tolerance" nowhere and
    explain nothing).
    """
    import numpy as np

    inf = float("inf")
    diffs = []
    for i in range(max(len(names), len(reference), len(converted))):
        name = names[i] if i < len(names) else f"output {i}"
        if i >= len(reference) or i >= len(converted):
            side = "the converted model" if i >= len(converted) else "the source model"
            diffs.append(OutputDiff(name, inf, inf, 1.0, [], problem=f"missing from {side}"))
            continue
        ref = np.asarray(reference[i], dtype=np.float64)
        got = np.asarray(converted[i], dtype=np.float64)
        if ref.shape != got.shape:
            if ref.size != got.size:  # no difference can be measured: say so instead of failing
                diffs.append(OutputDiff(name, inf, inf, 1.0, list(ref.shape), problem=(
                    f"shape {list(got.shape)} in the converted model, {list(ref.shape)} in the source")))
                continue
            got = got.reshape(ref.shape)
        finite_ref, finite_got = np.isfinite(ref), np.isfinite(got)
        if not (finite_ref.all() and finite_got.all()):
            same = (np.array_equal(finite_ref, finite_got)
                    and np.array_equal(ref[~finite_ref], got[~finite_got], equal_nan=True))
            if not same:
                diffs.append(OutputDiff(name, inf, inf, 1.0, list(ref.shape),
                                        problem=_non_finite_problem(ref, got)))
                continue
            ref, got = ref[finite_ref], got[finite_got]  # the same NaN/inf in both: compare the rest
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1.0)
        max_abs = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        diffs.append(OutputDiff(name, max_abs, max_abs / scale, scale, list(np.shape(reference[i]))))
    return diffs


def _non_finite_problem(ref: np.ndarray, got: np.ndarray) -> str:
    """What differs in the NaN/infinite values of two outputs, e.g. '12 NaN values in the converted output'."""
    import numpy as np

    def count(values: np.ndarray) -> str:
        nan, infinite = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        parts = [f"{nan} NaN" if nan else "", f"{infinite} infinite" if infinite else ""]
        return " and ".join(p for p in parts if p) + " values" if nan or infinite else "none"

    return (f"NaN/infinite values differ: the converted output has {count(got)}, the source "
            f"output {count(ref)} (of {ref.size})")
