"""The Ray Data engine: same cache entries as the in-process path, resume by chunk, errors, the CLI.

Ray runs for real: one local instance (2 CPUs, no dashboard) shared by the tests of this module
and shut down after them, so its processes do not linger through later test files; starting it
takes about ten seconds, so the tests that need it are few and marked slow.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.features import FeatureCache, extract_features
from zoo.options import ExtractorOptions, TrainingConfig
from zoo.datasources import as_source

HERE = Path(__file__).resolve().parent
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small residual CNN (3x8x8 -> 4) with random weights, as an .onnx file."""
    import onnx
    from helpers.extract import tiny_resnet

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny_resnet(), path)
    return path


def _image_folder(root: Path, count: int = 45) -> Path:
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(count):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (10 + i % 3, 9, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    return root


def _same(a, b) -> None:
    assert a.key == b.key
    np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes and a.skipped == b.skipped


@pytest.mark.slow
def test_ray_gives_the_entries_of_the_in_process_path(local_ray, tiny, tmp_path):
    import ray.data

    from zoo.extract import load_extractor
    from zoo.ray_engine import RayEngine

    extractor = load_extractor(tiny, "pool")
    x = np.random.default_rng(0).standard_normal((230, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    images = _image_folder(tmp_path / "images")
    parquet = tmp_path / "parquet"
    ray.data.from_numpy(x).repartition(3).write_parquet(str(parquet))  # Ray's own tensor column
    assert len(list(parquet.glob("*.parquet"))) == 3
    engine = RayEngine(actors=2)
    for i, data in enumerate((tmp_path / "x.npy", images, parquet, x)):  # the array and x.npy share a key
        local = extract_features(extractor, data, cache_dir=tmp_path / f"local{i}", chunk_size=20, progress=False)
        remote = extract_features(extractor, data, cache_dir=tmp_path / f"ray{i}", chunk_size=20, progress=False,
                                  engine=engine)
        assert not remote.reused
        _same(local, remote)
    assert remote.skipped == [] and len(local.features) == 230
    images_result = extract_features(extractor, images, cache_dir=tmp_path / "ray1", progress=False)
    assert images_result.reused and [s["path"] for s in images_result.skipped] == [str(images / "dogs" / "broken.png")]

    class WhoRuns:
        """Features = the id of the process that computed them."""

        fingerprint = "who-runs"

        def __call__(self, batch):
            time.sleep(0.05)  # long enough that one actor cannot take every chunk before the other is ready
            return np.full((len(batch), 1), os.getpid(), dtype=np.int64)

    pids = extract_features(WhoRuns(), x, chunk_size=10, progress=False, engine=engine).features
    assert len(set(pids[:, 0].tolist())) == 2 and os.getpid() not in pids


@pytest.mark.slow
def test_ray_resumes_a_partial_entry_and_train_reads_it(local_ray, tiny, tmp_path):
    import zoo
    from zoo.extract import load_extractor

    extractor = load_extractor(tiny, "pool")
    images = _image_folder(tmp_path / "images", count=60)

    class Marked:
        """The same fingerprint as the real extractor, outputs + 1000: shows which chunks were kept."""

        fingerprint = extractor.fingerprint
        input_spec = extractor.input_spec

        def __init__(self):
            self.calls = 0

        def __call__(self, batch):
            if self.calls == 2:
                raise KeyboardInterrupt("interrupted on purpose")
            self.calls += 1
            return extractor(batch) + 1000

    with pytest.raises(KeyboardInterrupt):
        extract_features(Marked(), images, chunk_size=16, progress=False)
    entry = FeatureCache().entries()[0]
    assert not entry.complete and entry.rows == 32
    resumed = extract_features(extractor, images, chunk_size=16, progress=False, engine="ray")
    local = extract_features(extractor, images, cache_dir=tmp_path / "local", chunk_size=16, progress=False)
    features = np.asarray(resumed.features)
    assert (features[:32] > 500).all()  # the two chunks written before the interruption were kept
    np.testing.assert_array_equal(features[32:], np.asarray(local.features)[32:])
    np.testing.assert_allclose(features[:32] - 1000, np.asarray(local.features)[:32], atol=1e-3)
    # `zoo train` (and fit_head, sweep) read the entry the Ray run completed, as it is
    manifest = (resumed.path.parent / "manifest.json").read_text()
    result = zoo.train(str(tiny), images, None, new_name="pets.tiny",
                       training=TrainingConfig(epochs=2, progress=False),
                       extractor=ExtractorOptions(layer="pool"))
    assert result is not None
    assert (resumed.path.parent / "manifest.json").read_text() == manifest
    assert len(FeatureCache().entries()) == 1


@pytest.mark.slow
def test_worker_errors_come_back_as_the_users_error(local_ray, tiny, tmp_path):
    from zoo.extract import load_extractor
    from zoo.ray_engine import RayEngine

    extractor = load_extractor(tiny, "pool")
    wrong = np.zeros((50, 4, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"^input has shape \(10, 4, 8, 8\); .* expects \(N, 3, 8, 8\)"):
        extract_features(extractor, wrong, chunk_size=10, progress=False, engine="ray")
    images = _image_folder(tmp_path / "images", count=30)
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        extract_features(extractor, as_source(images, extractor, on_error="raise"), chunk_size=8,
                         progress=False, engine="ray")
    entry = FeatureCache().entries()[-1]
    assert not entry.complete and entry.rows == 24  # broken.png is the last of 31 files: chunk 4 of 8-file chunks
    with pytest.raises(InputError, match="need 6 CPUs but the Ray cluster has 2"):
        extract_features(extractor, wrong, progress=False, engine=RayEngine(actors=3, threads=2))


@pytest.mark.slow
def test_zoo_extract_engine_ray(local_ray, tiny, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.extract import load_extractor

    x = np.random.default_rng(4).standard_normal((70, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["extract", str(tiny), "--layer", "pool", "-i", str(tmp_path / "x.npy"), "--json"]
    runner = CliRunner()
    result = runner.invoke(cli, [*args, "-o", str(tmp_path / "ray.npy"), "--engine", "ray", "--actors", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 70 and report["reused"] is False
    np.testing.assert_allclose(np.load(tmp_path / "ray.npy"), load_extractor(tiny, "pool")(x), rtol=1e-6)
    again = runner.invoke(cli, [*args, "-o", str(tmp_path / "local.npy")])
    assert json.loads(again.stdout)["reused"] is True
    several = runner.invoke(cli, [*args, "-l", "add", "-o", str(tmp_path / "f.npz"), "--engine", "ray"])
    assert several.exit_code == 1 and "one layer at a time" in several.output


def WhoRuns(fingerprint: str, seconds: float = 0.0):  # noqa: N802 (reads as the class it makes)
    """An extractor whose features are the id of the process that computed them, taking `seconds`
    a batch; its class is made here so that Ray pickles it by value (workers cannot import the test
    module)."""

    class WhoRuns:
        def __init__(self) -> None:
            self.fingerprint = fingerprint

        def __call__(self, batch):
            import time

            time.sleep(seconds)
            return np.full((len(batch), 1), os.getpid(), dtype=np.int64)

    return WhoRuns()


def _free_cpus(ray, want: float) -> float:
    """The cluster's free CPUs, once they reach `want` (Ray returns them a moment after an actor ends)."""
    import time

    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.available_resources().get("CPU", 0)


@pytest.mark.slow
def test_a_warm_pool_is_reused_then_closed(local_ray, tiny, tmp_path):
    import zoo
    from zoo.ray_engine import RayEngine

    x = np.zeros((40, 3, 8, 8), np.float32)
    with RayEngine(actors=2) as engine:
        # Slow enough that both actors are up before the chunks run out (a busy machine starts them slowly).
        first = extract_features(WhoRuns("a", 0.3), x, chunk_size=4, progress=False, engine=engine)
        assert engine.last_run.pool_start_s is not None and engine.last_run.actors == 2
        assert _free_cpus(local_ray, 2) == 0  # the pool holds both CPUs between calls
        second = extract_features(WhoRuns("b", 0.3), x, chunk_size=4, progress=False, engine=engine)
        assert engine.last_run.pool_start_s is None  # warm: the same two processes
        assert set(np.asarray(second.features)[:, 0]) == set(np.asarray(first.features)[:, 0])
        assert len(set(np.asarray(first.features)[:, 0])) == 2
        # A sweep's cut layers share the pool: it started once, for the first of them.
        y = np.arange(40) % 2
        zoo.sweep(str(tiny), x + 1, y, layers=["pool", "flat"], engine=engine,
                  training=TrainingConfig(epochs=1, progress=False))
        assert [r.pool_start_s for r in engine.runs[2:]] == [None, None]
        assert engine.summary().startswith("ray: 2 actors on 1 node, actor pool started in ")
    assert _free_cpus(local_ray, 2) == 2  # close(): no actor left holding a CPU
    third = extract_features(WhoRuns("c"), x, chunk_size=5, progress=False, engine=engine)
    assert engine.last_run.pool_start_s is not None  # a new pool, new processes
    assert not set(np.asarray(third.features)[:, 0]) & set(np.asarray(first.features)[:, 0])
    # engine="ray" is one engine per process, warm too; a second engine needing its CPUs closes
    # the first's idle pool instead of waiting for CPUs that would never come free.
    engine.close()
    assert RayEngine.named() is RayEngine.named()
    extract_features(WhoRuns("d"), x, chunk_size=5, progress=False, engine="ray")
    assert _free_cpus(local_ray, 0) == 0
    with RayEngine(actors=2) as other:
        extract_features(WhoRuns("e"), x, chunk_size=5, progress=False, engine=other)
    assert _free_cpus(local_ray, 2) == 2  # the named engine's pool went to make room


@pytest.mark.slow  # a fresh `zoo` process starts its own Ray: seconds
def test_a_small_job_says_local_would_be_faster_and_ray_keeps_quiet(tiny, tmp_path, zoo_cmd):
    np.save(tmp_path / "x.npy", np.zeros((30, 3, 8, 8), np.float32))
    cmd = [*zoo_cmd, "extract", str(tiny), "-l", "pool", "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"),
           "--engine", "ray", "--actors", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stderr
    # One line of zoo's own (no token-auth notice, no object-store warning, no progress-bar hint).
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(r"ray: 1 actor on 1 node, actor pool started in \d+\.\d s \(\+\d+\.\d s starting Ray\); "
                        r"30 rows computed in \d+\.\d s of actor time; --engine local would have been faster "
                        r"for a job this small on one node \(about \d+\.\d s against \d+\.\d s\)", lines[0]), lines[0]
    assert done.stdout.startswith("wrote ")


def test_what_a_ray_run_reports():
    """The pool's start and the local estimate, as the CLI prints them (no Ray needed)."""
    from zoo.ray_engine import RayRun

    small = RayRun(actors=2, cluster_nodes=1, chunk_nodes=["n1", "n1"], connect_s=4.0, pool_start_s=2.5,
                   setup_s=0.3, compute_s=0.4, wall_s=7.2, rows=70)
    assert small.local_faster() and small.nodes == {"n1": 2}
    assert small.summary() == ("ray: 2 actors on 1 node, actor pool started in 2.5 s (+4.0 s starting Ray); 70 rows "
                               "computed in 0.4 s of actor time; --engine local would have been faster for a job this "
                               "small on one node (about 0.7 s against 7.2 s)")
    big = RayRun(actors=2, cluster_nodes=1, chunk_nodes=["n1"] * 32, pool_start_s=2.5, setup_s=1.0, compute_s=50.0,
                 wall_s=28.0, rows=512)
    assert not big.local_faster() and "would have been faster" not in big.summary()
    warm = RayRun(actors=2, cluster_nodes=1, chunk_nodes=["n1"] * 32, compute_s=50.0, wall_s=26.0, rows=512)
    assert warm.summary() is None  # nothing to say about a warm pool that paid off
    two_nodes = RayRun(actors=2, cluster_nodes=2, chunk_nodes=["n1", "n2"], pool_start_s=2.0, compute_s=0.2, wall_s=5.0)
    assert not two_nodes.local_faster() and two_nodes.to_dict()["nodes"] == {"n1": 1, "n2": 1}
    total = RayRun.total([small, warm])
    assert (total.pool_start_s, total.rows, total.compute_s, len(total.chunk_nodes)) == (2.5, 582, 50.4, 34)


# --- without a Ray instance -----------------------------------------------------------------------


def test_what_the_ray_engine_cannot_take_says_so(tiny, tmp_path):
    from helpers.transfer import OrtExtractor, export_mlp

    from zoo.extract import load_extractor
    from zoo.ray_engine import RayEngine

    extractor = load_extractor(tiny, "pool")
    x = np.zeros((10, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match="engine='spark' is not one of 'local', 'ray'"):
        extract_features(extractor, x, progress=False, engine="spark")
    with pytest.raises(InputError, match="actors=0 must be"):
        RayEngine(actors=0)
    with pytest.raises(InputError, match="an iterable of batches runs in this process"):
        extract_features(extractor, as_source(iter([x]), extractor, key="k"), progress=False, engine="ray")
    session_bound = OrtExtractor(export_mlp(tmp_path / "mlp.onnx"))  # holds an onnxruntime session
    with pytest.raises(InputError, match="cannot be sent to Ray workers .*InferenceSession"):
        extract_features(session_bound, np.zeros((4, 16), np.float32), progress=False, engine="ray")
    assert FeatureCache().entries() == []  # refused before any cache folder was made


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_without_ray_the_error_gives_the_pip_command(tiny, tmp_path, zoo_cmd):
    # A `ray` package that fails to import, first on the path: what a user without Ray gets.
    blocked = tmp_path / "blocked"
    (blocked / "ray").mkdir(parents=True)
    (blocked / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(HERE.parent)]))
    cmd = [*zoo_cmd, "extract", str(tiny), "-l", "pool", "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"),
           "--engine", "ray"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith("pip install 'zoo[ray]'")
    assert "Traceback" not in done.stderr
    code = textwrap.dedent(f"""
        import numpy as np, zoo
        from zoo.errors import MissingDependencyError
        extractor = zoo.load_extractor({str(tiny)!r}, "pool")
        try:
            zoo.extract_features(extractor, np.zeros((4, 3, 8, 8), np.float32), engine="ray", progress=False)
        except MissingDependencyError as exc:
            print("missing:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert "missing: ray is needed" in done.stdout, done.stderr


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_an_unreachable_cluster_fails_at_once(tiny, tmp_path, zoo_cmd):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
    cmd = [*zoo_cmd, "extract", str(tiny), "-l", "pool", "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"),
           "--engine", "ray", "--address", "127.0.0.1:1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.slow
def test_ray_takes_the_named_inputs_of_a_text_model(local_ray, tmp_path):
    """Token ids and an attention mask (.npy files and an array) through Ray: the in-process entry."""
    import torch

    from zoo.extract import load_extractor
    from zoo.ray_engine import RayEngine

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 6)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            return (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    torch.manual_seed(0)
    ids = torch.randint(1, 50, (2, 7))
    path = tmp_path / "text.onnx"
    torch.onnx.export(Encoder(), (ids, torch.ones_like(ids)), str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                      dynamic_axes={"input_ids": {0: "n", 1: "seq"}, "attention_mask": {0: "n", 1: "seq"},
                                    "pooled": {0: "n"}})
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 50, (37, 9)).astype(np.int64)
    mask = (np.arange(9)[None, :] < rng.integers(2, 10, 37)[:, None]).astype(np.int64)
    np.save(tmp_path / "ids.npy", tokens)
    extractor = load_extractor(path, -1)
    data = {"input_ids": tmp_path / "ids.npy", "attention_mask": mask}
    local = extract_features(extractor, data, chunk_size=8, progress=False, cache_dir=tmp_path / "local")
    remote = extract_features(extractor, data, chunk_size=8, progress=False, cache_dir=tmp_path / "ray",
                              engine=RayEngine(actors=2, threads=1))
    assert remote.features.shape == (37, 6)
    _same(local, remote)


def test_an_actor_on_a_node_without_the_files(tiny, tmp_path):
    """What a worker does on a machine without this one's files, run here without a cluster."""
    import copy
    import pickle

    from zoo.extract import load_extractor
    from zoo.ray_engine import _ChunkWorker, _Work

    extractor = load_extractor(tiny, "pool")
    x = np.random.default_rng(5).standard_normal((12, 3, 8, 8)).astype(np.float32)
    model = extractor.model_path.read_bytes()
    elsewhere = pickle.loads(pickle.dumps(extractor))
    elsewhere.model_path = tmp_path / "not-on-this-node.onnx"  # the cut model travels as bytes instead
    worker = _ChunkWorker.__new__(_ChunkWorker)  # the actor's class, without Ray around it
    worker.__dict__.update(threads=1, node="a" * 56, extractors={}, token="", source=None, extractor=None, error="")
    work = _Work(token="t1", key="k1", source=as_source(x, extractor), extractor=pickle.dumps(elsewhere), model=model)
    rows = [worker.run(work, 0, 5), worker.run(work, 5, 12)]
    assert [r["error"] for r in rows] == ["", ""] and [r["consumed"] for r in rows] == [5, 7]
    np.testing.assert_array_equal(np.concatenate([r["features"] for r in rows]), extractor(x))
    assert worker.extractor.threads == 1 and rows[0]["setup"] > 0 and rows[1]["setup"] == 0
    # data on a path this node does not have: every chunk of the call reports it, nothing is read
    np.save(tmp_path / "x.npy", x)
    source = as_source(tmp_path / "x.npy", extractor)
    (tmp_path / "x.npy").rename(tmp_path / "moved.npy")
    lost = _Work(token="t2", key="k1", source=source, extractor=pickle.dumps(copy.copy(extractor)), model=model)
    error = json.loads(worker.run(lost, 0, 12)["error"])
    assert error["type"] == "InputError"
    assert error["message"].startswith(f"cannot read {tmp_path / 'x.npy'} on Ray node ")
    assert list(worker.extractors) == ["k1"]  # the first call's session is kept for later calls
