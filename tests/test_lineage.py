"""Lineage and ML-BOM (issue 24, items 2-4): a signed Caffe model fetched, converted, cut, trained on.

One chain, end to end on a real HTTP server and both catalog backends: the publisher signs a
Caffe pair, zoo fetches and verifies it, converts it (checked against OpenCV when it is there),
cuts it, caches features and trains a head. Every digest in the recorded lineage is checked
against the bytes on disk, the chain is signed and verified, and the CycloneDX ML-BOM is
validated against the CycloneDX 1.6 schema by cyclonedx-python-lib's own validator.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.caffe import make_net
from helpers.signing import make_key

import zoo
from zoo.index import FORMAT

pytestmark = [pytest.mark.usefixtures("catalog_env"), pytest.mark.slow]

pytest.importorskip("model_signing", reason="zoo[provenance] is not installed")
pytest.importorskip("cyclonedx", reason="zoo[provenance] is not installed")

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 16 } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 5 } }
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def published(fault_server, tmp_path):
    """A Caffe pair signed by its publisher, listed in an index on 127.0.0.1 (source 'acme')."""
    import model_signing

    folder = tmp_path / "publisher"
    folder.mkdir()
    prototxt, caffemodel = make_net(folder, [1, 1, 10, 10], BODY, name="tinynet", seed=3)
    key = make_key(tmp_path / "keys", "acme")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private).sign(folder, tmp_path / "model.sig")
    files = []
    for role, path in (("graph", prototxt), ("weights", caffemodel)):
        fault_server.add(f"/tinynet/{path.name}", path.read_bytes())
        files.append({"role": role, "filename": path.name, "url": fault_server.url(f"/tinynet/{path.name}"),
                      "sha256": _sha256(path)})
    fault_server.add("/tinynet/model.sig", (tmp_path / "model.sig").read_bytes())
    entry = {"name": "tinynet", "framework": "caffe", "task": "image-classification", "dataset": "noise-10x10",
             "architecture": "tinynet", "license": "BSD-2-Clause", "metrics": {"top1_accuracy": 0.5},
             "input": {"name": "data", "shape": [None, 1, 10, 10], "layout": "NCHW"},
             "files": files, "signature": {"url": fault_server.url("/tinynet/model.sig")}}
    fault_server.add("/zoo.json", json.dumps({"format": FORMAT, "name": "acme", "models": [entry]}).encode())
    zoo.add_source("acme", fault_server.url("/zoo.json"), require_signature=True,
                   signer=zoo.Signer.from_files(key=key.public))
    return {"prototxt": prototxt, "caffemodel": caffemodel, "key": key}


@pytest.fixture
def trained(published, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 1, 10, 10)).astype(np.float32)
    y = (x[:, 0, :5].mean(axis=(1, 2)) > 0).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    zoo.fetch("tinynet")
    zoo.convert("tinynet")
    result = zoo.train("tinynet", tmp_path / "x.npy", tmp_path / "y.npy", new_name="tiny-head",
                       extractor=zoo.ExtractorOptions(layer="fc1"),
                       training=zoo.TrainingConfig(epochs=3, progress=False))
    return {**published, "x": x, "y": y, "result": result}


def _steps(step: dict) -> list[dict]:
    found = [step]
    for parent in step["parents"]:
        found += _steps(parent)
    return found


def test_lineage_runs_from_the_trained_head_to_the_publisher_files(trained, zoo_cmd):
    run = subprocess.run([*zoo_cmd, "lineage", "tiny-head", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    root = json.loads(run.stdout)
    by_kind: dict[str, list[dict]] = {}
    for step in _steps(root):
        by_kind.setdefault(step["kind"], []).append(step)
        assert not step.get("missing"), step["label"]
    (training,) = by_kind["training"]
    (features,) = {s["sha256"]: s for s in by_kind["features"]}.values()
    cuts = {s["sha256"]: s for s in by_kind["cut"]}
    conversions = {s["sha256"]: s for s in by_kind["conversion"]}
    assert len(cuts) == 1 and len(conversions) == 1

    # Every digest is the digest of real bytes.
    head = zoo.info("tiny-head")
    assert training["sha256"] == head.artifact("model").sha256 == _sha256(head.artifact("model").path)
    entry = Path(trained["result"].model.artifact("model").path)  # noqa: F841  (the head's own file)
    cached = zoo.FeatureCache().load(trained["result"].cache_key)
    rows = np.load(cached.path, mmap_mode="r")
    assert features["sha256"] == hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()
    extractor = zoo.load_extractor("tinynet", layer="fc1")
    (cut_digest,) = cuts
    assert cut_digest == _sha256(extractor.model_path)
    onnx = zoo.info("tinynet").artifact("onnx")
    (conversion_digest,) = conversions
    assert conversion_digest == onnx.sha256 == _sha256(onnx.path)
    publisher = {s["sha256"] for s in by_kind["publisher"]}
    assert publisher == {_sha256(trained["prototxt"]), _sha256(trained["caffemodel"])}
    from zoo.datasources import array_fingerprint as array_sha256

    data = {s["sha256"] for s in by_kind["data"]}
    assert {array_sha256(trained["x"]), array_sha256(trained["y"])} <= data

    # What verified each step, and with which tools.
    lineage = training["lineage"]
    assert lineage["figures"]["val_accuracy"] == pytest.approx(trained["result"].fit.val_accuracy)
    assert lineage["settings"]["layer"] == "fc1" and {"torch", "onnx", "zoo"} <= set(lineage["tools"])
    conversion = next(iter(conversions.values()))["lineage"]
    assert conversion["figures"]["verified"] in (True, None) and conversion["settings"]["opset"] == 17
    for step in by_kind["publisher"]:
        assert step["facts"]["signature"].startswith("verified, signed by key sha256:")
        assert step["facts"]["published checksum"] == f"sha256:{step['sha256']}"

    text = subprocess.run([*zoo_cmd, "lineage", "tiny-head"], capture_output=True, text=True).stdout
    assert "<- tinynet.caffemodel (tinynet)" in text and "published checksum: sha256:" in text
    assert "val_accuracy" in text and "conversion of tinynet" in text


def test_signing_the_head_attests_its_training(trained, zoo_cmd):
    key = trained["key"]
    run = subprocess.run([*zoo_cmd, "sign", "tiny-head", "--key", str(key.private)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "verified; 2 files signed" in run.stdout  # the head and its lineage statement
    verify = subprocess.run([*zoo_cmd, "verify", "--signatures"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "tinynet (publisher): signed by key sha256:" in verify.stdout
    assert "attests zoo/tiny-head.onnx.lineage.json" not in verify.stdout
    assert "attests tiny-head.onnx: training from cached features sha256:" in verify.stdout


def test_the_ml_bom_validates_and_holds_the_whole_chain(trained, tmp_path, zoo_cmd):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    out = tmp_path / "head.cdx.json"
    run = subprocess.run([*zoo_cmd, "bom", "tiny-head", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and "schema-valid" in run.stdout, run.stderr
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"

    def components(items):
        for item in items:
            yield item
            yield from components(item.get("components", []))

    everything = list(components([bom["metadata"]["component"], *bom["components"]]))
    refs = {c["bom-ref"]: c for c in everything}
    kinds = [c["type"] for c in everything]
    assert kinds.count("machine-learning-model") >= 4  # head, its training output, cut, conversion, tinynet
    assert "data" in kinds and "file" in kinds
    head = bom["metadata"]["component"]
    # The head sits on tinynet's frozen weights: it carries tinynet's licence, as do its conversion and cut.
    assert head["licenses"][0]["license"]["id"] == "BSD-2-Clause"
    derived = [c for c in everything if c["bom-ref"].split(":")[0] in ("conversion", "cut", "training")]
    assert len(derived) == 3 and all(c["licenses"][0]["license"]["id"] == "BSD-2-Clause" for c in derived)
    metrics = head["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    assert any(m["type"].startswith("transfer accuracy") for m in metrics)
    tinynet = refs["model:tinynet"]
    assert tinynet["licenses"][0]["license"]["id"] == "BSD-2-Clause"
    card = tinynet["modelCard"]["modelParameters"]
    assert card["task"] == "image-classification" and card["datasets"][0]["name"] == "noise-10x10"
    files = {c["name"]: c for c in tinynet["components"]}
    assert files["tinynet.caffemodel"]["hashes"][0]["content"] == _sha256(trained["caffemodel"])
    assert any(p["name"] == "zoo:signature:publisher" and p["value"].startswith("verified")
               for p in tinynet["properties"])
    # Dependencies: every ref exists, and the chain reaches the publisher's files.
    depends = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    assert set(depends) <= set(refs) and all(set(d) <= set(refs) for d in depends.values())
    reached, todo = set(), [head["bom-ref"]]
    while todo:
        ref = todo.pop()
        if ref not in reached:
            reached.add(ref)
            todo += depends.get(ref, [])
    assert {"file:tinynet/tinynet.caffemodel", "file:tinynet/tinynet.prototxt"} <= reached
    # The formulation: one task per derivation, inputs and outputs pointing at components.
    (workflow,) = bom["formulation"][0]["workflows"]
    names = [task["name"].split(":")[0] for task in workflow["tasks"]]
    assert sorted(names) == ["conversion", "cut", "features", "training"]
    for task in workflow["tasks"]:
        assert all(i["resource"]["ref"] in refs for i in task.get("inputs", []))
        assert task["outputs"][0]["resource"]["ref"] in refs
    assert workflow["taskDependencies"]


def test_a_pretrained_stack_records_its_data(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((64, 12)).astype(np.float32)
    result = zoo.pretrain(x, layers=[6, 3], name="tiny-stack", config=zoo.PretrainConfig(epochs=1, progress=False))
    lineage = result.model.artifact("model").meta["lineage"]
    from zoo.datasources import array_fingerprint as array_sha256

    assert lineage["kind"] == "pretraining" and lineage["parents"][0]["sha256"] == array_sha256(x)
    assert lineage["sha256"] == _sha256(result.model.artifact("model").path)
    from zoo.bom import build, validate

    bom = build("tiny-stack")
    assert validate(bom) is None
    assert bom["metadata"]["component"]["modelCard"]["modelParameters"]["approach"]["type"] == "unsupervised"
