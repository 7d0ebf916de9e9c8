"""Benchmark: zoo.fetch.download vs curl on a 200 MB file from a loopback server, and resume at 50 %.

Run: .venv/bin/python bench/bench_fetch.py [--mb 200] [--repeat 3]

The server is a minimal HTTP/1.1 file server with Range support that copies with
os.sendfile, so it is not the bottleneck. Figures printed:
- throughput of download() (streams, writes, hashes sha256 in the same pass) and of
  `curl -o` from the same server in the same run, best of --repeat, and their ratio (goal >= 0.9);
- a download whose connection is cut at 50 %: total bytes the server sent / file size
  (goal <= 1.05).
A second baseline, `curl -o` followed by `sha256sum`, is what a verified download costs by hand.
The ratio depends on free CPU: download() hashes in a second thread, which only overlaps the
network copy when a core is free.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.fetch import download  # noqa: E402


class FileServer:
    """Serves one file at /<name> with Range support; `cut_at` drops the first response at that byte."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.sent = 0
        self.cut_at: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                start, end, status = 0, server.size - 1, 200
                m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else end
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("ETag", '"bench-1"')
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{server.size}")
                self.end_headers()
                self.wfile.flush()
                count = end - start + 1
                cut = server.cut_at
                if cut is not None and cut > start:
                    count = min(count, cut - start)
                    server.cut_at = None
                else:
                    cut = None
                with open(server.path, "rb") as f:
                    offset, left = start, count
                    try:
                        while left > 0:
                            n = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(left, 1 << 24))
                            if n == 0:
                                break
                            offset += n
                            left -= n
                            server.sent += n
                    except (BrokenPipeError, ConnectionResetError):
                        return
                if cut is not None:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is not installed; it is the baseline of this benchmark")
    size = args.mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        tmp = Path(tmp)
        src = tmp / "served" / "weights.bin"
        src.parent.mkdir()
        with open(src, "wb") as f:
            for _ in range(size // 1_000_000):
                f.write(os.urandom(1_000_000))
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        server = FileServer(src)
        try:
            zoo_times, curl_times, verified_times = [], [], []
            sha256sum = shutil.which("sha256sum")
            for i in range(args.repeat):
                out = tmp / f"curl-{i}.bin"
                t = time.perf_counter()
                subprocess.run(["curl", "-sS", "-o", str(out), server.url], check=True)
                curl_times.append(time.perf_counter() - t)
                if sha256sum:  # what a careful user does by hand: download, then check
                    subprocess.run([sha256sum, str(out)], check=True, capture_output=True)
                    verified_times.append(time.perf_counter() - t)
                out.unlink()
                dest = tmp / f"zoo-{i}.bin"
                t = time.perf_counter()
                result = download([server.url], dest, checksum=f"sha256:{digest}", size=size)
                zoo_times.append(time.perf_counter() - t)
                assert result.sha256 == digest
                dest.unlink()
            best_zoo, best_curl = min(zoo_times), min(curl_times)
            mbps = lambda s: size / s / 1e6  # noqa: E731
            print(f"file: {args.mb} MB from {server.url} (best of {args.repeat})")
            print(f"curl -o               : {best_curl:6.3f} s  {mbps(best_curl):7.1f} MB/s")
            print(f"zoo.fetch.download    : {best_zoo:6.3f} s  {mbps(best_zoo):7.1f} MB/s  (sha256 in the same pass)")
            print(f"throughput ratio zoo/curl: {best_curl / best_zoo:.3f}  (goal >= 0.9)")
            if verified_times:
                best_v = min(verified_times)
                print(f"curl -o; sha256sum    : {best_v:6.3f} s  {mbps(best_v):7.1f} MB/s  "
                      f"(ratio zoo/that: {best_v / best_zoo:.3f})")
            print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

            server.sent = 0
            server.cut_at = size // 2
            dest = tmp / "resumed.bin"
            result = download([server.url], dest, checksum=f"sha256:{digest}", size=size, backoff=0.05)
            assert result.sha256 == digest
            print(
                f"resume after a drop at 50 %: server sent {server.sent} bytes for a {size}-byte file; "
                f"ratio {server.sent / size:.4f}  (goal <= 1.05); client counted {result.bytes_transferred}"
            )
        finally:
            server.close()


if __name__ == "__main__":
    main()
