"""Untrusted `.tflite` files: the TFLite interpreter in a child process, after the structure check.

TensorFlow's TFLite interpreter does not verify the flatbuffer it is given: a truncated download or
a file that only starts like one (``....TFL3``) makes it read outside the buffer and the whole
process dies with SIGSEGV (exit 139), in `zoo convert` and in tf2onnx (which builds an interpreter
to read shapes). So zoo (1) walks the file's tables, vectors and indices first, in pure Python
(`zoo.tflite_structure.validate_tflite`, no TensorFlow import, a few milliseconds), refusing what
does not hold together, and (2) runs the
interpreter, which is also the reference the converted model is compared with, in a child process
(a fork, about 0.2 s; see bench/bench_tflite_isolation.py), so whatever slips past the walk ends in
a one-line error instead of a crash. That child can write only its result files (Linux Landlock,
as ``converters.isolation``'s converters).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from zoo.errors import ModelFormatError

# Seconds the child may take to load the interpreter and run the model; ZOO_TFLITE_TIMEOUT overrides.
CHILD_TIMEOUT = 600.0


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
            _sandbox(out)
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
        _sandbox(out)
        result, arrays = _interpret(path, seed, kernels)
    except Exception as exc:  # noqa: BLE001  reported to the parent as one line
        print(f"zoo-error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        sys.exit(3)
    _write(out, result, arrays)


def _sandbox(out: str) -> None:
    """Confine the interpreter's process to writing its result files (``zoo.landlock``; see converters.isolation)."""
    from converters.isolation import enter_sandbox

    enter_sandbox(os.path.dirname(out))


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


__all__ = ["CHILD_TIMEOUT", "run_interpreter"]
