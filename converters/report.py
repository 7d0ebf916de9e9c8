"""What every converter returns: an ONNX model plus a report of how it was made and checked."""
from __future__ import annotations

import dataclasses
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionReport:
        values = dict(data)
        values["outputs"] = [OutputDiff(**o) for o in data.get("outputs", [])]
        return cls(**values)


@dataclass
class Conversion:
    """An ONNX model and its report; `save` writes the model atomically."""

    model: onnx.ModelProto
    report: ConversionReport

    def save(self, path) -> None:
        import os
        import tempfile

        import onnx

        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".onnx.part")
        os.close(fd)
        try:
            onnx.save(self.model, tmp)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def compare_outputs(
    names: list[str], reference: list[np.ndarray], converted: list[np.ndarray]
) -> list[OutputDiff]:
    """Per-output max abs difference and difference relative to the reference's scale."""
    import numpy as np

    diffs = []
    for name, ref, got in zip(names, reference, converted):
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            if ref.size == got.size:
                got = got.reshape(ref.shape)
            else:
                raise ValueError(f"output {name}: shape {list(got.shape)} != reference {list(ref.shape)}")
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1.0)
        max_abs = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        diffs.append(OutputDiff(name, max_abs, max_abs / scale, scale, list(ref.shape)))
    return diffs
