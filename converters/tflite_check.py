"""Untrusted `.tflite` files: a structural check of the flatbuffer, then the interpreter in a child process.

TensorFlow's TFLite interpreter does not verify the flatbuffer it is given: a truncated download or
a file that only starts like one (``....TFL3``) makes it read outside the buffer and the whole
process dies with SIGSEGV (exit 139), in `zoo convert` and in tf2onnx (which builds an interpreter
to read shapes). So zoo (1) walks the file's tables, vectors and indices here, in pure Python
(no TensorFlow import, a few milliseconds), refusing what does not hold together, and (2) runs the
interpreter, which is also the reference the converted model is compared with, in a child process
(a fork, about 0.2 s; see bench/bench_tflite_isolation.py), so whatever slips past the walk ends in
a one-line error instead of a crash. The schema is
TensorFlow's ``tensorflow/compiler/mlir/lite/schema/schema.fbs``; field numbers below follow it.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
from typing import Any

from zoo.errors import ModelFormatError

# Seconds the child may take to load the interpreter and run the model; ZOO_TFLITE_TIMEOUT overrides.
CHILD_TIMEOUT = 600.0
# Bytes per element of each TensorType with a fixed size (schema.fbs enum TensorType).
_TYPE_SIZES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4,
               16: 2, 18: 2}
_MAX_TABLES = 5_000_000  # a bound on the walk, far above any real model's tensor and op count


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
        if start > 1 and start + size > len(data):  # weights stored after the flatbuffer (> 2 GB models)
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


# ---------------------------------------------------------------------------------------------
# the interpreter, in a child process


def run_interpreter(path: str | os.PathLike, seed: int = 0, timeout: float | None = None,
                    kernels: str = "default") -> dict[str, Any]:
    """Load the model in TensorFlow's TFLite interpreter in a child process and run it once.

    Returns the input details (name, shape signature, dtype), the deterministic feeds
    (``converters.onnx_model.sample_inputs``, NHWC), the outputs by name and, per output, the
    quantization scale of the int tensor it was dequantized from (quantized models). A crash,
    hang or error of the child raises ModelFormatError with one line saying what happened.

    ``kernels="reference"`` runs TFLite's built-in kernels instead of the XNNPACK delegate.

    Where the OS can fork, the child is a fork of this process after TensorFlow is imported
    (converting needs it here anyway), so it starts in milliseconds; elsewhere, or with
    ``ZOO_TFLITE_CHILD=spawn``, it is a new Python process, which pays TensorFlow's import again
    (seconds) but shares nothing with this one.
    """
    import numpy as np

    path = os.path.abspath(os.fspath(path))
    limit = timeout if timeout is not None else float(os.environ.get("ZOO_TFLITE_TIMEOUT") or CHILD_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="zoo-tflite-") as folder:
        out = os.path.join(folder, "result")
        fork = hasattr(os, "fork") and os.environ.get("ZOO_TFLITE_CHILD", "fork") != "spawn"
        failure = _forked(path, out, seed, limit, kernels) if fork else _spawned(path, out, seed, limit, kernels)
        if failure is not None:
            raise ModelFormatError(f"{path}: {failure}")
        with open(out + ".json") as fh:
            result = json.load(fh)
        with np.load(out + ".npz") as arrays:
            result["feeds"] = {d["name"]: arrays[f"in{i}"] for i, d in enumerate(result["inputs"])}
            result["values"] = {o["name"]: arrays[f"out{i}"] for i, o in enumerate(result["outputs"])}
    return result


def _timeout_message(limit: float) -> str:
    return (f"the TFLite interpreter did not finish loading and running it within {limit:.0f} s "
            f"(raise ZOO_TFLITE_TIMEOUT for a very large model)")


def _forked(path: str, out: str, seed: int, limit: float, kernels: str = "default") -> str | None:
    """Run `_interpret` in a fork; None on success, else what went wrong."""
    import time

    _import_tensorflow()  # in the parent, once: the fork inherits it
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        import faulthandler

        # A crash here is expected and reported by the parent in one line; a traceback dump of
        # the whole interpreter (pytest and PYTHONFAULTHANDLER turn it on) would only bury it.
        faulthandler.disable()
        code = 0
        try:
            _write(out, *_interpret(path, seed, kernels))
        except BaseException as exc:  # noqa: BLE001  reported to the parent as one line
            code = 3
            try:
                with open(out + ".error", "w") as fh:
                    fh.write(f"{type(exc).__name__}: {_first_line(exc)}")
            except BaseException:  # noqa: BLE001, S110  nothing more can be said
                pass
        finally:
            os._exit(code)
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return _timeout_message(limit)
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        return _crash_message(os.WTERMSIG(status))
    if os.WEXITSTATUS(status) != 0:
        try:
            with open(out + ".error") as fh:
                last = fh.read().strip()
        except OSError:
            last = f"exit status {os.WEXITSTATUS(status)}"
        return f"the TFLite interpreter cannot load or run it: {last[:400]}"
    return None


def _spawned(path: str, out: str, seed: int, limit: float, kernels: str = "default") -> str | None:
    """Run `_interpret` in a new Python process; None on success, else what went wrong."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)}
    command = [sys.executable, "-c", "from converters.tflite_check import _child; _child()", path, out, str(seed),
               kernels]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return _timeout_message(limit)
    return None if done.returncode == 0 else _child_failure(done)


