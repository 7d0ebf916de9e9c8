"""What keeping a corrupt `.tflite` from crashing zoo costs: the structure check and the child interpreter.

Run: .venv/bin/python bench/bench_tflite_isolation.py [--rounds 3]

The model is Keras Applications MobileNetV2 (random weights with trained-looking batch-norm
statistics, 224 x 224) converted to TFLite. In one process, TensorFlow already imported, it times:
the pure-Python structure check (`validate_tflite`); the interpreter loading and running the
model on zoo's reference inputs in a child process (`run_interpreter`, what `convert_tflite`
does) against the same work in this process (what it did before); and a whole `convert_tflite`.
It prints the overhead in seconds and the ratio of a conversion with isolation to one without
(the conversion minus the overhead). Best of `--rounds`. The machine is shared: figures move with load.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from _timing import best  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_tflite(folder: Path) -> Path:
    import tensorflow as tf

    from bench_convert import mobilenet_v2  # the same net bench_convert converts as a SavedModel

    model = mobilenet_v2()
    path = folder / "mobilenet_v2.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def in_process(path: Path) -> None:
    """The reference run as convert_tflite did it before: the interpreter in this process."""
    import tensorflow as tf

    from converters.onnx_model import sample_inputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    (detail,) = interpreter.get_input_details()
    feeds = sample_inputs([(detail["name"], [None, 224, 224, 3], "float32")], layout="NHWC")[detail["name"]]
    for row in feeds:
        interpreter.resize_tensor_input(detail["index"], [1, 224, 224, 3])
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], row[None])
        interpreter.invoke()




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    from converters import tensorflow as ct
    from converters.tflite_check import run_interpreter
    from zoo.tflite_structure import validate_tflite

    with tempfile.TemporaryDirectory() as folder:
        path = build_tflite(Path(folder))
        size = path.stat().st_size / 1e6
        check = best(lambda: validate_tflite(path), repeat=rounds)
        child = best(lambda: run_interpreter(path), rounds)
        local = best(lambda: in_process(path), rounds)
        whole = best(lambda: ct.convert_tflite(path), rounds)
    overhead = check + child - local
    print(f"MobileNetV2 TFLite, {size:.1f} MB, best of {rounds}")
    print(f"  structure check (pure Python)          {check * 1000:8.1f} ms")
    print(f"  interpreter in a child process         {child:8.2f} s")
    print(f"  interpreter in this process (baseline) {local:8.2f} s")
    print(f"  isolation overhead                     {overhead:8.2f} s")
    print(f"  convert_tflite with isolation          {whole:8.2f} s")
    print(f"  ratio with / without isolation         {whole / max(whole - overhead, 1e-9):8.2f}")


if __name__ == "__main__":
    main()
