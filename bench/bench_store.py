"""Benchmark: disk used by the content-addressed store after the same file is fetched under 3 names x 2 revisions.

Run: .venv/bin/python bench/bench_store.py [--mb 100]

A loopback index (tests/helpers/http_server.py's FaultServer) lists three models whose model file is
the same --mb MB file, at revision r1; then the index moves them to r2 (the same model file and a
new small labels file: the files changed, so each gets a new revision and keeps r1). Each name is
fetched at r2 and at r1 (``NAME@r1``). Figures printed:
- disk used under the cache (allocated blocks, each inode counted once, as `du` counts) / the file's
  size; goal <= 1.01;
- the baseline in the same run: what one copy per name and revision would take (the sum of the
  files' sizes), and what `zoo cache list` says the store saves.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def disk_used(folder: Path) -> int:
    """Bytes allocated under `folder`, each inode once (hard links share), symlinks as their own size."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    from helpers.http_server import FaultServer

    body = os.urandom(args.mb << 20)
    digest = hashlib.sha256(body).hexdigest()
    labels = b"cat\ndog\n"
    names = ("net.a", "net.b", "net.c")
    with tempfile.TemporaryDirectory() as tmp, FaultServer() as server:
        os.environ.update(ZOO_CATALOG=str(Path(tmp) / "catalog.db"), ZOO_CACHE=str(Path(tmp) / "cache"))
        import zoo
        from zoo.cache_manager import scan, usage

        server.add("/files/model.onnx", body, etag='"model"')
        server.add("/files/labels.txt", labels)

        def index(revision: str, with_labels: bool) -> bytes:
            files = [{"role": "model", "filename": "model.onnx", "url": server.url("/files/model.onnx"),
                      "sha256": digest}]
            if with_labels:
                files.append({"role": "labels", "filename": "labels.txt", "url": server.url("/files/labels.txt"),
                              "sha256": hashlib.sha256(labels).hexdigest()})
            return json.dumps({"format": "zoo-index/1", "name": "acme", "models": [
                {"name": name, "framework": "onnx", "revision": revision, "files": files} for name in names]}).encode()

        server.add("/zoo.json", index("r1", False))
        zoo.add_source("acme", server.url("/zoo.json"))
        start = time.perf_counter()
        for name in names:
            zoo.fetch(name, quiet=True)
        server.routes["/zoo.json"].set_body(index("r2", True))
        zoo.sync_sources("acme")
        fetched = []
        for name in names:
            fetched += zoo.fetch(name, quiet=True)
            fetched += zoo.fetch(f"{name}@r1", quiet=True)
        seconds = time.perf_counter() - start
        assert sum(1 for a in fetched if a.sha256 == digest) == 6, "each name and revision has the file"
        sent = server.routes["/files/model.onnx"].bytes_sent
        used = disk_used(Path(tmp) / "cache")
        logical = sum(a.size or 0 for a in fetched)
        saved = usage(scan()).saved
        print(f"{len(names)} names x 2 revisions of one {args.mb} MB file ({seconds:.1f} s, {sent / len(body):.2f}x its "
              f"size downloaded): cache uses {used / 1e6:.1f} MB on disk = {used / len(body):.3f}x the file "
              f"(goal <= 1.01); one copy each would be {logical / 1e6:.1f} MB ({logical / len(body):.1f}x)"
              + (f"; `zoo cache list` says the store saves {saved / 1e6:.1f} MB" if isinstance(saved, int) else ""))


if __name__ == "__main__":
    main()
