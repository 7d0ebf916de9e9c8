"""Extractor overhead vs bare onnxruntime, cost of a middle cut vs its FLOP share, torch vs onnxruntime.

Run: .venv/bin/python bench/bench_extract.py [--repeats 11]

Models are the onnx package's light zoo models (real architectures, constant weights: the
weights do not change the cost). Timings are interleaved (A, B, A, B...) and medians are
reported, so a neighbour's load hits both sides alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _timing import interleaved  # bench/ is the script's folder

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def light(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"




def bare_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_overhead(repeats: int, batch: int) -> None:
    from zoo.options import ExtractorOptions
    from zoo.extract import load_extractor

    extractor = load_extractor(light("squeezenet"), -3, options=ExtractorOptions(batch_size=batch))
    session = bare_session(extractor.model_path)
    name, outputs = extractor.meta.input.name, extractor.meta.outputs
    x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(extractor(x), session.run(outputs, {name: x})[0], rtol=1e-5, atol=1e-6)
    t = interleaved({"extractor": lambda: extractor(x), "bare": lambda: session.run(outputs, {name: x})}, repeats)
    print(f"[throughput] squeezenet cut at {extractor.layer!r}, batch {batch}, {repeats} interleaved repeats")
    print(f"  bare onnxruntime : {batch / t['bare']:8.1f} samples/s ({t['bare'] * 1e3:.1f} ms/batch)")
    print(f"  Extractor        : {batch / t['extractor']:8.1f} samples/s ({t['extractor'] * 1e3:.1f} ms/batch)")
    print(f"  ratio Extractor/bare throughput: {t['bare'] / t['extractor']:.3f}  (goal >= 0.97)")


def bench_middle_cut(repeats: int, batch: int) -> None:
    import onnx

    from zoo.options import ExtractorOptions
    from zoo.extract import load_extractor
    from zoo.graph import GraphInfo, list_layers, macs

    path = light("resnet50")
    model = onnx.load(path)
    found = list_layers(model, GraphInfo(model))
    points = [layer for layer in found if layer.is_cut_point]
    middle = points[len(points) // 2]
    full = load_extractor(path, -1, options=ExtractorOptions(batch_size=batch))
    half = load_extractor(path, middle.name, options=ExtractorOptions(batch_size=batch))
    fraction = macs(half.cut_model) / macs(full.cut_model)
    x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    t = interleaved({"full": lambda: full(x), "cut": lambda: half(x)}, repeats)
    print(f"[middle cut] resnet50 cut at {middle.name!r} (layer {middle.index} of {len(found)}), batch {batch}")
    print(f"  full model: {t['full'] * 1e3:.1f} ms/batch; cut: {t['cut'] * 1e3:.1f} ms/batch")
    print(f"  time fraction cut/full: {t['cut'] / t['full']:.3f}   MAC fraction of the prefix: {fraction:.3f}")


def bench_reload(repeats: int) -> None:
    """A second load_extractor: cut from the cache, so about one session start."""
    import onnxruntime as ort

    from zoo.extract import load_extractor

    path = light("resnet50")
    start = time.perf_counter()
    first = load_extractor(path, -2)
    first.session  # noqa: B018  start it, as a first call would
    cold = time.perf_counter() - start

    def reload():
        load_extractor(path, -2).session  # noqa: B018

    def bare():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(str(first.model_path), options, providers=["CPUExecutionProvider"])

    t = interleaved({"reload": reload, "bare": bare}, repeats)
    print(f"[reload] resnet50 cut at {first.layer!r}: first load (cut + session) {cold * 1e3:.0f} ms")
    print(f"  second load + session: {t['reload'] * 1e3:.0f} ms; bare InferenceSession on the cut: "
          f"{t['bare'] * 1e3:.0f} ms; ratio {t['reload'] / t['bare']:.2f}")


def bench_torch(repeats: int, batch: int) -> None:
    try:
        from converters.onnx_to_torch import to_torch  # noqa: F401
    except ImportError as exc:
        print(f"[torch] skipped: converters.onnx_to_torch is not available ({exc})")
        return
    import torch

    from zoo.options import ExtractorOptions
    from zoo.extract import load_extractor

    extractor = load_extractor(light("squeezenet"), -3, options=ExtractorOptions(batch_size=batch))
    module = extractor.to_torch().eval()
    x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    tx = torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            return module(tx)

    got = forward()
    got = got[0] if isinstance(got, (tuple, list)) else got
    want = extractor(x)
    err = float(np.abs(got.numpy() - want).max()) / max(1.0, float(np.abs(want).max()))
    t = interleaved({"onnxruntime": lambda: extractor(x), "torch": forward}, repeats)
    print(f"[torch] squeezenet cut at {extractor.layer!r}, batch {batch}, torch threads {torch.get_num_threads()}")
    print(f"  onnxruntime: {t['onnxruntime'] * 1e3:.1f} ms/batch; torch module: {t['torch'] * 1e3:.1f} ms/batch")
    print(f"  ratio torch/onnxruntime time: {t['torch'] / t['onnxruntime']:.2f}   max rel diff {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ZOO_CACHE"] = cache  # cut files go to a scratch cache, not the user's
        bench_overhead(args.repeats * 2, args.batch)
        bench_middle_cut(args.repeats, max(2, args.batch // 4))
        bench_reload(args.repeats)
        bench_torch(args.repeats, max(2, args.batch // 2))


if __name__ == "__main__":
    main()
