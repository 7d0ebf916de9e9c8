"""Read Caffe files: prototxt (text), caffemodel and binaryproto (binary), old V1 nets upgraded on the way."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zoo.errors import ModelFormatError

from . import schema

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Net:
    """A deploy net: its inputs (blob name -> shape) and layers in the current message format."""

    name: str
    inputs: dict[str, list[int]]
    layers: list[Any]  # LayerParameter messages, Input layers removed
    v1: bool = False
    input_layers: dict[str, str] = field(default_factory=dict)  # input blob -> Input layer name


def read_prototxt(path: str | os.PathLike) -> Net:
    """Parse a deploy .prototxt; unknown fields are skipped the way zoo prototxts need."""
    from google.protobuf import text_format

    path = os.fspath(path)
    name = os.path.basename(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelFormatError(f"cannot read prototxt {path}: {exc.strerror}") from None
    if b"\x00" in data[:4096]:
        raise ModelFormatError(
            f"{name} is not a text prototxt (it is binary; a .caffemodel goes second, after the prototxt)"
        )
    # Comments in old prototxts are not always UTF-8; they never matter to the parse.
    text = data.decode("utf-8", errors="replace")
    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise ModelFormatError(f"{name}: messages nested {depth} levels deep; a Caffe net nests a few levels "
                               f"(at most {MAX_NESTING} are read), so this is not a net definition")
    net = schema.messages().NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True, allow_unknown_extension=True)
    except RecursionError:
        raise ModelFormatError(f"{name}: messages nested too deep to read; this is not a Caffe net definition") from None
    except text_format.ParseError as exc:
        line = exc.GetLine()
        message = str(exc).split(" : ", 1)[-1].replace("\n", " ")
        where = f" line {line}" if line else ""
        raise ModelFormatError(f"{name}:{where}: not a valid Caffe prototxt: {message}") from None
    return _upgrade(net, name)


# Nesting levels of { } a prototxt may use; real nets use 3 or 4 (layer { param { shape { } } }).
MAX_NESTING = 64


def _nesting(text: str) -> int:
    """The deepest { } nesting of a prototxt, outside quoted strings and # comments."""
    import re

    deepest = depth = 0
    for token in re.finditer(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}<>]', text):
        char = token.group()
        if char in "{<":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}>":
            depth -= 1
    return deepest


