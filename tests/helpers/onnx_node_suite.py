"""ONNX's own node test cases (shipped in the onnx wheel) run through the ONNX -> PyTorch converter.

Nothing is copied: the cases come from `onnx.backend.test.case.node.collect_testcases()` of the
installed onnx. In scope are the cases whose nodes are all in the default domain and whose
element types torch has; `OUT_OF_SCOPE` lists the rest, each with its reason.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

# Op types no converted network needs, or that cannot match the case's expected values.
OUT_OF_SCOPE_OPS = {
    "StringConcat": "strings: torch has no string tensors",
    "StringSplit": "strings: torch has no string tensors",
    "StringNormalizer": "strings: torch has no string tensors",
    "RegexFullMatch": "strings: torch has no string tensors",
    "ImageDecoder": "decodes image files (JPEG/PNG bytes); zoo.images decodes before the model",
    "RandomNormal": "random: the expected values come from numpy's generator",
    "RandomUniform": "random: the expected values come from numpy's generator",
    "RandomNormalLike": "random: the expected values come from numpy's generator",
    "RandomUniformLike": "random: the expected values come from numpy's generator",
    "Multinomial": "random: the expected values come from numpy's generator",
    "Bernoulli": "random: the expected values come from numpy's generator",
}
# Cases out of scope by name, for what is not visible from the op type alone.
OUT_OF_SCOPE_CASES = {
    r"^test_training_dropout(?!_zero_ratio)": "training-mode dropout draws a random mask from numpy's generator",
}
# ONNX element types with no torch dtype: STRING, the 4- and 2-bit integers, FLOAT4E2M1.
OUT_OF_SCOPE_TYPES = {8: "STRING", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 25: "UINT2", 26: "INT2"}


@dataclass
class Verdict:
    name: str
    passed: bool
    why: str = ""


def _element_types(type_proto) -> set[int]:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return {type_proto.tensor_type.elem_type}
    if kind == "sequence_type":
        return _element_types(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return _element_types(type_proto.optional_type.elem_type)
    if kind is None:
        return set()  # untyped (a value_info inside a body)
    return {-1}  # maps, sparse tensors


def _model_types(graph) -> set[int]:
    import onnx

    types = set()
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types |= _element_types(value.type)
    types |= {t.data_type for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                types |= _model_types(attr.g)
            elif attr.type == onnx.AttributeProto.TENSOR:
                types.add(attr.t.data_type)
            elif attr.name in ("to", "output_dtype") and attr.type == onnx.AttributeProto.INT:
                types.add(attr.i)
    return types


def out_of_scope(case) -> str | None:
    """Why a case is out of scope, or None."""
    graph = case.model.graph
    domains = {node.domain for node in graph.node} - {"", "ai.onnx"}
    if domains:
        return f"domain {sorted(domains)[0]} (not the default ONNX domain)"
    for pattern, why in OUT_OF_SCOPE_CASES.items():
        if re.search(pattern, case.name):
            return why
    for node in graph.node:
        if node.op_type in OUT_OF_SCOPE_OPS:
            return OUT_OF_SCOPE_OPS[node.op_type]
    bad = _model_types(graph) & (set(OUT_OF_SCOPE_TYPES) | {-1})
    if bad:
        return f"element type {OUT_OF_SCOPE_TYPES.get(min(bad), 'map')}: no torch dtype"
    return None


def collect() -> tuple[list, dict[str, str]]:
    """(in-scope cases, {out-of-scope case name: why}) from the installed onnx."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        cases = collect_testcases(None)
    scope, skipped = [], {}
    for case in cases:
        why = out_of_scope(case)
        if why:
            skipped[case.name] = why
        else:
            scope.append(case)
    return scope, skipped


def _array(value: Any) -> Any:
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_array(v) for v in value]
    return value


def _torch(value: Any) -> Any:
    from converters.onnx_to_torch._dtypes import to_tensor

    if value is None:
        return None
    if isinstance(value, list):
        return [_torch(v) for v in value]
    return to_tensor(np.asarray(value))


def _numpy(value: Any) -> Any:
    import torch

    from converters.onnx_to_torch._dtypes import to_numpy

    if isinstance(value, (list, tuple)):
        return [_numpy(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_numpy(value)
    return value


def compare(got: Any, want: Any, rtol: float, atol: float) -> None:
    """onnx's runner comparison: same shapes and dtypes, values within rtol/atol (bfloat16: 2 ulps)."""
    if isinstance(want, list):
        assert isinstance(got, list), f"expected a sequence, got {type(got).__name__}"
        assert len(got) == len(want), f"sequence of {len(got)}, expected {len(want)}"
        for g, w in zip(got, want):
            compare(g, w, rtol, atol)
        return
    if want is None:
        assert got is None, "expected an empty optional"
        return
    want = np.asarray(want)
    assert got is not None, "got an empty optional"
    got = np.asarray(got)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2 ** -6)
        got, want = got.astype(np.float32), want.astype(np.float32)
    elif want.dtype.name.startswith("float8"):
        got, want = got.astype(np.float32), want.astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def run_case(case, convert=None) -> Verdict:
    """Convert the case's model and run every data set through it."""
    import torch

    if convert is None:
        from converters.onnx_to_torch import to_torch as convert
    try:
        net = convert(case.model)
        for inputs, outputs in case.data_sets:
            args = [_torch(_array(x)) for x in inputs]
            with torch.no_grad():
                got = net(*args)
            got = list(got) if isinstance(got, tuple) else [got]
            want = [_array(w) for w in outputs]
            assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
            for g, w in zip(got, want):
                compare(_numpy(g), w, case.rtol, case.atol)
    except Exception as exc:  # noqa: BLE001 - a verdict, whatever failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Verdict(case.name, False, f"{type(exc).__name__}: {first[:200]}")
    return Verdict(case.name, True)
