"""The catalog commands through click's CliRunner and as the `zoo` a user types (subprocesses)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.index import FORMAT

# Every test runs on SQLite and on a real PostgreSQL server (conftest.py).
pytestmark = pytest.mark.usefixtures("catalog_env")
HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime", "tf2onnx", "cv2", "keras", "huggingface_hub")


def run(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_search_text_json_and_filters():
    result = run("search", "resnet")
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[:3] == ["NAME", "FRAMEWORK", "TASK"]
    assert "resnet50.caffe" in result.output and "resnet50.keras" in result.output
    caffe = run_json("search", "resnet", "--framework", "caffe")
    assert caffe and {m["framework"] for m in caffe} == {"caffe"}
    assert {m["name"] for m in caffe} >= {"resnet50.caffe", "resnet101.caffe", "resnet152.caffe"}
    assert [m["name"] for m in run_json("search", "alexnet", "--limit", "1")] == ["bvlc_alexnet"]
    hub = run_json("search", "--source", "tensorflow", "--task", "feature-extraction", "--tag", "tf-hub")
    assert hub and all("tf-hub" in m["tags"] for m in hub)
    assert run_json("search", "--local") == []
    assert len(run_json("search", "--remote", "--limit", "0")) == 36
    assert run_json("search", "--dataset", "flickr-style")[0]["name"] == "finetune_flickr_style"
    empty = run("search", "nothing-like-this")
    assert empty.exit_code == 0 and "no models match" in empty.output


def test_info_text_and_json():
    result = run("info", "bvlc_alexnet")
    assert result.exit_code == 0
    text = result.output
    assert "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel" in text
    assert "sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377" in text
    assert "not fetched" in text and "BGR" in text and "none published" in text
    data = run_json("info", "bvlc_alexnet")
    assert data["name"] == "bvlc_alexnet" and data["local"] is False
    assert [a["role"] for a in data["artifacts"]] == ["graph", "weights"]
    assert "OneDrive" in run("info", "resnet50.caffe").output


def test_user_errors_are_one_line_with_exit_1(light, tmp_path):
    result = run("info", "bvlc_alexnt")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: model 'bvlc_alexnt' is not in the catalog; closest: "
                                     "bvlc_alexnet, bvlc_googlenet. Find models with `zoo search`")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    for args in (["add", str(broken)], ["rm", "nope_model"], ["scan", str(broken)],
                 ["add", str(tmp_path / "absent.onnx")], ["source", "sync", "nope"],
                 ["source", "rm", "nope"], ["add", str(light["torch_checkpoint"])]):
        result = run(*args)
        assert result.exit_code == 1, args
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)


def test_usage_errors_exit_2():
    for args in (["search", "--framework", "caffe2"], ["info"], ["nosuch"], ["search", "--limit", "-1"],
                 ["source", "add", "only-a-name"]):
        assert run(*args).exit_code == 2, args


def test_add_list_rm(light, tmp_path):
    result = run("add", str(light["onnx"]), "--name", "cats", "--task", "image-classification",
                 "--dataset", "pets", "--tag", "cat", "--tag", "tiny", "--description", "Cat model")
    assert result.exit_code == 0 and result.output.startswith("added cats (onnx, onnx)")
    again = run("add", str(light["onnx"]), "--name", "cats")
    assert again.exit_code == 1 and "--name" in again.output
    data = run_json("info", "cats")
    assert data["tags"] == ["cat", "tiny"] and data["dataset"] == "pets" and data["local"] is True
    assert data["artifacts"][0]["path"] == str(light["onnx"])
    assert "on disk:" in run("info", "cats").output
    listed = run_json("list")
    assert len(listed) == 37 and [m["name"] for m in listed] == sorted(m["name"] for m in listed)
    assert [m["name"] for m in run_json("list", "--source", "local")] == ["cats"]
    assert [m["name"] for m in run_json("search", "--local")] == ["cats"]
    assert run("rm", "cats").exit_code == 0
    assert run("info", "cats").exit_code == 1


def test_scan_text_and_json(light, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "one.onnx").write_bytes(light["onnx"].read_bytes())
    (folder / "net.pt").write_bytes(light["torchscript"].read_bytes())
    (folder / "bad.tflite").write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["scan", str(folder)])
    assert result.exit_code == 0
    assert "2 added, 0 unchanged, 0 moved, 0 changed" in result.output
    assert "warning: skipped" in result.output and "bad.tflite" in result.output
    data = run_json("scan", str(folder))
    assert data["added"] == [] and sorted(data["unchanged"]) == ["net", "one"]
    assert data["problems"][0]["path"].endswith("bad.tflite")


def test_source_commands(fault_server):
    entries = [{"name": "m.acme", "framework": "onnx", "files": [
        {"role": "model", "filename": "m.onnx", "url": "https://example.org/m.onnx", "md5": "0" * 32}]}]
    route = fault_server.add("/zoo.json", json.dumps(
        {"format": FORMAT, "name": "acme", "models": entries}).encode())
    url = fault_server.url("/zoo.json")
    result = run("source", "add", "acme", url)
    assert result.exit_code == 0 and result.output.strip() == "acme: 1 added, 0 updated, 0 removed"
    sources = {s["name"]: s for s in run_json("source", "list")}
    assert sources["acme"]["models"] == 1 and sources["acme"]["url"] == url
    assert "acme" in run("source", "list").output
    assert run("source", "sync", "acme").output.strip() == "acme: unchanged"
    assert run("source", "sync", "acme", "--force").output.strip() == "acme: 0 added, 0 updated, 0 removed"
    assert "If-None-Match" not in route.requests[-1].headers
    # a malformed index: exit 1, one line naming entry and field, catalog unchanged
    before = run_json("list")
    route.set_body(json.dumps({"format": FORMAT, "name": "acme", "models": [
        {**entries[0], "framework": "mxnet"}]}).encode())
    bad = run("source", "sync", "acme")
    assert bad.exit_code == 1
    assert bad.output.strip().startswith("error: index 'acme' entry 0 ('m.acme'): field 'framework'")
    assert run_json("list") == before
    everything = run("source", "sync")
    assert everything.exit_code == 1 and "error: source acme:" in everything.output
    assert "caffe: " in everything.output
    assert run("source", "rm", "acme").output.strip() == "removed source acme: 1 models removed"
    assert "m.acme" not in [m["name"] for m in run_json("list")]


# ---- the way a user types it --------------------------------------------------------------------

def zoo(zoo_cmd, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*zoo_cmd, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_subprocess_search_info_and_exit_codes(zoo_cmd, zoo_env):
    found = zoo(zoo_cmd, "search", "resnet")
    assert found.returncode == 0 and "resnet50.caffe" in found.stdout and not found.stderr
    data = json.loads(zoo(zoo_cmd, "info", "bvlc_alexnet", "--json").stdout)
    assert data["artifacts"][1]["checksum"] == "sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377"
    unknown = zoo(zoo_cmd, "info", "bvlc_alexnt")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines() == [
        "error: model 'bvlc_alexnt' is not in the catalog; closest: bvlc_alexnet, bvlc_googlenet. "
        "Find models with `zoo search`"]
    assert zoo(zoo_cmd, "search", "--framework", "caffe2").returncode == 2
    # --catalog takes a path; a search shows the built-in zoos there without creating the file,
    # the first command that writes creates it
    other = zoo_env / "other.db"
    assert json.loads(zoo(zoo_cmd, "search", "vgg16", "--json", "--catalog", str(other)).stdout)
    assert not other.exists()
    assert zoo(zoo_cmd, "rm", "vgg16.caffe", "--catalog", str(other)).returncode == 0
    assert other.exists()


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_subprocess_add_of_a_real_file(zoo_cmd, light):
    added = zoo(zoo_cmd, "add", str(light["caffe_weights"]), "--name", "lenet_cli", "--tag", "digits")
    assert added.returncode == 0, added.stderr
    info = json.loads(zoo(zoo_cmd, "info", "lenet_cli", "--json").stdout)
    assert {a["role"] for a in info["artifacts"]} == {"graph", "weights"} and info["local"]
    assert zoo(zoo_cmd, "add", str(light["caffe_weights"]), "--name", "lenet_cli").returncode == 1


def test_search_and_info_never_import_frameworks():
    code = textwrap.dedent(f"""
        import sys
        from zoo.cli import main
        for args in (["search", "resnet"], ["info", "bvlc_alexnet"], ["search", "--json"]):
            try:
                main(args)
            except SystemExit as exc:
                assert not exc.code, exc.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_info_shows_the_conversion_report(tmp_path):
    from converters.report import ConversionReport, OutputDiff
    from zoo.catalog import open_catalog
    from zoo.records import Artifact

    onnx_path = tmp_path / "bvlc_alexnet.onnx"
    onnx_path.write_bytes(b"stand-in")
    report = ConversionReport("caffe", converter="converters.caffe", opset=17, input_layout="NCHW",
                              reference="opencv 4.10", verified=True, notes=["LRN across channels"],
                              outputs=[OutputDiff("prob", 1e-6, 2e-6, 1.0, [1, 1000])])
    open_catalog().put_artifact("bvlc_alexnet", Artifact(
        "onnx", onnx_path.name, path=str(onnx_path), meta={"report": report.to_dict()}))
    text = run("info", "bvlc_alexnet").output
    assert "conversion: from caffe, by converters.caffe, opset 17, input NCHW" in text
    assert "verified:   yes against opencv 4.10: max relative difference 2e-06" in text
    assert "note:       LRN across channels" in text and f"on disk:    {onnx_path}\n" in text
    onnx_path.unlink()
    assert "(missing!)" in run("info", "bvlc_alexnet").output
    assert run_json("info", "bvlc_alexnet")["artifacts"][2]["meta"]["report"]["verified"] is True


