"""Benchmark: zoo.transport.download vs curl on a 200 MB file from a loopback server, and resume at 50 %.

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
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.transport import Expected, RetryPolicy, download  # noqa: E402


class FileServer:
    """Serves one file at /<name> with Range support.

    GET /cut?at=N makes the next response drop its connection at byte N; GET /sent returns
    (and resets) the count of body bytes sent.
    """

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

            def _text(self, text: str) -> None:
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/cut?at="):
                    server.cut_at = int(self.path.split("=", 1)[1])
                    return self._text("ok")
                if self.path == "/sent":
                    sent, server.sent = server.sent, 0
                    return self._text(str(sent))
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
        self.port = self.httpd.server_address[1]


def serve(path: str) -> None:
    """Run the file server in this process (the bench starts it as a subprocess)."""
    server = FileServer(Path(path))
    print(server.port, flush=True)
    server.httpd.serve_forever()


class ServerProcess:
    """The file server in its own process, so it shares no GIL with the client measured."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/{path.name}"

    def get(self, path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(self.base + path) as resp:
            return resp.read().decode()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
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
        server = ServerProcess(src)
        try:
            zoo_times, curl_times, verified_times = [], [], []
            zoo_cpu, curl_cpu = [], []
            sha256sum = shutil.which("sha256sum")
            for i in range(args.repeat):
                out = tmp / f"curl-{i}.bin"
                t, cpu = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
                subprocess.run(["curl", "-sS", "-o", str(out), server.url], check=True)
                curl_times.append(time.perf_counter() - t)
                curl_cpu.append(_cpu(resource.RUSAGE_CHILDREN) - cpu)
                if sha256sum:  # what a careful user does by hand: download, then check
                    subprocess.run([sha256sum, str(out)], check=True, capture_output=True)
                    verified_times.append(time.perf_counter() - t)
                out.unlink()
                dest = tmp / f"zoo-{i}.bin"
                t, cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
                result = download([server.url], dest, expected=Expected(checksum=f"sha256:{digest}", size=size))
                zoo_times.append(time.perf_counter() - t)
                zoo_cpu.append(_cpu(resource.RUSAGE_SELF) - cpu)
                assert result.sha256 == digest
                dest.unlink()
            best_zoo, best_curl = min(zoo_times), min(curl_times)
            mbps = lambda s: size / s / 1e6  # noqa: E731
            print(f"file: {args.mb} MB from {server.url} (best of {args.repeat})")
            print(f"curl -o               : {best_curl:6.3f} s  {mbps(best_curl):7.1f} MB/s")
            print(f"zoo download         : {best_zoo:6.3f} s  {mbps(best_zoo):7.1f} MB/s  (sha256 in the same pass)")
            print(f"throughput ratio zoo/curl: {best_curl / best_zoo:.3f}  (goal >= 0.9)")
            print(f"CPU seconds (user+sys): curl {min(curl_cpu):.3f}, zoo {min(zoo_cpu):.3f} "
                  "(the difference is mostly sha256, which curl does not compute)")
            if verified_times:
                best_v = min(verified_times)
                print(f"curl -o; sha256sum    : {best_v:6.3f} s  {mbps(best_v):7.1f} MB/s  "
                      f"(ratio zoo/that: {best_v / best_zoo:.3f})")
            print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

            server.get("/sent")
            server.get(f"/cut?at={size // 2}")
            dest = tmp / "resumed.bin"
            result = download([server.url], dest, expected=Expected(checksum=f"sha256:{digest}", size=size),
                              retry=RetryPolicy(backoff=0.05))
            assert result.sha256 == digest
            sent = int(server.get("/sent"))
            print(
                f"resume after a drop at 50 %: server sent {sent} bytes for a {size}-byte file; "
                f"ratio {sent / size:.4f}  (goal <= 1.05); client counted {result.bytes_transferred}"
            )
        finally:
            server.close()


if __name__ == "__main__":
    main()
