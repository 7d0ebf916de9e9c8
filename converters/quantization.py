"""How far two correct runs of one quantized model may differ: a tolerance from the quantization in the graph.

A quantized TFLite model run by the TFLite interpreter and by onnxruntime gives different numbers
even when the conversion is right: the two runtimes round differently at every requantization, and
TFLite's hybrid kernels (dynamic-range quantization: int8 weights, float activations) quantize
each activation on the fly where the ONNX graph computes in float. A fixed float tolerance refuses
those models; a fixed number of output steps says nothing for the two kinds whose outputs are float.

So the tolerance is measured on the converted graph itself, against its dequantized float form:

- the float reference is the graph with every activation quantization removed (QuantizeLinear ->
  DequantizeLinear pairs on values, and DynamicQuantizeLinear, become identities; weights stay
  dequantized from their int8 values, as both runtimes use them);
- the quantized emulation is the graph as converted, plus an on-the-fly activation quantization
  (DynamicQuantizeLinear) before every Conv, MatMul and Gemm whose weights are int8 and whose
  input is not quantized yet: what the TFLite hybrid kernels do;
- the model's quantization noise is, per output, the largest |emulation - float reference| on
  the verification inputs. The interpreter's output and onnxruntime's are each within about that
  noise of the float reference, so they may differ by `NOISE_FACTOR` times it.

The converted model must also pick the same top class as the interpreter on every row of a
classifier-like output ([batch, classes]), except rows whose two best scores are closer than the
tolerance. Outputs that are integers (an int8-output model) keep their own step: `QUANTIZED_LSB`
steps of one. Float16 models (float16 weights, float32 arithmetic) are not quantized in this sense
and keep the float tolerance.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from converters.report import ConversionReport

# The interpreter and onnxruntime each land within the model's own quantization noise of its float
# form (see the module docstring), so they may differ by twice it; the emulation of TFLite's hybrid
# kernels uses uint8 asymmetric steps where TFLite uses int8 symmetric ones, a coarser grid on
# one side only, which a further factor of 1.5 covers.
NOISE_FACTOR = 3.0
# An integer output may differ by this many of its own steps (each runtime rounds once more at the end).
QUANTIZED_LSB = 4
_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}  # uint8, int8, uint16, int16, int32, int64, uint32, uint64
_WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}


def quantization_kind(model: onnx.ModelProto) -> str | None:
    """'full-integer' (quantized activations), 'dynamic-range' (int8 weights, activations float or
    quantized on the fly) or None."""
    info = _info(model)
    if any(n.op_type == "QuantizeLinear" and n.input[0] in info.data for n in model.graph.node):
        return "full-integer"
    weights = any(n.op_type == "DequantizeLinear" and n.input[0] in info.constant for n in model.graph.node)
    return "dynamic-range" if weights or any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node) else None


# Ops that compute the same on int8 and on float values (moving, selecting, max): a value quantized
# before them and dequantized after them is float all the way once the quantization is removed.
_ANY_TYPE_OPS = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat",
                 "Gather", "Split", "MaxPool", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
                 "Resize", "ReduceMax", "ReduceMin", "Max", "Min"}


def float_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every activation quantization removed (weights stay dequantized)."""
    import onnx
    from onnx import helper

    info = _info(model)
    outputs = {o.name for o in model.graph.output}
    new = onnx.ModelProto()
    new.CopyFrom(model)
    floated: set[str] = set()  # tensors that carry float values once the quantization is gone
    nodes = []
    for node in new.graph.node:
        kind = node.op_type
        if kind in ("QuantizeLinear", "DynamicQuantizeLinear") and node.input[0] in info.data \
                and node.output[0] not in outputs:
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
            floated.add(node.output[0])
        elif kind == "DequantizeLinear" and node.input[0] in floated:
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
        else:
            if kind in _ANY_TYPE_OPS and node.input and node.input[0] in floated:
                floated.update(o for o in node.output if o)
            nodes.append(node)
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    del new.graph.value_info[:]  # int8 types of the tensors that are now float
    return new


