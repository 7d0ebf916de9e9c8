"""What to feed a model whose file does not say: TorchScript input shapes/dtypes and non-tensor args.

A TorchScript archive records its code, not the shapes its ``forward`` expects, and an argument such
as ``forward(x, sr: int)`` must be given a value to export. Users say it as ``--input x=1x512``,
``--input y=Nx3x224x224:float32`` (N: a dynamic dimension) and ``--arg sr=16000``; the Python API
takes the same strings or plain values. Parsed specs are stored on the model (``meta["input_specs"]``
and ``meta["args"]``) so a later `zoo convert NAME` needs nothing.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from zoo.errors import InputError

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_DYNAMIC = ("N", "n", "?", "-1", "None")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMAT = "NAME=DIMxDIMx...[:DTYPE], e.g. x=1x512 or image=Nx3x224x224:float32 (N: dynamic)"

# One input: "1x512:int64", [None, 3, 224, 224], ([None, 512], "int64") or {"shape": ..., "dtype": ...}
InputValue = Union[str, Sequence[Any], Mapping[str, Any]]


def parse_input(text: str) -> dict[str, Any]:
    """``"x=Nx512:int64"`` -> ``{"name": "x", "shape": [None, 512], "dtype": "int64"}``."""
    name, sep, rest = str(text).partition("=")
    if not sep:
        raise InputError(f"--input {text!r} has no name; write it as {_FORMAT}")
    return input_spec(name.strip(), rest.strip())


def input_spec(name: str, value: InputValue) -> dict[str, Any]:
    """One input as ``{"name", "shape", "dtype"}`` from a spec string, a shape list or a mapping."""
    if not _NAME.match(name or ""):
        raise InputError(f"input name {name!r} is not a Python identifier; write it as {_FORMAT}")
    dtype = "float32"
    if isinstance(value, Mapping):
        shape, dtype = value.get("shape"), value.get("dtype") or dtype
    elif isinstance(value, str):
        text, _, given = value.partition(":")
        dtype = given.strip() or dtype
        shape = [_dim(name, d) for d in text.replace("*", "x").split("x")] if text.strip() else []
    elif (isinstance(value, Sequence) and len(value) == 2 and isinstance(value[1], str)
          and not isinstance(value[0], (int, str))):
        shape, dtype = value
    else:
        shape = value
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise InputError(f"input {name!r}: shape {shape!r} is not a list of sizes; write it as {_FORMAT}")
    dims = [_dim(name, d) for d in shape]
    dtype = str(dtype).lower()
    if dtype not in DTYPES:
        raise InputError(f"input {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return {"name": name, "shape": dims, "dtype": dtype}


def _dim(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() in _DYNAMIC):
        return None
    try:
        dim = int(value)
    except (TypeError, ValueError):
        raise InputError(f"input {name!r}: size {value!r} is not a whole number or N (dynamic); "
                         f"write it as {_FORMAT}") from None
    if isinstance(value, float) and value != dim or dim < -1 or dim == 0:
        raise InputError(f"input {name!r}: size {value!r} must be a positive whole number or N")
    return None if dim == -1 else dim


def input_specs(inputs: Mapping[str, InputValue] | Iterable[str] | None) -> list[dict[str, Any]]:
    """Every input, in the given order, from a mapping name -> spec, ``"name=spec"`` strings or
    ``{"name", "shape", "dtype"}`` records (as stored in a model's ``meta["input_specs"]``)."""
    if not inputs:
        return []
    if isinstance(inputs, str):
        inputs = [inputs]
    specs = ([input_spec(str(k), v) for k, v in inputs.items()] if isinstance(inputs, Mapping)
             else [input_spec(str(t.get("name")), t) if isinstance(t, Mapping) else parse_input(t)
                   for t in inputs])
    seen: set[str] = set()
    for spec in specs:
        if spec["name"] in seen:
            raise InputError(f"input {spec['name']!r} is given twice; give each input once")
        seen.add(spec["name"])
    return specs


def parse_arg(text: str) -> tuple[str, Any]:
    """``"sr=16000"`` -> ``("sr", 16000)``: ints, floats, true/false, none, else the string."""
    name, sep, raw = str(text).partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise InputError(f"--arg {text!r} is not NAME=VALUE with NAME a Python identifier, "
                         f"e.g. --arg sr=16000")
    return name, _value(raw.strip())


def _value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            continue
        return value if kind is int or math.isfinite(value) else raw
    return raw


def arg_values(args: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Non-tensor arguments from a mapping or ``"name=value"`` strings; values must be plain JSON."""
    if not args:
        return {}
    if isinstance(args, str):
        args = [args]
    pairs = list(args.items()) if isinstance(args, Mapping) else [parse_arg(t) for t in args]
    values: dict[str, Any] = {}
    for name, value in pairs:
        if not _NAME.match(str(name)):
            raise InputError(f"argument name {name!r} is not a Python identifier")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise InputError(f"argument {name}={value!r}: only int, float, bool, str or None "
                             f"can be given to forward()")
        if name in values:
            raise InputError(f"argument {name!r} is given twice; give each once")
        values[str(name)] = value
    return values


def format_spec(spec: Mapping[str, Any]) -> str:
    """``{"name": "x", "shape": [None, 512], "dtype": "int64"}`` -> ``"x=Nx512:int64"``."""
    dims = "x".join("N" if d is None else str(d) for d in spec.get("shape") or [])
    dtype = spec.get("dtype") or "float32"
    return f"{spec['name']}={dims}" + ("" if dtype == "float32" else f":{dtype}")


__all__ = ["DTYPES", "arg_values", "format_spec", "input_spec", "input_specs", "parse_arg",
           "parse_input"]
