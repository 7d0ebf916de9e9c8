"""`zoo convert` on a SavedModel vs tf2onnx called directly on it, and the second (reused) convert.

Run: .venv/bin/python bench/bench_convert.py [--rounds 2]

The SavedModel is Keras Applications MobileNetV2 (random weights, 224 x 224) exported with
`model.export`. Both sides are timed as a user runs them, as fresh processes:
`python -m tf2onnx.convert --saved-model DIR --opset 17` against `zoo convert NAME` (which also
checks the model's ops and runs TensorFlow and onnxruntime on the same inputs, TensorFlow's side
in a sandboxed child process). The same pair is also timed inside one process, TensorFlow already
imported (zoo's conversion then forks from its converter zygote, started once before timing).
Best of `--rounds` runs, alternating which side goes first. The machine is shared: run it when it
is quiet, the ratios move with load.
Goals: ratio <= 1.15; a second `zoo convert` < 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def mobilenet_v2():
    """Keras MobileNetV2 with random weights and trained-looking batch-norm statistics."""
    import sqlite3  # noqa: F401  (before TensorFlow, whose bundled SQLite lacks FTS5)

    import keras

    keras.utils.set_random_seed(0)
    import numpy as np

    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    # Fresh batch-norm statistics make a near-constant net; give them trained-looking values.
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.1, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, var.shape).astype("float32")])
    return model


def build_saved_model(folder: Path) -> Path:
    model = mobilenet_v2()
    path = folder / "mobilenet_v2_savedmodel"
    model.export(str(path), verbose=False)
    return path


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from zoo.catalog import open_catalog
    from zoo.records import Artifact, Model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        saved_model = build_saved_model(tmp)
        env = {**os.environ, "ZOO_CATALOG": str(tmp / "catalog.db"), "ZOO_CACHE": str(tmp / "cache")}
        cat = open_catalog(env["ZOO_CATALOG"])
        cat.add_model(Model(name="mnv2.sm", framework="tensorflow", format="saved_model", source="local",
                            artifacts=[Artifact(role="model", filename=saved_model.name, path=str(saved_model))]))
        zoo_cli = [str(Path(sys.executable).with_name("zoo")), "convert", "mnv2.sm", "-q", "--opset", "17"]
        tf2onnx_cli = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
                       "--opset", "17", "--output", str(tmp / "direct.onnx")]

        # Processes, as a user runs them.
        direct, zoo_first = [], []
        for round_ in range(args.rounds):
            for side in (("direct", "zoo") if round_ % 2 == 0 else ("zoo", "direct")):  # no order bias
                if side == "direct":
                    direct.append(timed(tf2onnx_cli, env))
                    continue
                for f in (tmp / "cache" / "onnx").rglob("*.onnx"):
                    f.unlink()  # force a real conversion, not a reuse
                zoo_first.append(timed(zoo_cli, env))
        zoo_second = min(timed(zoo_cli, env) for _ in range(3))
        # What any catalog command costs as a process (SQLAlchemy import, catalog open): the floor.
        zoo_search = min(timed([zoo_cli[0], "search", "mnv2"], env) for _ in range(3))

        # In one process, TensorFlow already imported.
        import tensorflow as tf  # noqa: F401
        from tf2onnx import tf_loader
        from tf2onnx.convert import _convert_common

        import zoo
        from converters import tensorflow as tfconv

        def call_tf2onnx() -> None:
            graph_def, inputs, outputs, tables, rename = tf_loader.from_saved_model(
                str(saved_model), None, None, tag=["serve"], signatures=["serving_default"],
                return_initialized_tables=True, return_tensors_to_rename=True)
            _convert_common(graph_def, name=str(saved_model), continue_on_error=True, opset=17,
                            input_names=inputs, output_names=outputs, tensors_to_rename=rename,
                            initialized_tables=tables)

        tfconv.convert_saved_model(saved_model)  # warm both paths (first tf.function traces)
        call_tf2onnx()
        for f in (tmp / "cache" / "onnx").rglob("*.onnx"):
            f.unlink()
        zoo.convert("mnv2.sm", opset=17, catalog=cat, cache_dir=env["ZOO_CACHE"])  # starts the sandbox's zygote
        inproc_direct, inproc_zoo = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            call_tf2onnx()
            inproc_direct.append(time.perf_counter() - start)
            for f in (tmp / "cache" / "onnx").rglob("*.onnx"):
                f.unlink()
            start = time.perf_counter()
            artifact = zoo.convert("mnv2.sm", opset=17, catalog=cat, cache_dir=env["ZOO_CACHE"])
            inproc_zoo.append(time.perf_counter() - start)
        assert artifact.meta["report"]["verified"] is True
        start = time.perf_counter()
        again = zoo.convert("mnv2.sm", opset=17, catalog=cat, cache_dir=env["ZOO_CACHE"])
        inproc_second = time.perf_counter() - start
        assert again.meta["reused"] is True

    report = artifact.meta["report"]
    worst = max(report["outputs"], key=lambda o: o["max_rel"])
    print(f"model: Keras MobileNetV2 224x224 SavedModel (logits); verified: max abs diff {worst['max_abs']:.2g}, "
          f"{worst['max_rel']:.2g} x output scale {worst['scale']:.3g}")
    print(f"processes : tf2onnx CLI {min(direct):6.2f} s | zoo convert {min(zoo_first):6.2f} s | "
          f"ratio {min(zoo_first) / min(direct):.3f} (goal <= 1.15)")
    print(f"in-process: tf2onnx API {min(inproc_direct):6.2f} s | zoo.convert {min(inproc_zoo):6.2f} s | "
          f"ratio {min(inproc_zoo) / min(inproc_direct):.3f}")
    print(f"second convert: zoo convert process {zoo_second:.3f} s | zoo.convert call {inproc_second * 1000:.1f} ms "
          f"(goal < 0.5 s)")
    print(f"floor: `zoo search` process {zoo_search:.3f} s (the same imports and catalog open); "
          f"second convert / search = {zoo_second / zoo_search:.2f}")
    print(f"sandbox: {artifact.meta.get('sandbox', {}).get('summary') or 'none'}")


if __name__ == "__main__":
    main()
