"""The converted torch module vs onnxruntime on the nine light zoo models that ship with onnx.

Run: .venv/bin/python bench/bench_torch_module.py [--repeats 15] [--compile] [--onnx2torch PYTHON]

Single thread (torch.set_num_threads(1), onnxruntime intra_op=1), one 1x3x224x224 input, medians of
interleaved calls (ort, module, ... per round) so load changes hit every column. Columns, as time
ratios to onnxruntime on the same model and input:
  module    `to_torch(path)(x)` under torch.inference_mode: the frozen-inference graph
            (BatchNorm folded, activations fused, convolution weights packed once for oneDNN)
  plain     the lowered graph itself: F.conv2d, F.batch_norm... called one by one, which is what
            the same network written directly in torch runs (the native-op figure)
  script    torch.jit.script of the module (the plain graph, compiled)
  compile   torch.compile(module) with inductor (--compile; minutes per model)
  onnx2torch  onnx2torch.convert of the same file, timed in another interpreter that has it
            (--onnx2torch /path/to/python; never installed in this project's venv)
The shipped light models build every weight from one constant with ConstantOfShape, which
onnx2torch cannot read; all columns run them with their weights as random initializers instead
(tests/helpers/onnx_to_torch.py light_model_randomized: the same graph, the same cost). The
geometric mean of each ratio is printed last, then the conversion time of ResNet-50 (102 MB of
initializers) against creating an onnxruntime session for the same file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import best, interleaved  # bench/ is the script's folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512"]


def light(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def randomized(name: str, folder: Path) -> Path:
    """The light model with random initializers for weights, saved in `folder`."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers.onnx_to_torch import light_model_randomized

    path = folder / f"{name}.onnx"
    if not path.is_file():
        onnx.save(light_model_randomized(light(name), seed=0), str(path))
    return path


def session(path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(path) if not hasattr(path, "SerializeToString") else path.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def bench_model(path: Path, repeats: int, compile_: bool) -> dict[str, float]:
    """Median seconds per call of onnxruntime and each torch form, interleaved."""
    import numpy as np
    import torch

    from converters.onnx_to_torch import to_torch

    ort_session = session(path)
    net = to_torch(path)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    xt = torch.from_numpy(x)
    x_cl = xt.contiguous(memory_format=torch.channels_last)  # what the module hands its graph
    feed = {net.input_names[0]: x}
    scripted = torch.jit.script(net)
    calls = {"ort": lambda: ort_session.run(None, feed)}

    def timed(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    calls["module"] = timed(lambda: net(xt))
    calls["plain"] = timed(lambda: net.graph_module(x_cl))
    calls["script"] = timed(lambda: scripted(x_cl))
    if compile_:
        compiled = torch.compile(net)
        calls["compile"] = timed(lambda: compiled(xt))
    return interleaved(calls, repeats)


def onnx2torch_times(python: str, paths: dict[str, Path], repeats: int) -> dict[str, dict[str, float]]:
    """Run bench/_onnx2torch_timing.py in the interpreter that has onnx2torch: {model: {ort, onnx2torch}}."""
    script = Path(__file__).resolve().parent / "_onnx2torch_timing.py"
    spec = ",".join(f"{name}={path}" for name, path in paths.items())
    out = subprocess.run([python, str(script), "--models", spec, "--repeats", str(repeats)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"onnx2torch timing failed in {python}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def conversion_time(path: Path) -> tuple[float, float, float]:
    """(to_torch seconds, onnxruntime session seconds, first to_torch seconds) for one model file."""
    from converters.onnx_to_torch import to_torch

    start = time.perf_counter()
    to_torch(path)
    first = time.perf_counter() - start
    return best(lambda: to_torch(path), 5), best(lambda: session(path), 5), first


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(LIGHT), help="comma-separated light model names")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="add torch.compile (inductor); slow to compile")
    parser.add_argument("--onnx2torch", metavar="PYTHON", help="an interpreter with onnx2torch installed")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    models = args.models.split(",")
    folder = tempfile.TemporaryDirectory()
    paths = {name: randomized(name, Path(folder.name)) for name in models + ["resnet50"]}
    peer = onnx2torch_times(args.onnx2torch, {m: paths[m] for m in models}, args.repeats) if args.onnx2torch else {}
    columns = ["module", "plain", "script"] + (["compile"] if args.compile else []) + (["onnx2torch"] if peer else [])
    print(f"1 thread, input 1x3x224x224, median of {args.repeats} interleaved calls; time / onnxruntime's")
    print(f"{'model':<14}{'ort ms':>9}" + "".join(f"{c:>12}" for c in columns) + f"{'module ms':>11}")
    ratios: dict[str, list[float]] = {c: [] for c in columns}
    vs_peer: list[float] = []
    failures: list[str] = []
    for name in models:
        times = bench_model(paths[name], args.repeats, args.compile)
        row = {c: times[c] / times["ort"] for c in columns if c in times}
        if peer and "error" not in peer[name]:
            row["onnx2torch"] = peer[name]["onnx2torch"] / peer[name]["ort"]
            vs_peer.append(row["module"] / row["onnx2torch"])
        elif peer:
            failures.append(f"onnx2torch cannot convert {name}: {peer[name]['error']}")
        for c, v in row.items():
            ratios[c].append(v)
        print(f"{name:<14}{times['ort'] * 1e3:>9.1f}" + "".join(f"{row[c]:>12.2f}" if c in row else f"{'-':>12}"
                                                              for c in columns) + f"{times['module'] * 1e3:>11.1f}")
    print(f"{'geomean':<14}{'':>9}" + "".join(f"{geomean(ratios[c]):>12.2f}" if ratios[c] else f"{'-':>12}"
                                              for c in columns))
    for line in failures:
        print(line)
    if vs_peer:
        print(f"module / onnx2torch over the {len(vs_peer)} models both convert: geometric mean "
              f"{geomean(vs_peer):.2f}")
    warm, ort_s, first = conversion_time(paths["resnet50"])
    print(f"ResNet-50 (102 MB of initializers) to_torch: {warm:.2f} s best of 5 (first in the process "
          f"{first:.2f} s); onnxruntime session: {ort_s:.2f} s; ratio {warm / ort_s:.2f}")
    folder.cleanup()


if __name__ == "__main__":
    main()
