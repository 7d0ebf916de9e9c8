"""`zoo scan` and format detection figures, each against a baseline measured in the same run.

- detect_format on a large caffemodel vs reading the whole file (detection walks the protobuf's
  top-level fields and seeks past the weights, so it should not grow with the file);
- `zoo.scan` of a folder (first scan and rescan) vs hashing every file with hashlib alone
  (a scan must hash to notice moved and changed files, so hashing is its floor).

Run: .venv/bin/python bench/bench_scan.py [--files 300] [--big-mb 128]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _timing import best  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="small ONNX files in the folder")
    parser.add_argument("--big-mb", type=int, default=128, help="size of the large caffemodel")
    args = parser.parse_args()

    from helpers.formats import LENET_PROTOTXT, onnx_file, write_caffemodel

    with tempfile.TemporaryDirectory(prefix="zoo-bench-scan-") as tmp:
        tmp = Path(tmp)
        os.environ["ZOO_CATALOG"] = str(tmp / "catalog.db")
        folder = tmp / "models"
        (folder / "caffe").mkdir(parents=True)
        # a large caffemodel: 8 layers whose blobs add up to --big-mb
        floats = args.big_mb * (1 << 20) // 4 // 8
        big = write_caffemodel(folder / "caffe" / "big.caffemodel",
                               [(f"fc{i}", "InnerProduct", [[floats]]) for i in range(8)])
        (folder / "caffe" / "big.prototxt").write_text(
            LENET_PROTOTXT.read_text())
        for i in range(args.files):
            sub = folder / f"m{i // 50}"  # 50 models per sub-folder
            sub.mkdir(exist_ok=True)
            onnx_file(sub / f"model{i}.onnx", scale=float(i))

        import zoo
        from zoo.formats import detect_format

        size_mb = big.stat().st_size / (1 << 20)
        t_detect = best(lambda: detect_format(big))
        t_read = best(lambda: big.read_bytes(), repeat=3)
        print(f"detect_format on a {size_mb:.0f} MiB caffemodel: {t_detect * 1000:.2f} ms; "
              f"reading the file: {t_read * 1000:.1f} ms; ratio detect/read = {t_detect / t_read:.4f}")

        files = [p for p in folder.rglob("*") if p.is_file()]

        def hash_all() -> None:
            for p in files:
                hashlib.sha256(p.read_bytes()).hexdigest()

        t_hash = best(hash_all, repeat=3)
        zoo.search("warm-up")  # create the catalog (built-in zoos) outside the timings
        start = time.perf_counter()
        first = zoo.scan(folder)
        t_first = time.perf_counter() - start
        assert len(first.added) == args.files + 1, first
        rescans = []
        for _ in range(3):
            start = time.perf_counter()
            again = zoo.scan(folder)
            rescans.append(time.perf_counter() - start)
            assert not again.added and len(again.unchanged) == args.files + 1
        t_rescan = statistics.median(rescans)
        total_mb = sum(p.stat().st_size for p in files) / (1 << 20)
        print(f"folder: {len(files)} files, {total_mb:.0f} MiB, {args.files + 1} models")
        print(f"hashlib sha256 of every file (baseline): {t_hash:.3f} s")
        print(f"zoo.scan first: {t_first:.3f} s  ratio {t_first / t_hash:.2f}x baseline")
        print(f"zoo.scan rescan (median of 3): {t_rescan:.3f} s  ratio {t_rescan / t_hash:.2f}x "
              "baseline")


if __name__ == "__main__":
    main()
