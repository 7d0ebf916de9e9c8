"""The seed's claim: a head trained on cached frozen-layer outputs vs recomputing the frozen layers every epoch.

Both runs train the same head, with the same seed and batches, for E epochs on the same frozen base
(a small CNN exported to ONNX, registered in a throw-away catalog, cut by `zoo.load_extractor` and
converted to torch by `Extractor.to_torch()`). Everything runs on one thread so the two runs use the
same engine at the same speed. The ideal speedup of caching is E(b+h)/(b+Eh), where b is one pass of
the training set through the frozen base and h one epoch of head training on cached features.

    .venv/bin/python bench/bench_transfer.py [--rows 1500] [--epochs 20]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class TorchExtractor:
    """The feature-cache protocol over the torch base, so the cached run's one pass is the same b."""

    def __init__(self, module, fingerprint: str) -> None:
        self.module, self.fingerprint = module, fingerprint

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def base_network():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from zoo.options import TrainingConfig
    from zoo.extract import load_extractor
    from zoo.features import cache_features
    from zoo.transfer import fit_head, make_head, save_model

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    os.environ["ZOO_CACHE"] = str(work / "cache")
    catalog = str(work / "catalog.db")
    save_model(base_network(), "bench.cnn", input_shape=[3, 32, 32], catalog=catalog, layout="NCHW")
    extractor = load_extractor("bench.cnn", layer=-2, catalog=catalog)  # drop the output layer
    base = extractor.to_torch()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 5, args.rows)
    width = int(np.prod(extractor.output_shape[1:]))
    common = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, val_fraction=0.0, patience=None, seed=0,
                            threads=1, progress=False)

    # b: one pass of the training set through the frozen base, in training-size batches.
    adapter = TorchExtractor(base, hashlib.sha256(f"{extractor.fingerprint}|torch".encode()).hexdigest())
    passes = []
    for _ in range(3):  # the median of three passes: the machine is shared, one pass is noisy
        start = time.perf_counter()
        for i in range(0, len(x), args.batch_size):
            adapter(x[i : i + args.batch_size])
        passes.append(time.perf_counter() - start)
    b = sorted(passes)[1]

    # Cached: one pass into the feature cache (same batch size), then E epochs on the cached rows.
    start = time.perf_counter()
    features = cache_features(adapter, x, chunk_size=args.batch_size, progress=False)
    cache_seconds = time.perf_counter() - start
    fit_cached = fit_head(features, y, common, head=make_head(width, 5, seed=0))
    cached = cache_seconds + fit_cached.seconds
    h = fit_cached.seconds / args.epochs

    # Recomputed: every batch of every epoch goes through the frozen base again.
    start = time.perf_counter()
    fit_base = fit_head(x, y, common, base=base, head=make_head(width, 5, seed=0))
    recomputed = time.perf_counter() - start

    same = all(torch.allclose(p, q, atol=1e-4) for p, q in zip(fit_cached.head.parameters(), fit_base.head.parameters()))
    e = args.epochs
    ideal = e * (b + h) / (b + e * h)
    measured = recomputed / cached
    print(f"rows {args.rows}, batch {args.batch_size}, epochs E={e}, one thread; base {extractor.layer!r} of a 3-conv CNN")
    print(f"b (one pass through the frozen base)     {b:8.3f} s")
    print(f"h (one head epoch on cached features)    {h:8.3f} s")
    print(f"recompute the base every epoch           {recomputed:8.3f} s"
          f"   (base inside the loop: {recomputed / e - h:.3f} s per epoch vs b)")
    print(f"cache once ({cache_seconds:.3f} s) + {e} head epochs   {cached:8.3f} s")
    print(f"measured speedup                         {measured:8.2f}x")
    print(f"ideal speedup E(b+h)/(b+Eh)              {ideal:8.2f}x")
    print(f"measured / ideal                         {measured / ideal:8.3f}   (goal >= 0.9)")
    print(f"heads equal (same seed, same batches)    {same}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