def hybrid_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the activation quantization of TFLite's hybrid kernels added (see module docstring)."""
    import onnx
    from onnx import helper

    info = _info(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    new = onnx.ModelProto()
    new.CopyFrom(model)
    nodes = []
    for k, node in enumerate(new.graph.node):
        weight = node.input[_WEIGHTED_OPS[node.op_type]] if node.op_type in _WEIGHTED_OPS else None
        maker = producer.get(weight) if weight else None
        source = producer.get(node.input[0]) if node.input else None
        if (maker is not None and maker.op_type == "DequantizeLinear" and maker.input[0] in info.constant
                and node.input[0] in info.data
                and (source is None or source.op_type not in ("DequantizeLinear", "QuantizeLinear"))):
            q, scale, zero = (f"{node.input[0]}__hybrid{k}_{s}" for s in ("q", "scale", "zero"))
            value = f"{node.input[0]}__hybrid{k}"
            nodes.append(helper.make_node("DynamicQuantizeLinear", [node.input[0]], [q, scale, zero]))
            nodes.append(helper.make_node("DequantizeLinear", [q, scale, zero], [value]))
            node.input[0] = value
        nodes.append(node)
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    return new


def noise(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[float | None] | None:
    """Per output, max |quantized emulation - float reference| on `feeds`; None when it cannot be run."""
    import numpy as np

    from converters.onnx_model import run

    try:
        # As written: onnxruntime's fusions would quantize some inputs on the fly in the float form too.
        _, reference = run(float_reference(model), feeds, optimize=False)
        _, emulated = run(hybrid_emulation(model), feeds, optimize=False)
    except Exception:  # noqa: BLE001 a graph the rewrite cannot type: no measured bound, only the others
        return None
    return [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
            for a, b in zip(emulated, reference)]


def verify_quantized(report: ConversionReport, reference: Sequence[np.ndarray], converted: Sequence[np.ndarray],
                     steps: Sequence[float | None] = (), noise: Sequence[float | None] | None = None,
                     kind: str | None = None) -> None:
    """Judge a quantized model's outputs (`report.outputs`, already compared) by its own quantization.

    `steps` gives, per output, the quantization step of its values (1.0 for an integer output,
    the scale of the int tensor a float output is dequantized from; None when not quantized);
    `noise` the measured quantization noise per output (see `noise`); `kind` what
    `quantization_kind` says. Sets ``report.verified``, ``report.tolerance`` (the loosest
    relative tolerance used) and ``report.quantization`` (per output: the noise, the tolerance
    and which bound set it, the largest difference and, for classifier-like outputs, top-class
    agreement), and adds one note whose wording follows the outcome.
    """
    import numpy as np

    measured = list(noise or [])
    details, verified, loosest = [], True, report.tolerance
    for i, diff in enumerate(report.outputs):
        step = steps[i] if i < len(steps) else None
        bounds = {"float": report.tolerance * diff.scale}
        if step:
            bounds["steps"] = QUANTIZED_LSB * step
        if i < len(measured) and measured[i] is not None:
            bounds["noise"] = NOISE_FACTOR * measured[i]
        allowed = max(bounds.values())
        within = not diff.problem and diff.max_abs <= allowed * (1 + 1e-6)
        entry: dict[str, Any] = {
            "output": diff.name, "max_abs": diff.max_abs, "tolerance_abs": allowed,
            "bound": max(bounds, key=bounds.get), "noise": measured[i] if i < len(measured) else None,
            "scale": step,
        }
        if step:
            entry.update(lsb_allowed=QUANTIZED_LSB, max_lsb=diff.max_abs / step)
        ref = np.asarray(reference[i]) if i < len(reference) else None
        if ref is not None and ref.ndim == 2 and ref.shape[1] > 1 and i < len(converted):
            got = np.asarray(converted[i]).reshape(ref.shape)
            top2 = np.sort(ref, axis=1)[:, -2:]
            tie = (top2[:, 1] - top2[:, 0]) <= allowed
            same = ref.argmax(axis=1) == got.argmax(axis=1)
            entry["argmax_agree"] = f"{int(same.sum())}/{len(same)}"
            entry["argmax_ties"] = int((~same & tie).sum())
            within &= bool(np.all(same | tie))
        entry["within"] = bool(within)
        details.append(entry)
        verified &= within
        loosest = max(loosest, allowed / diff.scale)
    report.verified = bool(verified)
    report.tolerance = loosest
    report.quantization = {"kind": kind, "noise_factor": NOISE_FACTOR, "lsb_allowed": QUANTIZED_LSB,
                           "outputs": details}
    report.notes.append(describe(report.quantization, report.verified))


def describe(quantization: dict[str, Any], verified: bool | None) -> str:
    """One sentence on a quantized model's check that agrees with its outcome."""
    parts = []
    for d in quantization.get("outputs", []):
        text = f"{d['output']}: largest difference {d['max_abs']:.3g} of {d['tolerance_abs']:.3g} allowed"
        if d.get("bound") == "noise":
            text += f" ({quantization.get('noise_factor', NOISE_FACTOR):g} x its quantization noise {d['noise']:.3g})"
        elif d.get("bound") == "steps":
            text += f" ({quantization.get('lsb_allowed', QUANTIZED_LSB)} steps of its output's quantization)"
        else:
            text += " (the float tolerance)"
        if d.get("max_lsb") is not None:
            text += f", {d['max_lsb']:.2f} output steps"
        if "argmax_agree" in d:
            text += f", same top class in {d['argmax_agree']} rows"
        parts.append(text)
    kind = quantization.get("kind") or "quantized"
    verdict = ("checked against its own quantization" if verified
               else "NOT within the tolerance its own quantization allows")
    return f"{kind} model {verdict}, measured against its dequantized float form: " + "; ".join(parts)


def _info(model: onnx.ModelProto):
    from zoo.graph import GraphInfo

    return GraphInfo(model)


__all__ = ["NOISE_FACTOR", "QUANTIZED_LSB", "describe", "float_reference", "hybrid_emulation", "noise",
           "quantization_kind", "verify_quantized"]
