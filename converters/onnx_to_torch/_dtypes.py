"""ONNX element types <-> torch dtypes, and numpy arrays (ml_dtypes' bfloat16 and float8 too) <-> tensors."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

# ONNX TensorProto.DataType -> torch dtype. 8 is STRING; 21-23, 25-26 are the 4- and 2-bit types,
# which torch has no arithmetic for: a node producing them is unsupported, named at conversion.
ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32,
    13: torch.uint64, 14: torch.complex64, 15: torch.complex128, 16: torch.bfloat16,
}
for _code, _name in {17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz",
                     24: "float8_e8m0fnu"}.items():
    if hasattr(torch, _name):  # torch >= 2.1 (e8m0: 2.7)
        ONNX_DTYPES[_code] = getattr(torch, _name)
ONNX_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
              8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64",
              14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ",
              19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1",
              24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2"}
FLOAT8 = {d for c, d in ONNX_DTYPES.items() if c in (17, 18, 19, 20, 24)}
# Unsigned types torch stores but barely computes with: arithmetic runs on a wider signed type.
WIDE_UNSIGNED = {torch.uint16: torch.int32, torch.uint32: torch.int64, torch.uint64: torch.int64}


def torch_dtype(code: int) -> torch.dtype:
    """The torch dtype of an ONNX element type, or KeyError naming it."""
    if code not in ONNX_DTYPES:
        raise KeyError(f"ONNX type {ONNX_NAMES.get(code, code)} has no torch dtype")
    return ONNX_DTYPES[code]


def _bits_view(array: np.ndarray) -> tuple[np.ndarray, torch.dtype] | None:
    """(the raw bits as a numpy integer array, the torch dtype) for ml_dtypes' float types."""
    name = array.dtype.name
    table = {"bfloat16": (np.uint16, torch.bfloat16), "float8_e4m3fn": (np.uint8, "float8_e4m3fn"),
             "float8_e4m3fnuz": (np.uint8, "float8_e4m3fnuz"), "float8_e5m2": (np.uint8, "float8_e5m2"),
             "float8_e5m2fnuz": (np.uint8, "float8_e5m2fnuz"), "float8_e8m0fnu": (np.uint8, "float8_e8m0fnu")}
    if name not in table:
        return None
    bits, dtype = table[name]
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return array.view(bits), dtype


def to_tensor(array: Any) -> torch.Tensor:
    """A numpy array (ml_dtypes' bfloat16/float8 included) as a tensor that owns writable memory."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        raise TypeError("strings have no torch tensor type")
    bits = _bits_view(array)
    if bits is not None:
        raw, dtype = bits
        return torch.from_numpy(np.array(raw, copy=True, order="C")).view(dtype)
    if array.dtype.name in ("int4", "uint4", "int2", "uint2", "float4_e2m1fn"):
        raise TypeError(f"{array.dtype.name} has no torch tensor type")
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = array.copy(order="C")  # np.ascontiguousarray would turn a 0-d array 1-d
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 and float8 become ml_dtypes arrays holding the same bits."""
    tensor = tensor.detach().cpu()
    names = {torch.bfloat16: ("bfloat16", torch.int16)}
    names.update({d: (str(d).replace("torch.", ""), torch.uint8) for d in FLOAT8})
    if tensor.dtype in names:
        import ml_dtypes

        name, bits = names[tensor.dtype]
        return tensor.view(bits).numpy().view(getattr(ml_dtypes, name))
    return tensor.numpy()
