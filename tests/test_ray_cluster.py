"""A real Ray cluster of two nodes on this machine, started as a user starts one (`ray start`).

The head and a second node each get one CPU and a resource naming them; `zoo extract --engine ray
--address HEAD` runs its chunks on both, a node without the input files fails in one line naming the
path, `zoo train` and `zoo sweep` take the same engine, and a node killed mid-job has its chunks
computed again on the head, the cache entry equal to the local engine's. Starting the nodes takes
most of the time: one cluster serves the whole test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


pytest.importorskip("ray")


def _heavy_mlp(path: Path, width: int = 2048, depth: int = 60) -> Path:
    """An ONNX stack of dense ReLU layers sharing one weight (a small file, about 0.5 GFLOP a row),
    ending in 64 features at "out": a job of a few thousand rows keeps two single-thread actors busy
    for seconds, long enough for the second node's actor to start and take chunks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, rows: int, cols: int):
        return numpy_helper.from_array((rng.standard_normal((rows, cols)) * np.sqrt(2 / rows)).astype(np.float32),
                                       name)

    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["m_in"]), helper.make_node("Relu", ["m_in"], ["h0"])]
    for i in range(depth):
        nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"], name=f"dense{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"], name=f"relu{i}")]
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "w_out"], ["out"], name="out"))
    graph = helper.make_graph(nodes, "heavy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64])],
                              [weight("w_in", 512, width), weight("w", width, width), weight("w_out", width, 64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.slow  # two `ray start` nodes and three zoo processes: about a minute on a busy 2-core machine
def test_two_nodes_share_a_job_and_survive_losing_one(tmp_path, zoo_cmd):
    from helpers.ray_cluster import can_hide, start_cluster

    why_not = can_hide()
    if why_not:
        pytest.skip(f"a node without the files needs a private mount namespace: {why_not}")
    model = _heavy_mlp(tmp_path / "heavy.onnx")
    rng = np.random.default_rng(1)
    shared, hidden = tmp_path / "shared", tmp_path / "hidden"
    shared.mkdir(), hidden.mkdir()
    x = rng.standard_normal((12 * 256, 512)).astype(np.float32)
    np.save(shared / "x.npy", x)
    np.save(hidden / "only-here.npy", x[:600])

    cluster = start_cluster()
    try:
        cluster.start_head(resources={"zoo_head": 1})
        cluster.add_node("b", resources={"zoo_b": 1}, hide=[hidden])  # b lacks the files under hidden/
        env = dict(os.environ, **cluster.env)
        env.pop("RAY_ADDRESS", None)
        extract = [*zoo_cmd, "extract", str(model), "-l", "out", "--engine", "ray", "--address", cluster.address]

        # 1. The chunks of one `zoo extract` ran on both nodes, recorded per node.
        done = subprocess.run([*extract, "-i", str(shared / "x.npy"), "-o", str(tmp_path / "ray.npy"), "--json"],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["rows"] == len(x) and report["ray"]["cluster_nodes"] == 2
        assert len(report["ray"]["nodes"]) == 2 and sum(report["ray"]["nodes"].values()) == 12, json.dumps(report["ray"])
        assert report["ray"]["retried"] == 0 and report["ray"]["local_faster"] is False
        from zoo.extract import load_extractor
        from zoo.options import ExtractorOptions

        extractor = load_extractor(model, options=ExtractorOptions(layer="out", threads=1))  # as an actor runs it
        written = np.load(tmp_path / "ray.npy")
        for lo in (0, len(x) - 256):  # the first and last chunks (the whole job locally: seconds more)
            np.testing.assert_array_equal(written[lo:lo + 256], extractor(x[lo:lo + 256]))

        # 2. Node b cannot read the input: one line naming the path, no traceback, no entry written.
        done = subprocess.run([*extract, "-i", str(hidden / "only-here.npy"), "-o", str(tmp_path / "f.npy")],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: cannot read {hidden / 'only-here.npy'} on Ray node ") and \
            "same path" in lines[0], lines[0]
        assert not (tmp_path / "f.npy").exists()

        # 3. zoo train and zoo sweep take the engine too (the cache entry of step 1 is not needed).
        y = np.arange(600) % 3
        np.save(shared / "y.npy", y)
        np.save(shared / "small.npy", x[:600])
        done = subprocess.run([*zoo_cmd, "sweep", str(model), "-d", str(shared / "small.npy"), "-y",
                               str(shared / "y.npy"), "--layers", "relu3,relu5", "--epochs", "1", "--json",
                               "--engine", "ray", "--address", cluster.address],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        done = subprocess.run([*zoo_cmd, "train", str(model), "-l", "relu5", "-d", str(shared / "small.npy"), "-y",
                               str(shared / "y.npy"), "--name", "heavy.head", "--epochs", "1", "--json",
                               "--engine", "ray", "--address", cluster.address],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["model"] == "heavy.head"

        # 4. Node b killed mid-job: its chunks are computed again on the head; the entry is complete
        #    and equal to the local engine's. The job runs in a driver of its own (Ray reads its
        #    token when imported); it says when node b has computed a chunk, and b is killed then.
        marker = tmp_path / "b-computed"
        job = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(model), str(shared / "small.npy"),
                                cluster.address, str(tmp_path), str(marker)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 180
            while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), "node b computed no chunk"
            cluster.nodes["b"].kill()
            out, err = job.communicate(timeout=240)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0, err
        run = json.loads(out.strip().splitlines()[-1])
        assert run["lost_actors"] == 1 and run["retried"] >= 1, run
        assert run["chunks"] == 30 and run["nodes"] == 2, run
        assert run["complete"] and run["rows"] == 600 and run["same_key"] and run["equal"], run
    finally:
        cluster.stop()


# The driver of step 4: a slowed extractor (0.3 s a chunk) on 600 rows in 30 chunks over both nodes;
# the marker file appears once node b has computed a chunk; prints what the run did as JSON.
KILLED_JOB = """
import json, sys, threading, time
from pathlib import Path

import numpy as np

from zoo.extract import load_extractor
from zoo.features import FeatureCache, extract_features
from zoo.options import ExtractorOptions
from zoo.ray_engine import RayEngine

model, data, address, folder, marker = sys.argv[1:]
extractor = load_extractor(model, options=ExtractorOptions(layer="out", threads=1))


class Slowed:
    def __init__(self):
        self.inner, self.fingerprint, self.input_spec = extractor, extractor.fingerprint, extractor.input_spec

    def __call__(self, batch):
        time.sleep(0.3)
        return self.inner(batch)


engine = RayEngine(address=address)
outcome = {}
job = threading.Thread(target=lambda: outcome.update(entry=extract_features(
    Slowed(), data, chunk_size=20, progress=False, cache_dir=Path(folder) / "killed", engine=engine)))
job.start()
while job.is_alive() and (engine.last_run is None or len(set(engine.last_run.chunk_nodes)) < 2):
    time.sleep(0.02)
Path(marker).touch()
job.join()
run = engine.last_run
engine.close()
entry = FeatureCache(Path(folder) / "killed").entries()[0]
local = extract_features(extractor, data, cache_dir=Path(folder) / "local-killed", progress=False)
print(json.dumps({
    "lost_actors": run.lost_actors, "retried": run.retried, "chunks": len(run.chunk_nodes),
    "nodes": len(set(run.chunk_nodes)), "complete": entry.complete, "rows": entry.rows,
    "same_key": outcome["entry"].key == local.key,
    "equal": bool(np.array_equal(np.asarray(outcome["entry"].features), np.asarray(local.features))),
}))
"""