def read_weights(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Blobs of a .caffemodel by layer name, each as a float32 array of its recorded shape."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelFormatError(f"cannot read caffemodel {path}: {exc.strerror}") from None
    net = _decode(schema.raw_messages().NetParameter, data, path)
    try:
        return _weights_of(net, path)
    except _NotPacked:
        # A writer that did not pack the floats: parse again with the typed schema (slower, same values).
        return _weights_of(_decode(schema.messages().NetParameter, data, path), path)


class _NotPacked(Exception):
    """A blob's floats were not in the packed encoding the fast path reads."""


def _weights_of(net, path: str) -> dict[str, list[np.ndarray]]:
    weights: dict[str, list[np.ndarray]] = {}
    for layer in list(net.layer) + list(net.layers):
        if len(layer.blobs):
            weights[layer.name] = [blob_array(b, f"layer '{layer.name}'", path) for b in layer.blobs]
    return weights


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """The mean image of a .binaryproto file, shaped (C, H, W)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ModelFormatError(f"cannot read mean file {path}: {exc.strerror}") from None
    blob = _decode(schema.raw_messages().BlobProto, data, path)
    array = blob_array(blob, "mean", path)
    if array.size == 0:
        raise ModelFormatError(f"{os.path.basename(path)} holds no mean values; is it a .binaryproto mean file?")
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ModelFormatError(
            f"{os.path.basename(path)}: mean blob has shape {list(array.shape)}; expected (1, C, H, W)"
        )
    return array


def blob_array(blob, what: str = "blob", path: str = "") -> np.ndarray:
    """A raw-schema BlobProto as a float32 array; legacy num/channels/height/width become its shape."""
    import numpy as np

    if blob.HasField("shape"):
        shape = [int(d) for d in blob.shape.dim]
    elif blob.num or blob.channels or blob.height or blob.width:
        shape = [blob.num, blob.channels, blob.height, blob.width]
    else:
        shape = None
    # The raw schema gives packed bytes; the text schema (blobs inline in a prototxt) gives floats.
    if len(blob.data):
        values = _values(blob.data, "<f4")
    elif len(blob.double_data):
        values = _values(blob.double_data, "<f8")
    else:
        values = np.zeros(0, dtype=np.float32)
    if shape is None:
        shape = [values.size]
    if values.size == 0 and 0 not in shape and isinstance(blob.data, bytes):
        raise _NotPacked  # the typed re-parse reports a blob that is really empty
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise ModelFormatError(
            f"{os.path.basename(path)}: {what} blob declares shape {shape} but holds {values.size} values"
        )
    return values.astype(np.float32, copy=False).reshape(shape)


def _values(field, dtype: str) -> np.ndarray:
    import numpy as np

    if isinstance(field, bytes):
        if len(field) % np.dtype(dtype).itemsize:
            raise ModelFormatError(f"a blob holds {len(field)} bytes, not a whole number of {dtype} values")
        return np.frombuffer(field, dtype=dtype)
    return np.asarray(list(field), dtype=dtype)


def _decode(cls, data: bytes, path: str):
    from google.protobuf.message import DecodeError

    message = cls()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ModelFormatError(
            f"{os.path.basename(path)} is not a binary Caffe {cls.DESCRIPTOR.name} ({exc}); "
            "check the file is a complete .caffemodel / .binaryproto download"
        ) from None
    return message


def _upgrade(proto, name: str) -> Net:
    """Normalize net-level inputs, Input layers, V1 layers and TRAIN-only layers into a `Net`."""
    m = schema.messages()
    inputs: dict[str, list[int]] = {}
    if len(proto.input):
        if len(proto.input_shape):
            if len(proto.input_shape) != len(proto.input):
                raise ModelFormatError(
                    f"{name}: {len(proto.input)} net inputs but {len(proto.input_shape)} input_shape entries"
                )
            for blob, shape in zip(proto.input, proto.input_shape):
                inputs[blob] = [int(d) for d in shape.dim]
        elif len(proto.input_dim):
            if len(proto.input_dim) != 4 * len(proto.input):
                raise ModelFormatError(
                    f"{name}: {len(proto.input)} net inputs need {4 * len(proto.input)} input_dim "
                    f"values, found {len(proto.input_dim)}"
                )
            dims = [int(d) for d in proto.input_dim]
            for i, blob in enumerate(proto.input):
                inputs[blob] = dims[4 * i : 4 * i + 4]
        else:
            raise ModelFormatError(f"{name}: net input {proto.input[0]!r} has no input_shape or input_dim")
    v1 = len(proto.layers) > 0
    if v1 and len(proto.layer):
        raise ModelFormatError(f"{name}: mixes old `layers {{}}` (V1) and new `layer {{}}` entries")
    layers = []
    for old in proto.layers if v1 else proto.layer:
        if not _in_test_phase(old):
            continue
        layer = _from_v1(old, m, name) if v1 else old
        layers.append(layer)
    input_layers: dict[str, str] = {}
    kept = []
    for layer in layers:
        if layer.type != "Input":
            kept.append(layer)
            continue
        shapes = list(layer.input_param.shape)
        if not shapes:
            raise ModelFormatError(f"{name}: Input layer {layer.name!r} has no input_param {{ shape {{ }} }}")
        for i, top in enumerate(layer.top):
            shape = shapes[i] if len(shapes) > 1 else shapes[0]
            inputs[top] = [int(d) for d in shape.dim]
            input_layers[top] = layer.name
    if not inputs:
        raise ModelFormatError(
            f"{name}: the net declares no input (no `input:` and no Input layer); is this a train_val "
            "prototxt? Use the deploy prototxt"
        )
    return Net(proto.name, inputs, kept, v1, input_layers)


def _in_test_phase(layer) -> bool:
    # Deploy nets run in TEST phase: honour include/exclude rules that name a phase.
    if len(layer.include):
        return any(not rule.HasField("phase") or rule.phase == 1 for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == 1 for rule in layer.exclude)


def _from_v1(old, m, name: str):
    layer = m.LayerParameter(name=old.name)
    layer.bottom.extend(old.bottom)
    layer.top.extend(old.top)
    enum = old.DESCRIPTOR.fields_by_name["type"].enum_type
    type_name = enum.values_by_number[old.type].name
    new_type = schema.V1_TYPES[type_name][1]
    if new_type is None:
        raise ModelFormatError(
            f"{name}: V1 layer {old.name!r} has no type; a `layers {{ layer {{ ... }} }}` net is Caffe's V0 "
            "format, which zoo does not read: upgrade it with Caffe's upgrade_net_proto_text tool"
        )
    layer.type = new_type
    layer.blobs.extend(old.blobs)
    for param in schema.LAYER_PARAM_FIELDS:
        if param in old.DESCRIPTOR.fields_by_name and old.HasField(param):
            getattr(layer, param).CopyFrom(getattr(old, param))
    return layer
