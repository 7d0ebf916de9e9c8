"""Time to pretrain a 3-layer stack with the frozen layers' outputs cached vs recomputed per batch.

    .venv/bin/python bench/bench_pretrain.py [--epochs 5] [--repeats 3]

Two stacks on scikit-learn's digits: 64-512-256-128 on the 8x8 images, and Hinton and
Salakhutdinov's 784-1000-500-250 on the same images upscaled to 28x28 (MNIST's size), where the
frozen layers are wide enough for their cost to matter.

Both runs do the same training (same seed, data, epochs, batches; the printed losses agree);
the baseline reruns the frozen lower layers on every batch of every epoch, as a stack trained
end to end through frozen layers would. Times are CPU seconds of this process on one torch
thread (the machine is shared, so wall time measures the neighbours), the best of ``--repeats``
interleaved runs; wall seconds are printed beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    images = (load_digits().images / 16.0).astype(np.float32)
    small = images.reshape(len(images), -1)
    large = zoom(images, (1, 3.5, 3.5), order=1).clip(0, 1).reshape(len(images), -1)
    print(f"{len(images)} digits, {args.epochs} epochs per layer, batch 64, 1 torch thread, "
          f"best of {args.repeats}")
    print(f"{'stack':<17} {'method':<12} {'cached cpu s':>12} {'recomputed cpu s':>16} {'ratio':>6}"
          "   wall s cached / recomputed")
    for X, layers in ((small, [512, 256, 128]), (large, [1000, 500, 250])):
        _compare(X, layers, args.epochs, args.repeats)


def _compare(X, layers: list[int], epochs: int, repeats: int) -> None:
    from zoo.options import PretrainConfig
    from zoo.pretraining import pretrain

    stack = "-".join(str(n) for n in [X.shape[1], *layers])
    for method in ("autoencoder", "rbm"):
        pretrain(X, layers, method, config=PretrainConfig(epochs=1, progress=False))  # warm-up: first calls are slow
        best: dict[bool, tuple[float, float, object]] = {}
        for _ in range(repeats):
            for cache in (True, False):
                cpu, wall = time.process_time(), time.perf_counter()
                result = pretrain(X, layers, method,
                                  config=PretrainConfig(epochs=epochs, seed=0, cache=cache, progress=False))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                if cache not in best or cpu < best[cache][0]:
                    best[cache] = (cpu, wall, result)
        (fast, fast_wall, cached), (slow, slow_wall, recomputed) = best[True], best[False]
        drift = max(abs(a - b) for la, lb in zip(cached.losses, recomputed.losses) for a, b in zip(la, lb))
        print(f"{stack:<17} {method:<12} {fast:12.2f} {slow:16.2f} {slow / fast:5.2f}x   "
              f"{fast_wall:.1f} / {slow_wall:.1f}   (max loss difference {drift:.1e})")


if __name__ == "__main__":
    main()