def _crash_message(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return (f"the TFLite interpreter crashed ({name}) loading or running it: the file is corrupt, "
            f"truncated or not a valid TFLite model (zoo ran it in a child process, so nothing "
            f"else was affected); download it again or re-export it")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _write(out: str, result: dict[str, Any], arrays: dict[str, Any]) -> None:
    import numpy as np

    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as fh:
        json.dump(result, fh)


def _import_tensorflow():
    import sqlite3  # noqa: F401  (before TensorFlow; see converters.tensorflow._bind_sqlite_first)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _child_failure(done: subprocess.CompletedProcess) -> str:
    """One line for a child that did not succeed: its error, or the signal that killed it."""
    if done.returncode < 0:
        return _crash_message(-done.returncode)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    marked = [line[len("zoo-error: "):] for line in lines if line.startswith("zoo-error: ")]
    last = (marked or lines or [f"exit status {done.returncode}"])[-1]
    return f"the TFLite interpreter cannot load or run it: {last[:400]}"


def _child() -> None:
    """Child process entry: argv = model path, output prefix, seed."""
    path, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kernels = sys.argv[4] if len(sys.argv) > 4 else "default"
    try:
        result, arrays = _interpret(path, seed, kernels)
    except Exception as exc:  # noqa: BLE001  reported to the parent as one line
        print(f"zoo-error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        sys.exit(3)
    _write(out, result, arrays)


def _interpret(path: str, seed: int, kernels: str = "default") -> tuple[dict[str, Any], dict[str, Any]]:
    import warnings

    import numpy as np

    tf = _import_tensorflow()

    from converters.onnx_model import sample_inputs

    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
        warnings.simplefilter("ignore")
        # "reference": TFLite's built-in kernels without the XNNPACK delegate, the other arithmetic
        # TFLite itself offers (how far the two differ bounds what a float conversion can promise).
        resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES \
            if kernels == "reference" else tf.lite.experimental.OpResolverType.AUTO
        interpreter = tf.lite.Interpreter(model_path=path, experimental_op_resolver_type=resolver)
    details = interpreter.get_input_details()
    specs = [(d["name"], [None if s < 0 else int(s) for s in d["shape_signature"]], d["dtype"].__name__)
             for d in details]
    specs = [(n, [None, *s[1:]] if s else s, dt) for n, s, dt in specs]
    feeds = sample_inputs(specs, layout="NHWC", seed=seed)
    batch = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
    dynamic = all(d["shape_signature"][0] < 0 for d in details if len(d["shape_signature"]))
    rows = [feeds] if dynamic else [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(batch)]
    results = []
    for row in rows:
        for d in details:
            interpreter.resize_tensor_input(d["index"], list(row[d["name"]].shape))
        interpreter.allocate_tensors()
        for d in details:
            interpreter.set_tensor(d["index"], row[d["name"]])
        interpreter.invoke()
        results.append([interpreter.get_tensor(o["index"]).copy() for o in interpreter.get_output_details()])
    outputs = interpreter.get_output_details()
    values = [np.concatenate([r[j] for r in results]) for j in range(len(outputs))]
    scales = _output_scales(interpreter, outputs)
    result = {
        "inputs": [{"name": n, "shape": s, "dtype": dt} for n, s, dt in specs],
        "outputs": [{"name": o["name"], "dtype": o["dtype"].__name__, "quantization_scale": scales.get(o["index"])}
                    for o in outputs],
        "quantized": _is_quantized(interpreter),
        "tensorflow": tf.__version__,
        "ops": _op_names(interpreter),
    }
    arrays = {f"in{i}": feeds[n] for i, (n, _, _) in enumerate(specs)}
    arrays.update({f"out{i}": v for i, v in enumerate(values)})
    return result, arrays


def _output_scales(interpreter, outputs) -> dict[int, float]:
    """Output tensor index -> quantization step of the values it holds (one LSB).

    An int output's values are the steps themselves (1); a float output of a quantized model is a
    DEQUANTIZE of an int tensor, whose (largest, for per-channel) scale is the step of the float values.
    """
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    try:
        ops = interpreter._get_ops_details()  # noqa: SLF001  the only way to see which op made a tensor
    except AttributeError:
        ops = []
    makers = {int(o): op for op in ops if op.get("op_name") != "DELEGATE" for o in op.get("outputs", [])}
    scales = {}
    for out in outputs:
        own = out.get("quantization_parameters", {}).get("scales")
        if own is not None and len(own):
            scales[out["index"]] = 1.0  # an int output holds the steps themselves
            continue
        op = makers.get(out["index"])
        if op is not None and op.get("op_name") == "DEQUANTIZE" and len(op.get("inputs", [])):
            source = tensors.get(int(op["inputs"][0]), {})
            found = source.get("quantization_parameters", {}).get("scales")
            if found is not None and len(found):
                scales[out["index"]] = float(max(found))
    return scales


def _op_names(interpreter) -> list[str]:
    """The kinds of op in the model ("CONV_2D", "DENSIFY", "VAR_HANDLE"), for the converter to judge."""
    try:
        ops = interpreter._get_ops_details()  # noqa: SLF001  the only way to list them
    except AttributeError:
        return []
    return sorted({op.get("op_name", "") for op in ops} - {""})


def _is_quantized(interpreter) -> bool:
    """True when activations are integers with scales (full-integer quantization, not float16)."""
    import numpy as np

    for tensor in interpreter.get_tensor_details():
        scales = tensor.get("quantization_parameters", {}).get("scales")
        if tensor["dtype"] in (np.int8, np.uint8, np.int16) and scales is not None and len(scales):
            return True
    return False


__all__ = ["CHILD_TIMEOUT", "run_interpreter", "validate_tflite"]
