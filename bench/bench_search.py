"""Catalog search figures: latency on 100,000 entries, and `zoo search` start-up vs importing sqlalchemy.

Run: .venv/bin/python bench/bench_search.py [--entries 100000] [--postgresql [URL]]
With --postgresql, the same entries and queries also run on PostgreSQL (a throw-away server like
the tests', or the empty database at URL) and the p50/p99 ratios PostgreSQL/SQLite are printed,
then the wall time of a whole `zoo search` process on each (what a user waits for per command).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ["resnet", "vgg", "mobilenet", "inception", "squeezenet", "alexnet", "densenet",
         "efficientnet", "xception", "googlenet", "shufflenet", "unet", "yolo", "bert", "lenet",
         "convnext", "regnet", "vit", "deit", "swin", "mnasnet", "ghostnet", "hrnet", "dla",
         "dpn", "nasnet", "pnasnet", "senet", "sknet", "res2net", "resnest", "cspnet", "darknet",
         "fbnet", "hardcorenas", "levit", "mixnet", "mobilevit", "rexnet", "tresnet"]
TASKS = ["image-classification", "object-detection", "segmentation", "feature-extraction"]
DATASETS = ["ImageNet", "COCO", "Places365", "CIFAR-10", "MNIST", "Flickr Style"]
FRAMEWORKS = ["caffe", "tensorflow", "keras", "tflite", "onnx", "pytorch"]
# Descriptions draw from a 400-word vocabulary with Zipf frequencies, like real text; a uniform
# draw from a dozen words would make every word match half the catalog.
WORDS = [f"w{i}" for i in range(380)] + (
    "deep residual convolutional network trained fine tuned pruned quantized small large "
    "fast accurate mobile server edge teacher student distilled").split()


def fill(url: str, entries: int) -> None:
    from zoo.catalog import Catalog, search_keywords
    from zoo.schema import artifacts, models

    Catalog(url, builtins=False)
    from sqlalchemy import create_engine, insert

    rng = random.Random(0)
    words = WORDS[:]  # shuffled copy: a second fill (the PostgreSQL run) gets the same entries
    rng.shuffle(words)
    word_weights = [1 / (rank + 1) for rank in range(len(words))]
    arch_weights = [1 / (rank + 1) ** 0.5 for rank in range(len(ARCHS))]
    rows = []
    for i in range(entries):
        arch = rng.choices(ARCHS, arch_weights)[0]
        depth = rng.choice([18, 34, 50, 101, 152, 16, 19, 1, 2, 3])
        name = f"{arch}{depth}_{i}.{rng.choice(FRAMEWORKS)}"
        tags = rng.sample(["imagenet", "notop", "quantized", "pruned", "v2", "legacy"], 2)
        rows.append(dict(
            id=i + 1, name=name, framework=rng.choice(FRAMEWORKS), task=rng.choice(TASKS),
            dataset=rng.choice(DATASETS), architecture=f"{arch}-{depth}",
            description=" ".join(rng.choices(words, word_weights, k=12)), tags=tags, source=f"zoo{i % 7}",
            input_spec={}, metrics={}, meta={}, removed_upstream=False,
            keywords=search_keywords(name, tags), created_at=0.0, updated_at=0.0,
        ))
    engine = create_engine(url)
    with engine.begin() as connection:
        for start in range(0, entries, 5000):
            connection.execute(insert(models), rows[start:start + 5000])
        connection.execute(insert(artifacts), [
            dict(model_id=r["id"], role="weights", filename="w.bin", urls=["http://x/w.bin"],
                 meta={}, path=("/cache/w.bin" if r["id"] % 10 == 0 else None))
            for r in rows])
        if engine.dialect.name == "postgresql":  # explicit ids: move the sequence past them
            connection.exec_driver_sql("SELECT setval('models_id_seq', (SELECT max(id) FROM models))")
    engine.dispose()
    Catalog(url, builtins=False).rebuild_search_index()


def latency(url: str) -> list[float]:
    from zoo.catalog import Catalog

    cat = Catalog(url, builtins=False)
    queries = [
        ("resnet", {}), ("mobilenet imagenet", {}), ("vgg 16", {}), ("inception", {"framework": "caffe"}),
        ("fast mobile", {"task": "object-detection"}), (None, {"framework": "tflite"}),
        ("densenet", {"tag": "notop"}), ("squeezenet", {"local": True}), ("yolo", {"dataset": "COCO"}),
        ("bert", {"source": "zoo3"}), ("xception71_123.keras", {}), ("nothingmatches", {}),
    ]
    for query, filters in queries:  # warm the page cache and SQLAlchemy's statement cache
        cat.search(query, **filters)
    for query, filters in queries:
        hits = len(cat.search(query, limit=None, **filters))
        print(f"  query {query!r} {filters}: {hits} matches")
    times = []
    for _ in range(25):
        for query, filters in queries:
            start = time.perf_counter()
            cat.search(query, limit=20, **filters)
            times.append(time.perf_counter() - start)
    return times


def wall(cmd: list[str], repeat: int, env: dict) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(url: str, entries: int, label: str) -> tuple[float, float]:
    """Fill a catalog with `entries` and print its search latency; (p50, p99) in ms."""
    start = time.perf_counter()
    fill(url, entries)
    print(f"{label}: filled {entries} entries in {time.perf_counter() - start:.1f} s")
    times = sorted(latency(url))
    p50 = times[len(times) // 2] * 1000
    p99 = times[int(len(times) * 0.99)] * 1000
    print(f"{label}: search latency on {entries} entries: p50 {p50:.2f} ms (goal <= 10), "
          f"p99 {p99:.2f} ms (goal <= 50), {len(times)} queries")
    return p50, p99


def command_ms(catalog: str, repeat: int = 15) -> float:
    """Median wall time of a whole `zoo search resnet` process on `catalog`, in ms."""
    env = dict(os.environ, ZOO_CATALOG=catalog)
    zoo = [str(Path(sys.executable).with_name("zoo")), "search", "resnet"]
    subprocess.run(zoo, check=True, stdout=subprocess.DEVNULL, env=env)
    return wall(zoo, repeat, env) * 1000


def postgresql_latency(url: str | None, entries: int, sqlite: tuple[float, float], sqlite_url: str) -> None:
    server = None
    if url is None:  # a throw-away server, as the tests start one
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from helpers.postgres_server import start_server

        server = start_server()
        url = server.url(server.create_database())
    try:
        p50, p99 = measure(url, entries, "postgresql")
        print(f"postgresql/sqlite search latency (same entries and queries, one run): "
              f"p50 {p50 / sqlite[0]:.2f}x (goal <= 1.2), p99 {p99 / sqlite[1]:.2f}x (goal <= 1.5) "
              "(below 1: PostgreSQL faster)")
        # A whole command, start-up included, on the same two catalogs, interleaved.
        lite, pg = [], []
        for _ in range(3):
            lite.append(command_ms(sqlite_url.removeprefix("sqlite:///"), 5))
            pg.append(command_ms(url, 5))
        lite_ms, pg_ms = statistics.median(lite), statistics.median(pg)
        print(f"`zoo search resnet` on {entries} entries: sqlite {lite_ms:.0f} ms, postgresql {pg_ms:.0f} ms, "
              f"difference {pg_ms - lite_ms:.0f} ms (goal <= 150)")
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--postgresql", nargs="?", const="", default=None, metavar="URL",
                        help="also measure on PostgreSQL (an empty database; none: a throw-away server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'big.db'}"
        sqlite = measure(url, args.entries, "sqlite")
        if args.postgresql is not None:
            postgresql_latency(args.postgresql or None, args.entries, sqlite, url)

        # Start-up: `zoo search resnet` on a catalog of the built-ins (made by `zoo init`) vs bare
        # `import sqlalchemy`; and before any catalog exists (read-only commands never make one, so
        # the built-ins are loaded into memory for each search until a write makes the catalog).
        zoo = str(Path(sys.executable).with_name("zoo"))
        project = Path(tmp) / "project"
        project.mkdir()
        env = dict(os.environ, ZOO_CATALOG=str(project / "catalog.db"))
        subprocess.run([zoo, "init", str(project)], check=True, stdout=subprocess.DEVNULL, env=env)
        base = wall([sys.executable, "-c", "import sqlalchemy"], 15, env)
        ours = wall([zoo, "search", "resnet"], 15, env)
        print(f"`zoo search resnet` warm: {ours * 1000:.0f} ms; `python -c 'import sqlalchemy'`: "
              f"{base * 1000:.0f} ms; difference {1000 * (ours - base):.0f} ms (goal <= 100), "
              f"ratio {ours / base:.2f}")
        none = wall([zoo, "search", "resnet"], 5, dict(os.environ, ZOO_CATALOG=str(Path(tmp) / "none.db")))
        print(f"`zoo search resnet` with no catalog yet (built-ins loaded in memory): {none * 1000:.0f} ms")
        leaked = subprocess.run(
            [sys.executable, "-c",
             "import sys; from zoo.cli import main\n"
             "try:\n    main(['search', 'resnet'])\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('torch','tensorflow','onnx','onnxruntime') if m in sys.modules))"],
            env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(f"heavy modules imported by `zoo search`: {leaked}")


if __name__ == "__main__":
    main()
