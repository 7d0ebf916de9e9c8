"""The preprocessing half of an InputSpec as users give it, and the warning when a model has none.

``zoo add/scan/edit`` take ``--mean 104,117,123 --std 58.4,57.1,57.4 --scale 0.0039 --channel-order BGR
--layout NCHW --resize 256 --crop 224`` or ``--input-spec spec.json`` (the same fields as JSON, the
options winning); the Python API takes an ``InputSpec`` or a dict. Everything is checked here, so a
typo is one line naming the field, not a wrong picture fed to the net later.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.records import LAYOUTS, InputSpec

# The InputSpec fields that say how pixels become the model's input (the others: name, shape, dtype).
FIELDS = ("mean", "std", "scale", "channel_order", "layout", "resize", "crop", "pixel_range")
_HINT = ("set it with `zoo edit {name} --mean R,G,B --std R,G,B --channel-order RGB|BGR` (or --scale, "
         "--resize, --crop, --input-spec FILE.json)")


def parse(spec: InputSpec | Mapping[str, Any] | str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Checked InputSpec fields from a spec (an InputSpec, a mapping or a JSON file) and options.

    Options that are None are left out; given options override the spec's fields.

    >>> parse(mean="104,117,123", channel_order="bgr", crop="227")
    {'mean': [104.0, 117.0, 123.0], 'channel_order': 'BGR', 'crop': [227, 227]}
    """
    fields: dict[str, Any] = {}
    if isinstance(spec, InputSpec):
        fields.update(spec.to_dict())
    elif isinstance(spec, Mapping):
        fields.update(spec)
    elif spec is not None:
        fields.update(_read(Path(spec)))
    fields.update({k: v for k, v in options.items() if v is not None})
    known = {f for f in InputSpec.__dataclass_fields__}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"input spec field(s) {', '.join(unknown)} unknown; the fields are {', '.join(sorted(known))}")
    return {k: _check(k, v) for k, v in fields.items() if v is not None}


MAX_SPEC_BYTES = 1 << 20  # an input spec is a few lines of JSON


def _read(path: Path) -> dict[str, Any]:
    from zoo.formats import special_file_kind

    special = special_file_kind(path)
    if special:  # opening a FIFO blocks until a writer comes: never open one
        raise InputError(f"the input spec {path} is {special}, not a file; give a JSON file")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise InputError(f"the input spec {path} is over {MAX_SPEC_BYTES >> 20} MiB; an input spec is a small "
                             f"JSON object of InputSpec fields")
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the input spec {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"the input spec {path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"the input spec {path} must be a JSON object of InputSpec fields, e.g. "
                         '{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 0.00392}')
    return data


def _check(field: str, value: Any) -> Any:
    if field in ("mean", "std", "pixel_range"):
        numbers = _numbers(field, value)
        if field == "std" and any(n <= 0 for n in numbers):
            raise InputError(f"--std {value}: every std must be positive")
        if field == "pixel_range" and (len(numbers) != 2 or numbers[0] >= numbers[1]):
            raise InputError(f"pixel_range {value!r} must be [low, high] with low < high, e.g. [0, 255]")
        return numbers
    if field == "scale":
        (number,) = _numbers(field, value, count=1)
        if number <= 0:
            raise InputError(f"--scale {value}: the scale must be positive (e.g. 0.00392 for 1/255)")
        return number
    if field == "channel_order":
        order = str(value).upper()
        if order not in ("RGB", "BGR"):
            raise InputError(f"--channel-order {value!r} must be RGB or BGR")
        return order
    if field == "layout":
        layout = str(value).upper() if str(value).lower() != "other" else "other"
        if layout not in LAYOUTS:
            raise InputError(f"--layout {value!r} must be one of {', '.join(LAYOUTS)}")
        return layout
    if field in ("resize", "crop"):
        sizes = _sizes(field, value)
        if field == "crop":
            return sizes * 2 if len(sizes) == 1 else sizes
        return sizes[0] if len(sizes) == 1 else sizes
    return value  # name, shape, dtype: as the model's own record has them


def _numbers(field: str, value: Any, count: int | None = None) -> list[float]:
    items = value.replace(" ", "").split(",") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise InputError(f"--{field.replace('_', '-')} {value!r} must be numbers, e.g. 104,117,123") from None
    if not numbers or (count is not None and len(numbers) != count) or not all(math.isfinite(n) for n in numbers):
        raise InputError(f"--{field.replace('_', '-')} {value!r} must be {count or 'one or more'} finite number(s)")
    return numbers


def _sizes(field: str, value: Any) -> list[int]:
    items = str(value).lower().replace("*", "x").split("x") if isinstance(value, (str, int)) else list(value)
    try:
        sizes = [int(v) for v in items]
    except (TypeError, ValueError):
        raise InputError(f"--{field} {value!r} must be a size in pixels or HxW, e.g. 256 or 224x224") from None
    if len(sizes) not in (1, 2) or any(s <= 0 for s in sizes):
        raise InputError(f"--{field} {value!r} must be one or two positive sizes, e.g. 256 or 224x224")
    return sizes


def apply(spec: InputSpec, fields: Mapping[str, Any]) -> InputSpec:
    """`spec` with `fields` (from `parse`) set; a crop that no resized image can hold is refused."""
    import dataclasses

    new = dataclasses.replace(spec, **dict(fields))
    if new.resize is not None and new.crop is not None:
        (ch, cw), resize = new.crop, new.resize
        never = ch > resize and cw > resize if isinstance(resize, int) else ch > resize[0] or cw > resize[1]
        if never:  # the shorter side (or each side) is the resize: no image is that large after it
            shown = resize if isinstance(resize, int) else "x".join(map(str, resize))
            raise InputError(f"--crop {ch}x{cw} is larger than every image after --resize {shown}; "
                             "give a crop no larger than the resize, e.g. --resize 256 --crop 224")
    return new


def has_preprocessing(spec: InputSpec | None) -> bool:
    """True when the spec says anything about how pixels are turned into the input."""
    return spec is not None and any(getattr(spec, f) is not None for f in ("mean", "std", "scale", "channel_order",
                                                                             "pixel_range"))


def warn_if_missing(spec: InputSpec | None, model: str) -> None:
    """Warn that images go in as plain 0-255 RGB when the model has no preprocessing on record."""
    if has_preprocessing(spec):
        return
    # A file cut directly is not in the catalog: the spec goes on when it is added.
    hint = (_HINT.format(name=model) if os.sep not in model and not model.endswith(".onnx") else
            _HINT.replace("`zoo edit {name} ", "`zoo add {name} ").format(name=model))
    warnings.warn(f"{model} has no input spec: images go in as 0-255 RGB pixels with no mean, std or channel "
                  f"order applied, which is rarely what a pretrained net expects; " + hint, stacklevel=3)


__all__ = ["FIELDS", "apply", "has_preprocessing", "parse", "warn_if_missing"]
