"""The pure-Python structure check of an untrusted `.tflite` file (its flatbuffer), no TensorFlow needed.

TensorFlow's TFLite interpreter does not verify the flatbuffer it is given: a truncated download or
a file that only starts like one (``....TFL3``) makes it read outside the buffer and the whole
process dies. `validate_tflite` walks the file's tables, vectors and indices first (a few
milliseconds), refusing what does not hold together. It lives on the ground floor because both
`zoo.formats` (recognising a file) and `converters.tflite_check` (before the interpreter runs, in
a child process) use it. The schema is TensorFlow's
``tensorflow/compiler/mlir/lite/schema/schema.fbs``; field numbers below follow it.
"""
from __future__ import annotations

import os
import struct
from typing import Any

from zoo.errors import ModelFormatError

__all__ = ["custom_ops", "validate_tflite"]

# Bytes per element of each TensorType with a fixed size (schema.fbs enum TensorType).
_TYPE_SIZES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4,
               16: 2, 18: 2}
_MAX_TABLES = 5_000_000  # a bound on the walk, far above any real model's tensor and op count
_CUSTOM_OP = 32  # BuiltinOperator.CUSTOM: the op is named by the operator code's custom_code string


class _Buffer:
    """Bounds-checked reads of flatbuffer tables, vectors and strings."""

    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.tables = data, path, 0

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path} is not a valid TFLite model: {what} (the file is truncated, corrupt or not "
            f"written by tf.lite.TFLiteConverter); download it again or re-export it")

    def read(self, fmt: str, pos: int) -> Any:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"a field at byte {pos} lies outside the file ({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, what: str) -> _Table:
        self.tables += 1
        if self.tables > _MAX_TABLES:
            raise self.fail("more tables than any model has")
        vtable = pos - self.read("<i", pos)
        vsize = self.read("<H", vtable)
        tsize = self.read("<H", vtable + 2)
        if vsize < 4 or vsize % 2 or pos + tsize > len(self.data):
            raise self.fail(f"the {what} table at byte {pos} has a broken layout")
        self.read(f"<{vsize // 2}H", vtable)  # the whole vtable is inside the file
        return _Table(self, pos, vtable, vsize, tsize, what)

    def target(self, pos: int) -> int:
        """Where the offset stored at `pos` points."""
        return pos + self.read("<I", pos)

    def vector(self, pos: int, item_size: int, what: str) -> tuple[int, int]:
        """(start of the elements, count) of the vector at `pos`."""
        count = self.read("<I", pos)
        if pos + 4 + count * item_size > len(self.data):
            raise self.fail(f"the {what} list ({count} items at byte {pos}) runs past the end of the file")
        return pos + 4, count


