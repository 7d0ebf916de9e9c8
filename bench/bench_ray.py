"""Ray engine throughput: 2 single-thread Ray actors vs one single-thread extractor in this process.

Run: .venv/bin/python bench/bench_ray.py [--rows 512] [--repeats 3] [--model resnet50]

Both sides fill a fresh feature cache from the same .npy file through the same cut model, with
onnxruntime on one thread each; the Ray side is `extract_features(..., engine=RayEngine(actors=2,
threads=1))` on a local Ray instance with 2 CPUs. Runs are interleaved (local, Ray first call,
Ray second call, local...) and medians reported, so a neighbour's load hits every side alike.
Ray's start-up (`ray.init`) is excluded and reported; a new engine's first call includes starting
its actor pool (one process and onnxruntime session per actor); its second call finds the pool
warm. Goals on an otherwise idle 2-core machine: first call >= 1.6x in-process, second call >=
1.85x (the ideal is 2.0). The load average is printed: on a busy machine the figures are low.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def light(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def steady(stamps: list[tuple[float, int]]) -> float:
    """Rows per second over the last 3/4 of the chunks: actor start-up excluded.

    Not from the first chunk on: chunks computed while the writer waited for the first one
    (Ray keeps their order) would arrive at once and inflate the rate.
    """
    start = len(stamps) // 4
    return sum(rows for _, rows in stamps[start + 1:]) / (stamps[-1][0] - stamps[start][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # ResNet-50 (about 4 GMAC an image): enough work per run that starting the actor pool, a few
    # seconds of importing Ray Data and onnxruntime in each actor, is a small part of a Ray run.
    parser.add_argument("--rows", type=int, default=512, help="images (3x224x224) to extract")
    parser.add_argument("--chunk", type=int, default=16, help="feature-cache chunk (rows per Ray task)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet50", help="an onnx light model: resnet50, squeezenet, ...")
    args = parser.parse_args()

    import ray

    from zoo.engines import LocalEngine
    from zoo.extract import load_extractor
    from zoo.features import extract_features
    from zoo.options import ExtractorOptions
    from zoo.ray_engine import RayEngine

    stamps: list[tuple[float, int]] = []  # (time a chunk reached the cache writer, its rows)

    class StampedRay(RayEngine):
        def computed(self, *args):
            for item in super().computed(*args):
                stamps.append((time.perf_counter(), item[1]))
                yield item

    class StampedLocal(LocalEngine):
        def computed(self, *args):
            for item in super().computed(*args):
                stamps.append((time.perf_counter(), item[1]))
                yield item

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        os.environ["ZOO_CACHE"] = str(work / "cache")
        os.environ["ZOO_CATALOG"] = str(work / "catalog.db")
        extractor = load_extractor(light(args.model), -2, options=ExtractorOptions(threads=1))
        rng = np.random.default_rng(0)
        data = work / "x.npy"
        x = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(args.rows, 3, 224, 224))
        for i in range(0, args.rows, 64):
            x[i:i + 64] = rng.standard_normal((min(64, args.rows - i), 3, 224, 224), dtype=np.float32)
        x.flush()
        del x

        startup = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR"))
        data.read_bytes()  # into the page cache, for both sides alike

        # Each repeat: in-process; a new RayEngine's first call (its actor pool starts inside the
        # timed call, overlapping the first reads); the same engine's second call (the pool warm).
        sides = ("local", "first", "warm")
        times: dict[str, list[float]] = {side: [] for side in sides}
        rates: dict[str, list[float]] = {side: [] for side in sides}
        pool_starts = []
        for repeat in range(args.repeats):
            engine = StampedRay(actors=2, threads=1)
            for side in sides:
                folder = work / f"{side}-{repeat}"
                stamps.clear()
                run_engine = StampedLocal() if side == "local" else engine
                times[side].append(timed(lambda folder=folder, run_engine=run_engine: extract_features(
                    extractor, data, cache_dir=folder, chunk_size=args.chunk, progress=False, engine=run_engine)))
                rates[side].append(steady(stamps))
                if side == "first":
                    pool_starts.append(engine.last_run.pool_start_s)
                if side == "warm":
                    assert engine.last_run.pool_start_s is None  # the same actors as the first call
            engine.close()
        local = np.load(next((work / "local-0" / "features").glob("*/features.npy")), mmap_mode="r")
        for side in ("first", "warm"):
            remote = np.load(next((work / f"{side}-0" / "features").glob("*/features.npy")), mmap_mode="r")
            np.testing.assert_array_equal(local, remote)
        t = {k: statistics.median(v) for k, v in times.items()}
        r = {k: statistics.median(v) for k, v in rates.items()}
        print(f"[ray] {args.model} cut at {extractor.layer!r}, {args.rows} images, chunks of {args.chunk}, "
              f"{args.repeats} interleaved repeats; features equal: yes")
        print(f"  ray.init (excluded)          : {startup:6.1f} s")
        print(f"  actor pool start             : {statistics.median(pool_starts):6.1f} s (inside each first call)")
        print(f"  in-process, 1 thread         : {args.rows / t['local']:7.1f} images/s ({t['local']:.1f} s)")
        print(f"  Ray first call, 2 actors     : {args.rows / t['first']:7.1f} images/s ({t['first']:.1f} s)")
        print(f"  Ray second call (warm pool)  : {args.rows / t['warm']:7.1f} images/s ({t['warm']:.1f} s)")
        print(f"  ratio first call/in-process  : {t['local'] / t['first']:.2f}  (goal >= 1.6 on an idle 2-core machine)")
        print(f"  ratio warm call/in-process   : {t['local'] / t['warm']:.2f}  (goal >= 1.85; the ideal is 2.0)")
        print(f"  last 3/4 of the chunks: in-process {r['local']:.1f} images/s, Ray warm {r['warm']:.1f} images/s, "
              f"ratio {r['warm'] / r['local']:.2f} (indicative)")
        print(f"  load average (1, 5, 15 min) at start {tuple(round(v, 2) for v in load_start)}, "
              f"at end {tuple(round(v, 2) for v in os.getloadavg())}; cores {os.cpu_count()}")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
