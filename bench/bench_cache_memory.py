"""Peak RSS while caching features of a dataset twice as large as a set memory cap.

A .npy of float32 rows (2x the cap) goes through a real extractor (an MLP exported to ONNX, cut
by `zoo.load_extractor`, run by onnxruntime) into the feature cache, in a fresh subprocess that
imports only zoo, numpy and onnxruntime. The subprocess samples its own RSS every 10 ms with
psutil ; the peak must stay under the cap.

    .venv/bin/python bench/bench_cache_memory.py [--cap-mb 256]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, threading, time
import psutil
from zoo.extract import load_extractor
from zoo.features import cache_features

process = psutil.Process()

def vm_hwm():
    # The kernel's peak RSS of this program. Not ru_maxrss: that one keeps the parent's peak
    # across fork and exec, so it would report the bench's own dataset writing.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

peak = [0]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.01)

extractor = load_extractor(sys.argv[1], layer=-1)
extractor(__import__("numpy").zeros((2, int(sys.argv[3])), "float32"))  # start the session first
before = process.memory_info().rss
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
features = cache_features(extractor, sys.argv[2], chunk_size=1024, progress=False)
seconds = time.perf_counter() - start
stop.set()
thread.join()
print(json.dumps({
    "before": before, "peak": max(peak[0], process.memory_info().rss),
    "hwm": vm_hwm(),
    "shape": list(features.shape), "seconds": seconds,
}))
"""


def export_mlp(path: Path, width: int, out: int) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.ReLU(), torch.nn.Linear(256, out)).eval()
    torch.onnx.export(net, (torch.zeros(2, width),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mb", type=int, default=256, help="the memory cap; the dataset is twice this")
    parser.add_argument("--width", type=int, default=1024, help="floats per input row")
    args = parser.parse_args()

    cap = args.cap_mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-cache-memory-"))
    model = work / "mlp.onnx"
    export_mlp(model, args.width, 128)
    rows = 2 * cap // (4 * args.width)
    data = work / "data.npy"
    out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(rows, args.width))
    step = 16384
    for i in range(0, rows, step):
        n = min(step, rows - i)
        out[i : i + n] = np.random.default_rng(i).standard_normal((n, args.width), dtype=np.float32)
    out.flush()
    del out
    env = dict(os.environ, ZOO_CACHE=str(work / "cache"), ZOO_CATALOG=str(work / "catalog.db"),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data), str(args.width)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 << 20
    peak = max(figures["peak"], figures["hwm"])
    print(f"dataset {data.stat().st_size / mb:.0f} MiB ({rows} x {args.width} float32) = "
          f"{data.stat().st_size / cap:.2f}x the cap of {cap / mb:.0f} MiB; features {figures['shape']}")
    print(f"RSS before caching (python, numpy, onnxruntime, session) {figures['before'] / mb:8.1f} MiB")
    print(f"peak RSS while caching (psutil every 10 ms / VmHWM)      {figures['peak'] / mb:8.1f} / {figures['hwm'] / mb:.1f} MiB")
    print(f"peak growth during caching                               {(peak - figures['before']) / mb:8.1f} MiB")
    print(f"peak / cap                                               {peak / cap:8.3f}   (goal < 1)")
    print(f"caching took {figures['seconds']:.1f} s ({data.stat().st_size / mb / figures['seconds']:.0f} MiB/s of input)")
    for path in sorted(work.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    work.rmdir()


if __name__ == "__main__":
    main()