# ---- messages: no secrets, strict JSON, causes named (issue 11) -------------------------------------

def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as jq and JavaScript's JSON.parse do."""
    def refuse(name):
        raise AssertionError(f"bare {name} in --json output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_even_with_nan(tmp_path):
    from converters.report import ConversionReport, OutputDiff
    from zoo.catalog import open_catalog
    from zoo.records import Artifact

    cat = open_catalog()
    cat.update_model("bvlc_alexnet", metrics={"top1": float("nan"), "gain": float("inf"),
                                              "loss": float("-inf"), "top5": 0.8})
    report = ConversionReport("caffe", reference="opencv 4.10", verified=False,
                              outputs=[OutputDiff("prob", float("nan"), float("nan"), 1.0, [1, 1000])])
    cat.put_artifact("bvlc_alexnet", Artifact("onnx", "a.onnx", path=str(tmp_path / "a.onnx"),
                                              meta={"report": report.to_dict(), "max": float("nan")}))
    for args in (["info", "bvlc_alexnet"], ["search", "alexnet"], ["list"]):
        result = run(*args, "--json")
        assert result.exit_code == 0, result.output
        data = _strict_json(result.output)
        model = data if isinstance(data, dict) else next(m for m in data if m["name"] == "bvlc_alexnet")
        assert model["metrics"] == {"top1": "NaN", "gain": "Infinity", "loss": "-Infinity", "top5": 0.8}
        onnx = next(a for a in model["artifacts"] if a["role"] == "onnx")
        assert onnx["meta"]["max"] == "NaN"


def test_info_names_why_outputs_cannot_agree(tmp_path):
    import numpy as np

    from converters.report import ConversionReport, compare_outputs
    from zoo.catalog import open_catalog
    from zoo.records import Artifact

    reference = np.ones((1, 10), np.float32)
    converted = reference.copy()
    converted[0, :3] = np.nan
    outputs = compare_outputs(["prob", "fc7"], [reference, reference], [converted])
    report = ConversionReport("caffe", reference="opencv 4.10", verified=False, outputs=outputs)
    assert report.describe_unverified() == (
        "prob: NaN/infinite values differ: the converted output has 3 NaN values, the source output "
        "none (of 10); fc7: missing from the converted model")
    open_catalog().put_artifact("bvlc_alexnet", Artifact(
        "onnx", "a.onnx", path=str(tmp_path / "a.onnx"), meta={"report": report.to_dict()}))
    text = run("info", "bvlc_alexnet").output
    assert "verified:   NO against opencv 4.10: max relative difference inf" in text
    assert "problem:    prob: NaN/infinite values differ: the converted output has 3 NaN values" in text
    assert "problem:    fc7: missing from the converted model" in text
    assert ConversionReport.from_dict(report.to_dict()).describe_unverified() == report.describe_unverified()


def test_credentials_are_masked_in_list_info_and_errors(fault_server):
    import base64

    from zoo.catalog import open_catalog
    from zoo.records import Artifact

    secret = "hunter2-secret"
    index = json.dumps({"format": FORMAT, "name": "acme", "models": [
        {"name": "m.acme", "framework": "onnx", "files": [
            {"role": "model", "filename": "m.onnx", "md5": "0" * 32,
             "url": f"https://bob:{secret}@models.example/m.onnx?X-Amz-Signature={secret}"}]}]})
    route = fault_server.add("/zoo.json", index.encode(),
                             auth="Basic " + base64.b64encode(f"ann:{secret}".encode()).decode())
    url = fault_server.url("/zoo.json").replace("http://", f"http://ann:{secret}@")
    added = run("source", "add", "acme", url)
    assert added.exit_code == 0, added.output
    outputs = [added.output]
    for args in (["source", "list"], ["info", "m.acme"], ["search", "m.acme"]):
        for json_flag in ([], ["--json"]):
            result = run(*args, *json_flag)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
    route.fail = [503, 503]
    for args in (["source", "sync", "acme"], ["source", "sync"]):
        result = run(*args)
        assert result.exit_code == 1 and "HTTP 503" in result.output
        outputs.append(result.output)
    for output in outputs:
        assert secret not in output, output
    assert f"http://ann:***@{fault_server.host}" in outputs[1]
    assert "https://bob:***@models.example/m.onnx?X-Amz-Signature=***" in outputs[3]
    assert open_catalog().get_source("acme").url == url  # stored as given: syncs still authenticate


@pytest.mark.parametrize("url", ["postgresql://zoo:hunter2-secret@127.0.0.1:9/zoo",
                                 "nosuchdriver://zoo:hunter2-secret@127.0.0.1:9/zoo"])
def test_catalog_url_credentials_are_masked_in_errors(url):
    result = run("search", "x", "--catalog", url)
    assert result.exit_code == 1
    assert "hunter2-secret" not in result.output and "zoo:***@127.0.0.1" in result.output, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