class _Table:
    def __init__(self, buf: _Buffer, pos: int, vtable: int, vsize: int, tsize: int, what: str):
        self.buf, self.pos, self.vtable, self.vsize, self.tsize, self.what = buf, pos, vtable, vsize, tsize, what

    def _field(self, index: int, width: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vsize:
            return None
        offset = self.buf.read("<H", self.vtable + slot)
        if not offset:
            return None
        if offset + width > self.tsize:
            raise self.buf.fail(f"field {index} of a {self.what} lies outside its table")
        return self.pos + offset

    def scalar(self, index: int, fmt: str, default: Any = 0) -> Any:
        pos = self._field(index, struct.calcsize(fmt))
        return default if pos is None else self.buf.read(fmt, pos)

    def table(self, index: int, what: str) -> _Table | None:
        pos = self._field(index, 4)
        return None if pos is None else self.buf.table(self.buf.target(pos), what)

    def tables(self, index: int, what: str) -> list[_Table]:
        pos = self._field(index, 4)
        if pos is None:
            return []
        start, count = self.buf.vector(self.buf.target(pos), 4, what)
        return [self.buf.table(self.buf.target(start + 4 * i), what) for i in range(count)]

    def scalars(self, index: int, fmt: str, what: str) -> tuple[Any, ...]:
        pos = self._field(index, 4)
        if pos is None:
            return ()
        size = struct.calcsize(fmt)
        start, count = self.buf.vector(self.buf.target(pos), size, what)
        return struct.unpack_from(f"<{count}{fmt.lstrip('<')}", self.buf.data, start)

    def length(self, index: int, item_size: int, what: str) -> int:
        """Number of items of a vector field (checked to lie inside the file), without reading them."""
        pos = self._field(index, 4)
        return 0 if pos is None else self.buf.vector(self.buf.target(pos), item_size, what)[1]

    def string(self, index: int, what: str) -> bytes | None:
        pos = self._field(index, 4)
        if pos is None:
            return None
        start, count = self.buf.vector(self.buf.target(pos), 1, what)
        if start + count >= len(self.buf.data):  # no room for the terminating zero
            raise self.buf.fail(f"the {what} string runs past the end of the file")
        return self.buf.data[start:start + count]


def validate_tflite(path: str | os.PathLike) -> dict[str, Any]:
    """Walk a `.tflite` file's structure; raise ModelFormatError naming the first thing that is broken.

    Checks that every table, vector and string lies inside the file and that every tensor, buffer
    and operator-code index points at something that exists; returns a small summary.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    buf = _Buffer(data, path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise buf.fail("no TFL3 identifier at bytes 4-8")
    model = buf.table(buf.target(0), "model")
    codes = model.tables(1, "operator code")
    for code in codes:
        code.scalar(0, "<b")
        code.string(1, "custom op name")
        code.scalar(3, "<i")
    buffers = model.tables(4, "buffer")
    for buffer in buffers:
        buffer.length(0, 1, "weights")
        start = buffer.scalar(1, "<Q")
        size = buffer.scalar(2, "<Q")
        if start > 1 and start + size > len(data):  # weights stored after the flatbuffer (> 2 GiB models)
            raise buf.fail(f"a weights buffer at byte {start} of {size} bytes lies outside the file")
    subgraphs = model.tables(2, "subgraph")
    if not subgraphs:
        raise buf.fail("it has no subgraph")
    counts = {"tensors": 0, "operators": 0}
    for graph in subgraphs:
        tensors = graph.tables(0, "tensor")
        counts["tensors"] += len(tensors)
        for tensor in tensors:
            _check_tensor(buf, tensor, buffers)
        for field, what in ((1, "subgraph input"), (2, "subgraph output")):
            for index in graph.scalars(field, "i", what):
                if not 0 <= index < len(tensors):
                    raise buf.fail(f"a {what} names tensor {index}, but the subgraph has {len(tensors)}")
        operators = graph.tables(3, "operator")
        counts["operators"] += len(operators)
        for op in operators:
            code = op.scalar(0, "<I")
            if code >= len(codes):
                raise buf.fail(f"an operator uses op code {code}, but the model has {len(codes)}")
            for field, what in ((1, "operator input"), (2, "operator output"), (8, "operator intermediate")):
                for index in op.scalars(field, "i", what):
                    if not -1 <= index < len(tensors):
                        raise buf.fail(f"an {what} names tensor {index}, but the subgraph has {len(tensors)}")
            op.table(4, "builtin options")
            op.scalars(5, "B", "custom options")
            op.table(12, "builtin options")
        graph.string(4, "subgraph name")
    for meta in model.tables(6, "metadata"):
        if meta.scalar(1, "<I") >= len(buffers):
            raise buf.fail("a metadata entry names a buffer the model does not have")
    for index in model.scalars(5, "i", "metadata buffer"):
        if not 0 <= index < len(buffers):
            raise buf.fail("a metadata buffer index points at no buffer")
    model.tables(7, "signature")
    return {"subgraphs": len(subgraphs), "buffers": len(buffers), "op_codes": len(codes), **counts}


def custom_ops(path: str | os.PathLike) -> list[tuple[str, bytes]]:
    """(custom op name, custom options bytes) of every operator that runs a custom op (Flex ops included).

    Read with the same bounds-checked walk as `validate_tflite` (call that first): a Flex op's
    options hold the TensorFlow op it runs, which ``converters.model_code`` checks.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    buf = _Buffer(data, path)
    model = buf.table(buf.target(0), "model")
    names = []
    for code in model.tables(1, "operator code"):
        builtin = max(code.scalar(0, "<b"), code.scalar(3, "<i"))
        custom = code.string(1, "custom op name")
        names.append(custom.decode("utf-8", "replace") if builtin == _CUSTOM_OP and custom is not None else None)
    found = []
    for graph in model.tables(2, "subgraph"):
        for op in graph.tables(3, "operator"):
            index = op.scalar(0, "<I")
            if index < len(names) and names[index] is not None:
                found.append((names[index], bytes(op.scalars(5, "B", "custom options"))))
    return found


def _check_tensor(buf: _Buffer, tensor: _Table, buffers: list[_Table]) -> None:
    shape = tensor.scalars(0, "i", "tensor shape")
    kind = tensor.scalar(1, "<b")
    index = tensor.scalar(2, "<I")
    tensor.string(3, "tensor name")
    quant = tensor.table(4, "quantization")
    if quant is not None:
        for field, fmt in ((0, "f"), (1, "f"), (2, "f"), (3, "q")):
            quant.scalars(field, fmt, "quantization parameters")
    tensor.scalars(7, "i", "tensor shape signature")
    if index >= len(buffers):
        raise buf.fail(f"a tensor names buffer {index}, but the model has {len(buffers)}")
    if any(d < 0 for d in shape) or kind not in _TYPE_SIZES or tensor.table(6, "sparsity") is not None:
        return
    size = buffers[index].length(0, 1, "weights") if index else 0
    expected = _TYPE_SIZES[kind]
    for dim in shape:
        expected *= dim
    if size and size < expected:
        raise buf.fail(f"a tensor of shape {list(shape)} has {size} bytes of weights, {expected} expected")
