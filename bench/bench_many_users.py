"""Many users on one PostgreSQL catalog: 16 processes searching and 4 adding at once for 60 s.

Run: .venv/bin/python bench/bench_many_users.py [--searchers 16] [--adders 4] [--seconds 60]
     [--entries 10000] [--postgresql URL]

Each user is its own process with its own `open_catalog` (its own connection pool), as a team's
`zoo` commands and notebooks are. Searchers run the queries of bench_search.py in a loop; adders
add models one at a time. Afterwards every searcher lists the catalog and searches for the last
models each adder added: every add must be visible to every reader. Prints errors (the goal is
none), search latency p50/p99 under the load, and the adds per second; the baseline is the same
queries' latency from one process on the idle catalog, measured first in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERIES = [
    ("resnet", {}), ("mobilenet imagenet", {}), ("vgg 16", {}), ("inception", {"framework": "caffe"}),
    ("fast mobile", {"task": "object-detection"}), (None, {"framework": "tflite"}),
    ("densenet", {"tag": "notop"}), ("yolo", {"dataset": "COCO"}), ("bert", {"source": "zoo3"}),
    ("user", {}), ("nothingmatches", {}),
]
# Of each adder's models, the last ones are also looked up by search (the tsvector is current).
SEARCHED_ADDS = 5


@dataclass
class Load:
    """What one run saw."""

    seconds: float
    searches: list[float] = field(default_factory=list)  # latencies, s
    adds: list[str] = field(default_factory=list)  # names added
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "reader k: name" not visible after the run

    def percentile(self, q: float) -> float:
        times = sorted(self.searches)
        return times[min(len(times) - 1, int(len(times) * q))] if times else float("nan")


def _searcher(url: str, seed: int, start, seconds: float, names_ready, names_path: str, out) -> None:
    try:
        from zoo.catalog import open_catalog

        cat = open_catalog(url)
        rng = random.Random(seed)
        cat.search("resnet")  # the pool's connection and SQLAlchemy's statement cache
        start.wait()  # everyone is up: the clock starts
        stop_at = time.time() + seconds
        times = []
        while time.time() < stop_at:
            query, filters = rng.choice(QUERIES)
            began = time.perf_counter()
            cat.search(query, limit=20, **filters)
            times.append(time.perf_counter() - began)
        names_ready.wait()
        added = Path(names_path).read_text().split()
        present = set(cat.names())
        missing = [name for name in added if name not in present]
        for name in added[-SEARCHED_ADDS:]:
            found = [m.name for m in cat.search(name, limit=5)]
            if name not in found:
                missing.append(f"{name} (search)")
        out.put(("search", seed, times, [], missing))
    except Exception:  # reported, counted as an error of the run
        start.abort()  # the others stop waiting for this one
        out.put(("search", seed, [], [traceback.format_exc(limit=3)], []))


def _adder(url: str, user: int, start, seconds: float, out) -> None:
    names, errors = [], []
    try:
        from zoo.catalog import open_catalog
        from zoo.records import Model

        cat = open_catalog(url)
        start.wait()
        stop_at = time.time() + seconds
        i = 0
        while time.time() < stop_at:
            name = f"user{user}-model{i}.onnx"
            cat.add_model(Model(name=name, framework="onnx", task="image-classification",
                                description=f"added by user {user} under load", tags=["team"]))
            names.append(name)
            i += 1
    except Exception:
        start.abort()
        errors.append(traceback.format_exc(limit=3))
    out.put(("add", user, [], errors, names))


def run(url: str, searchers: int = 16, adders: int = 4, seconds: float = 60.0) -> Load:
    """Start the users as processes, let them work for `seconds`, and collect what they saw."""
    import tempfile

    context = multiprocessing.get_context("spawn")  # fresh processes, as separate users' are
    # Every process waits at the barrier once it has opened its catalog: the clock starts with all up.
    start = context.Barrier(searchers + adders + 1)
    names_ready = context.Event()
    out = context.Queue()
    load = Load(seconds=seconds)
    with tempfile.TemporaryDirectory() as tmp:
        names_path = str(Path(tmp) / "added.txt")
        processes = [context.Process(target=_searcher, args=(url, k, start, seconds, names_ready, names_path, out))
                     for k in range(searchers)]
        processes += [context.Process(target=_adder, args=(url, k, start, seconds, out)) for k in range(adders)]
        for process in processes:
            process.start()
        # Everyone up (or someone dead before getting there: the run stops with what it said).
        while start.n_waiting < searchers + adders and all(p.exitcode is None for p in processes):
            time.sleep(0.05)
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(timeout=30)
        for kind, who, times, errors, found in _results(out, processes, adders, seconds):
            load.errors += errors
            load.adds += found
        Path(names_path).write_text("\n".join(load.adds))
        names_ready.set()
        for kind, who, times, errors, missing in _results(out, processes, searchers, seconds):
            load.searches += times
            load.errors += errors
            load.missing += [f"reader {who}: {name}" for name in missing]
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return load


def _results(out, processes, count: int, seconds: float):
    """`count` reports from the users, or an error for each missing when they all ended without one."""
    import queue

    deadline = time.monotonic() + seconds + 600
    got = 0
    while got < count:
        try:
            yield out.get(timeout=1)
            got += 1
        except queue.Empty:
            if all(p.exitcode is not None for p in processes) or time.monotonic() > deadline:
                for _ in range(count - got):
                    yield "lost", -1, [], ["a user process ended without a report"], []
                return


def baseline(url: str, repeat: int = 20) -> list[float]:
    """The same queries from one process on the catalog with nobody else on it."""
    from zoo.catalog import open_catalog

    cat = open_catalog(url)
    for query, filters in QUERIES:
        cat.search(query, **filters)
    times = []
    for _ in range(repeat):
        for query, filters in QUERIES:
            began = time.perf_counter()
            cat.search(query, limit=20, **filters)
            times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--searchers", type=int, default=16)
    parser.add_argument("--adders", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--entries", type=int, default=10_000, help="models in the catalog before the run")
    parser.add_argument("--postgresql", metavar="URL", help="an empty database (default: a throw-away server)")
    args = parser.parse_args()
    server = None
    url = args.postgresql
    if url is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from helpers.postgres_server import start_server

        server = start_server()
        url = server.url(server.create_database())
    try:
        sys.path.insert(0, str(HERE))
        from bench_search import fill

        fill(url, args.entries)
        idle = sorted(baseline(url))
        print(f"one user alone on {args.entries} entries: search p50 {idle[len(idle) // 2] * 1000:.1f} ms, "
              f"p99 {idle[int(len(idle) * 0.99)] * 1000:.1f} ms")
        load = run(url, args.searchers, args.adders, args.seconds)
        print(f"{args.searchers} searching + {args.adders} adding for {args.seconds:.0f} s: "
              f"{len(load.searches)} searches, {len(load.adds)} adds ({len(load.adds) / args.seconds:.1f}/s), "
              f"{len(load.errors)} errors (goal 0), {len(load.missing)} adds not visible afterwards (goal 0)")
        print(f"search latency under load: p50 {load.percentile(0.5) * 1000:.1f} ms, "
              f"p99 {load.percentile(0.99) * 1000:.1f} ms; p99 against one user alone "
              f"{load.percentile(0.99) / idle[int(len(idle) * 0.99)]:.1f}x (2 cores shared by "
              f"{args.searchers + args.adders} processes and the server)")
        for error in load.errors[:3]:
            print(error)
        for missing in load.missing[:5]:
            print("not visible:", missing)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
