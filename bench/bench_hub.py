"""Benchmark: the Hugging Face Hub as a source, against the loopback Hub of the tests (tests/helpers/hub_server.py).

Run: .venv/bin/python bench/bench_hub.py [--mb 200] [--repeat 5] [--startups 11]

The loopback Hub (API, resolve with its 302 to a second host, the CDN) runs in a child process, so
its threads do not share the measuring process's interpreter. Figures printed:
- start-up: `zoo search resnet --hub` (a fresh process: the CLI; on Linux a forked child imports
  huggingface_hub's client and sends one search request per library while the process imports
  SQLAlchemy and opens the catalog; the results stored in the catalog) vs `python -c "import
  huggingface_hub; huggingface_hub.HfApi"` in the same run, medians of interleaved runs; goal:
  <= +150 ms. The split: how much longer SQLAlchemy's import (core + ORM) takes than
  huggingface_hub's (each timed inside its own process; zoo runs them side by side), and the
  rest, zoo's own work. zoo's modules run from their bytecode cache, as an installed package's
  do: the warm-up run writes it even where PYTHONDONTWRITEBYTECODE is set;
- fetch: a --mb file through the Hub path (`zoo add hf://...`, then `zoo.fetch`: huggingface_hub's
  file metadata, the redirect, the CDN) vs the plain HTTP path (an index entry whose URL is the
  same CDN file), both verified against the sha256 in the same pass and re-downloaded each time
  (force), best of --repeat, interleaved; goal: throughput ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _onnx_of(mb: int) -> bytes:
    """A real ONNX model of about `mb` MB (its weight random bytes), so zoo recognises it by content."""
    from onnx import TensorProto, helper

    count = (mb << 20) // 4
    weight = helper.make_tensor("W", TensorProto.FLOAT, [count], os.urandom(count * 4), raw=True)
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"], name="add")], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [count])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def serve(mb: int, latency: float = 0.0) -> None:
    """The child: a loopback Hub with a few resnet repos and one of `mb` MB; prints its URLs, serves until stdin closes."""
    from helpers.http_server import FaultServer
    from helpers.hub_server import HubServer, sha256_hex

    body = _onnx_of(mb)
    with FaultServer() as cdn:
        hub = HubServer(cdn).start()
        hub.latency = latency
        for i, library in enumerate(("onnx", "keras", "tflite", "onnx", "keras")):
            hub.repo(f"org{i}/resnet-{18 + i}", {"model.onnx" if library == "onnx" else "model.h5": b"\0" * 64},
                     library=library, downloads=1000 * (i + 1), card={"license": "mit"})
        hub.repo("acme/big", {"model.onnx": body}, downloads=1)
        path = f"/lfs/{sha256_hex(body)}"
        cdn.routes[path].etag = '"big"'  # a fixed ETag: the server does not hash 200 MB per request
        print(json.dumps({"hub": hub.url, "cdn": cdn.url(path), "sha256": sha256_hex(body), "size": len(body)}),
              flush=True)
        sys.stdin.read()
        hub.stop()


def _import_time(modules: str) -> str:
    """A command printing how long importing `modules` takes inside the process (start-up and exit left out)."""
    return f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"


def startup(env: dict[str, str], runs: int) -> dict[str, float]:
    """Medians, in seconds, of interleaved runs: the two commands' wall times and the two imports' times."""
    zoo = str(Path(sys.executable).with_name("zoo"))
    commands = {"zoo": [zoo, "search", "resnet", "--hub"],
                "import": [sys.executable, "-c", "import huggingface_hub; huggingface_hub.HfApi"],
                "hub import": [sys.executable, "-c", _import_time("huggingface_hub; huggingface_hub.HfApi")],
                "orm import": [sys.executable, "-c", _import_time("sqlalchemy, sqlalchemy.orm")]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    warm = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for cmd in commands.values():  # warm the file cache and zoo's bytecode cache
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=warm)
    for _ in range(runs):
        for key, cmd in commands.items():
            start = time.perf_counter()
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            times[key].append(float(out) if key.endswith(" import") else time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--startups", type=int, default=11)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the loopback Hub waits before each API answer (a far-away Hub's round trip)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.mb, args.latency)
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--mb", str(args.mb), "--latency", str(args.latency)],
                             stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        where = json.loads(child.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, HF_ENDPOINT=where["hub"], ZOO_CATALOG=str(Path(tmp) / "catalog.db"),
                       ZOO_CACHE=str(Path(tmp) / "cache"), HF_HOME=str(Path(tmp) / "hf"))
            for variable in ("HF_TOKEN", "HF_HUB_OFFLINE", "ZOO_OFFLINE"):
                env.pop(variable, None)
            medians = startup(env, args.startups)
            ours, base = medians["zoo"], medians["import"]
            past = max(0.0, medians["orm import"] - medians["hub import"])
            print(f"`zoo search resnet --hub` (loopback Hub): {ours * 1000:.0f} ms; `import huggingface_hub` + HfApi: "
                  f"{base * 1000:.0f} ms; difference {1000 * (ours - base):+.0f} ms (goal <= +150 ms)")
            print(f"  of which SQLAlchemy's import (core + ORM, {medians['orm import'] * 1000:.0f} ms) past "
                  f"huggingface_hub's ({medians['hub import'] * 1000:.0f} ms), which it overlaps: {1000 * past:+.0f} ms; "
                  f"zoo's own work (CLI, catalog opened, the 4 searches' wait, results stored): "
                  f"{1000 * (ours - base - past):+.0f} ms")
            os.environ.update(env)
            fetch_ratio(where, Path(tmp), args.repeat)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def fetch_ratio(where: dict, tmp: Path, repeat: int) -> None:
    import zoo
    from zoo.hubs import add

    index = {"format": "zoo-index/1", "name": "plain", "models": [{
        "name": "big.plain", "framework": "onnx",
        "files": [{"role": "model", "filename": "model.onnx", "url": where["cdn"], "sha256": where["sha256"]}]}]}
    (tmp / "plain.json").write_text(json.dumps(index))
    zoo.add_source("plain", str(tmp / "plain.json"))
    hub = add("hf://acme/big").name
    times: dict[str, list[float]] = {"hub": [], "plain": []}
    for round_ in range(repeat):  # the order alternates: neither path always follows the other's 200 MB write
        for key, name in (("plain", "big.plain"), ("hub", hub))[::1 if round_ % 2 else -1]:
            start = time.perf_counter()
            (fetched,) = zoo.fetch(name, force=True, quiet=True)
            times[key].append(time.perf_counter() - start)
            assert fetched.sha256 == where["sha256"] and os.path.getsize(fetched.path) == where["size"]
    mb = where["size"] / 1e6
    plain, hub_t = min(times["plain"]), min(times["hub"])
    print(f"fetch of {mb:.0f} MB, best of {repeat}: Hub path {mb / hub_t:.0f} MB/s ({hub_t:.2f} s), plain HTTP "
          f"{mb / plain:.0f} MB/s ({plain:.2f} s); throughput ratio {plain / hub_t:.2f} (goal >= 0.9)")
    digest = hashlib.sha256(Path(zoo.open_catalog().get(hub).artifacts[0].path).read_bytes()).hexdigest()
    assert digest == where["sha256"]


if __name__ == "__main__":
    main()
