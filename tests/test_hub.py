"""The Hugging Face Hub as a zoo, against a loopback Hub (tests/helpers/hub_server.py) that answers as
huggingface.co does: search, model info with LFS metadata, resolve with a redirect to a second host,
gated repos, rate limits. huggingface_hub itself talks to it (HF_ENDPOINT)."""
from __future__ import annotations

import hashlib
import json
import socket
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import zoo
from helpers.hub_server import git_blob_id
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.errors import ChecksumError, HubError, MissingDependencyError, ModelFormatError, OfflineError
from zoo.hubs import add, search

TOKEN = "hf_secretToken1234567890"


def _onnx(scale: float, external: bool = False) -> bytes | tuple[bytes, bytes]:
    """A real ONNX model (MatMul by a constant); with `external`, its weights kept in a second file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 3), scale, np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if not external:
        return model.SerializeToString()
    data = weight.raw_data
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.onnx_data"), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString(), data


PREPROCESSOR = json.dumps({
    "do_normalize": True, "do_rescale": True, "do_resize": True, "do_center_crop": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}).encode()
CARD = (b"---\nlicense: apache-2.0\ndatasets:\n- imagenet-1k\n---\n# ResNet-18\n\n[![badge](b.svg)](x)\n\n"
        b"ResNet-18 trained on **ImageNet-1k** at 224x224, introduced in [Deep Residual Learning](http://x).\n\n"
        b"## Usage\nMore text.\n")


@pytest.fixture
def repos(hub):
    """Three repos: an ONNX export with a card and a preprocessing config, a Keras one, a PyTorch-only one."""
    hub.repo("acme/resnet-18", {"onnx/model.onnx": _onnx(1.0), "onnx/model_quantized.onnx": _onnx(2.0),
                                "preprocessor_config.json": PREPROCESSOR, "README.md": CARD, "config.json": b"{}"},
             downloads=5000, likes=7, tags=["vision", "image-classification"],
             card={"license": "apache-2.0", "datasets": ["imagenet-1k"]})
    hub.repo("acme/resnet-50-keras", {"model.weights.h5": b"\x89HDF\r\n\x1a\n" + bytes(100)}, library="keras",
             downloads=800, card={"license": "mit"})
    hub.repo("other/resnet-50-torch", {"model.safetensors": bytes(200), "pytorch_model.bin": bytes(200)},
             library="transformers", downloads=90_000)
    return hub


def test_search_hub_lists_by_downloads_and_keeps_the_results(repos, zoo_env):
    out = CliRunner().invoke(cli, ["search", "resnet", "--hub"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "LIBRARY", "LICENSE", "DOWNLOADS", "STATE"]
    assert lines[1].split() == ["acme--resnet-18", "image-classification", "onnx", "apache-2.0", "5,000"]
    assert lines[2].split() == ["acme--resnet-50-keras", "image-classification", "keras", "mit", "800"]
    assert "other--resnet-50-torch" not in out.stdout  # not a library zoo converts (not asked for)
    # each library is one request (the Hub ANDs filters), merged by downloads
    assert repos.hits("/api/models") == len(("onnx", "keras", "tflite", "tf"))
    # kept in the catalog: a plain search (no network) finds them, and --hub --offline too
    assert "acme--resnet-18" in CliRunner().invoke(cli, ["search", "resnet"]).stdout
    before = len(repos.requests)
    offline = CliRunner().invoke(cli, ["search", "resnet", "--hub", "--offline", "--json"])
    assert [m["name"] for m in json.loads(offline.stdout)] == ["acme--resnet-18", "acme--resnet-50-keras"]
    assert len(repos.requests) == before
    wider = search("resnet", libraries=["transformers"])
    assert [m.name for m in wider] == ["other--resnet-50-torch"] and wider[0].framework == "pytorch"


def test_add_pins_the_commit_with_the_files_card_and_input_spec(repos):
    model = add("hf://acme/resnet-18")
    commit = repos.repos["acme/resnet-18"].refs["main"]
    body = repos.repos["acme/resnet-18"].commits[commit]["onnx/model.onnx"]
    assert (model.name, model.framework, model.format, model.revision) == ("acme--resnet-18", "onnx", "onnx", commit)
    (artifact,) = model.artifacts  # the plain export, not the quantized one
    assert artifact.checksum == "sha256:" + hashlib.sha256(body).hexdigest() and artifact.size == len(body)
    assert artifact.urls == [f"{repos.url}/acme/resnet-18/resolve/{commit}/onnx/model.onnx"]
    assert model.meta["hub"]["other_models"] == ["onnx/model_quantized.onnx"]
    assert (model.task, model.license, model.dataset) == ("image-classification", "apache-2.0", "imagenet-1k")
    assert model.description == "ResNet-18 trained on ImageNet-1k at 224x224, introduced in Deep Residual Learning."
    assert "vision" in model.tags and model.source == "hf"
    spec = model.input
    assert (spec.shape, spec.layout, spec.resize, spec.crop) == ([None, 3, 224, 224], "NCHW", 256, [224, 224])
    assert spec.mean == [0.485, 0.456, 0.406] and spec.scale == pytest.approx(1 / 255)
    # a named file, a tag, and the other repo's .h5
    quantized = add("hf://acme/resnet-18/onnx/model_quantized.onnx")
    assert quantized.name == "acme--resnet-18.model_quantized"
    repos.repos["acme/resnet-18"].tag("v1.0")
    tagged = add("hf://acme/resnet-18@v1.0", name="resnet18.v1")
    assert tagged.revision == commit and tagged.meta["version"] == "v1.0"
    repos.repo("timm/mobilenet.onnx", {"model.onnx": _onnx(1.0), "README.md": b"# MobileNet\n\n## Model Details\n"
                                       b"- **Model Type:** Image classification\n- **Image size:** 160 x 160\n"},
               card={"license": "apache-2.0"})
    spec = add("hf://timm/mobilenet.onnx").input  # no preprocessing config: the card's image size
    assert (spec.shape, spec.layout, spec.mean) == ([None, 3, 160, 160], "NCHW", None)
    keras = add("hf://acme/resnet-50-keras")
    assert (keras.framework, keras.format, keras.artifacts[0].checksum.split(":")[0]) == ("keras", "h5", "sha256")


def test_a_small_file_is_checked_against_its_git_blob_id(repos):
    body = _onnx(3.0)
    repos.repo("acme/tiny", {"tiny.onnx": body})
    repos.repos["acme/tiny"].is_lfs = lambda path, data: False  # stored in git itself, not LFS
    model = add("hf://acme/tiny")
    assert model.artifacts[0].checksum == f"gitblob:{git_blob_id(body)}"
    (fetched,) = zoo.fetch(model.name, quiet=True)
    assert open(fetched.path, "rb").read() == body


def test_a_repo_with_nothing_to_convert_says_what_it_has(repos):
    runner = CliRunner()
    out = runner.invoke(cli, ["add", "hf://other/resnet-50-torch"])
    assert out.exit_code == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: hf://other/resnet-50-torch has no file zoo converts")
    assert "it has: README.md, model.safetensors, pytorch_model.bin" in line and "ONNX export" in line
    with pytest.raises(ModelFormatError, match="config.json is not a model file"):
        add("hf://acme/resnet-18/config.json")
    with pytest.raises(HubError, match="has no file onnx/nope.onnx"):
        add("hf://acme/resnet-18/onnx/nope.onnx")
    for ref, said in (("hf://acme/nope", "is not on the Hub"), ("hf://acme/resnet-18@v9", "has no such revision")):
        out = runner.invoke(cli, ["add", ref])
        assert out.exit_code == 1 and said in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_fetch_goes_through_the_second_host_verified_and_into_the_store(repos, zoo_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model = add("hf://acme/resnet-18")
    out = CliRunner().invoke(cli, ["fetch", model.name])
    assert out.exit_code == 0, out.output
    (fetched,) = open_catalog().get(model.name).artifacts
    body = repos.repos["acme/resnet-18"].commits[model.revision]["onnx/model.onnx"]
    assert open(fetched.path, "rb").read() == body and fetched.sha256 == hashlib.sha256(body).hexdigest()
    assert (zoo_env / "cache" / "blobs" / "sha256" / fetched.sha256).samefile(fetched.path)
    # huggingface_hub asked the Hub (with the token) for the file's metadata; the bytes came from the
    # second host, which never saw the token
    heads = [{k.lower(): v for k, v in h.items()} for m, p, h in repos.requests
             if m == "HEAD" and p.endswith("/onnx/model.onnx")]
    assert heads and heads[0]["authorization"] == f"Bearer {TOKEN}"
    cdn = [r for r in repos.cdn.requests if r.path.startswith("/lfs/")]
    assert cdn and all("authorization" not in {k.lower() for k in r.headers} for r in cdn)
    agent = {k.lower(): v for k, v in cdn[0].headers.items()}["user-agent"]
    assert "hf_hub/" in agent and agent.startswith("zoo/")  # huggingface_hub's User-Agent, naming zoo
    assert TOKEN not in out.output and fetched.meta["fetched_from"].startswith("http://localhost:")
    assert "?" not in fetched.meta["fetched_from"]  # the signed part of the location is not kept
    x = np.ones((2, 4), np.float32)
    assert np.allclose(zoo.load_extractor(model.name, layer="fc")(x), 4.0)


def test_a_fresh_process_fetches_and_converts_a_hub_model(repos, zoo_cmd):
    """The command a user types, in a new process: nothing has imported huggingface_hub's API yet when
    fetching asks for its session (its `utils` is lazy until imported)."""
    import subprocess

    model = add("hf://acme/resnet-18")
    out = subprocess.run([*zoo_cmd, "convert", model.name], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "converted" in out.stdout, out.stderr
    assert open_catalog().get(model.name).artifact("model").sha256 == model.artifacts[0].checksum.split(":")[1]


def test_a_search_result_fetched_in_fresh_processes_keeps_no_empty_revision(repos, zoo_cmd):
    """`zoo search --hub` then `zoo fetch NAME`, each a new process: the pinned commit is the only
    revision (the search result had no files to keep), and a hub ref where a name goes says `zoo add`."""
    import subprocess

    def zoo_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*zoo_cmd, *args], capture_output=True, text=True, timeout=120)

    assert zoo_run("search", "resnet", "--hub").returncode == 0
    out = zoo_run("fetch", "hf://acme/resnet-18")
    assert out.returncode == 1 and "no such file" not in out.stderr, out.stderr
    assert out.stderr.strip() == ("error: hf://acme/resnet-18 is not in the catalog: a Hub model is registered "
                                  "first with `zoo add hf://acme/resnet-18`; then use the name that prints "
                                  "(OWNER--REPO)")
    assert zoo_run("fetch", "acme--resnet-18").returncode == 0
    info = json.loads(zoo_run("info", "acme--resnet-18", "--json").stdout)
    assert [r["revision"] for r in info["revisions"]] == [info["meta"]["hub"]["commit"]]
    # searched again live, it is shown as what it is here now
    assert zoo_run("search", "resnet-18", "--hub").stdout.splitlines()[1].split()[-2:] == ["5,000", "fetched"]


def test_a_search_result_converts_in_a_fresh_process_as_it_fetches(repos, zoo_cmd):
    """`zoo convert NAME` of a result of `zoo search --hub` pins and fetches it first, as `zoo fetch NAME` does."""
    import subprocess

    for command in (["search", "resnet-18", "--hub"], ["convert", "acme--resnet-18"]):
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert open_catalog().get("acme--resnet-18").artifact("onnx") is not None


def test_an_hf_endpoint_that_is_no_url_is_one_line(zoo_cmd):
    """A fresh `zoo search --hub` / `zoo add hf://` with HF_ENDPOINT=huggingface.co (no scheme): one line, no
    internal error."""
    import os
    import subprocess

    env = {**os.environ, "HF_ENDPOINT": "huggingface.co"}
    for command in (["search", "resnet", "--hub"], ["add", "hf://acme/resnet-18"]):
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 1 and out.stderr.strip().endswith(
            "HF_ENDPOINT 'huggingface.co' is not a URL of a Hub; set it like https://huggingface.co, or unset it"), \
            out.stderr


def test_a_search_result_is_locked_in_a_fresh_process(repos, zoo_cmd, tmp_path):
    """`zoo lock NAME` of a `zoo search --hub` result pins it first (as `zoo fetch NAME` does); offline it says so."""
    import os
    import subprocess

    lock_file = str(tmp_path / "zoo.lock")
    for command, env in ((["search", "resnet", "--hub"], {}), (["lock", "acme--resnet-50-keras", "-o", lock_file],
                                                                 {"ZOO_OFFLINE": "1"})):
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: acme--resnet-50-keras is a Hub search result, never pinned to a commit; lock it while online (it is "
        "pinned then)"), out.stderr
    out = subprocess.run([*zoo_cmd, "lock", "acme--resnet-18", "-o", lock_file], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    locked = json.loads(open(lock_file).read())["models"]["acme--resnet-18"]
    assert locked["revision"] == repos.repos["acme/resnet-18"].refs["main"] and locked["files"]


def test_a_hub_source_with_an_author_is_listed_as_it_is(repos, zoo_cmd):
    """`author` is no secret: `zoo source list` (a new process) shows the hub source's URL unmasked."""
    import subprocess

    for command in (["source", "add", "hf", "--author", "acme", "--library", "onnx", "--no-sync"], ["source", "list"]):
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert "hf://?author=acme&library=onnx" in out.stdout and "***" not in out.stdout, out.stdout


def test_a_file_the_second_host_changed_is_refused(repos):
    model = add("hf://acme/resnet-18")
    sha256 = model.artifacts[0].checksum.split(":")[1]
    repos.cdn.routes[f"/lfs/{sha256}"].set_body(_onnx(9.0))
    with pytest.raises(ChecksumError, match="sha256 does not match"):
        zoo.fetch(model.name, quiet=True)
    assert not open_catalog().get(model.name).is_local


def test_an_interrupted_download_resumes(repos):
    model = add("hf://acme/resnet-18")
    route = repos.cdn.routes["/lfs/" + model.artifacts[0].checksum.split(":")[1]]
    route.drop_after = 60
    (fetched,) = zoo.fetch(model.name, quiet=True)
    assert route.hits == 2 and route.requests[-1].headers["Range"] == "bytes=60-"
    assert route.bytes_sent == fetched.size


def test_onnx_weights_in_a_second_file_come_along(repos):
    graph, weights = _onnx(5.0, external=True)
    repos.repo("acme/big", {"onnx/model.onnx": graph, "onnx/model.onnx_data": weights})
    model = add("hf://acme/big")
    assert [(a.role, a.filename) for a in model.artifacts] == [("other", "model.onnx_data"), ("model", "model.onnx")]
    assert np.allclose(zoo.load_extractor(model.name, layer="fc")(np.ones((1, 4), np.float32)), 20.0)


def _saved_model_files(folder, under: str = "") -> dict[str, bytes]:
    return {f"{under}{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_savedmodel_folder_is_fetched_file_by_file_and_converts(repos, tf_files, zoo_env):
    """A SavedModel on the Hub is a folder (saved_model.pb, variables/): its files are pinned one by one,
    fetched into one folder of the cache that is the SavedModel, and converted like a local one."""
    saved = _saved_model_files(tf_files["saved_model"])
    assert any(name.startswith("variables/") for name in saved)
    repos.repo("keras-io/tiny-savedmodel", {**saved, "config.json": b"{}"}, library="tf")
    model = add("hf://keras-io/tiny-savedmodel")
    assert (model.framework, model.format) == ("tensorflow", "saved_model")
    assert {a.filename for a in model.artifacts} == set(saved) and model.artifacts[-1].filename == "saved_model.pb"
    assert model.artifacts[-1].role == "model" and model.meta["hub"]["path"] == "saved_model.pb"
    out = CliRunner().invoke(cli, ["fetch", model.name])
    assert out.exit_code == 0, out.output
    fetched = {a.filename: a for a in open_catalog().get(model.name).artifacts}
    folder = zoo_env / "cache" / "models" / model.name
    for name, body in saved.items():
        assert fetched[name].path == str(folder / name) and (folder / name).read_bytes() == body
        assert (zoo_env / "cache" / "blobs" / "sha256" / hashlib.sha256(body).hexdigest()).is_file()
    converted = zoo.convert(model.name)
    assert converted.meta["verified"], converted.meta
    x = np.arange(4, dtype=np.float32)[None]
    assert np.allclose(zoo.load_extractor(model.name, layer=-1)(x), x)  # x * ones(4)
    # a changed variables file makes the conversion stale: the folder is its source, not saved_model.pb
    from zoo.conversion import stale_sources

    variables = next(folder.glob("variables/*.data-*"))
    body = variables.read_bytes()
    variables.unlink()  # a view of its blob: a new file, not a write through the link
    variables.write_bytes(body[::-1])
    assert [p.filename for p in zoo.verify(model.name)] == [variables.relative_to(folder).as_posix()]
    assert stale_sources(open_catalog().get(model.name), converted) == [f"model file {folder}"]


def test_a_savedmodel_is_picked_by_folder_and_a_single_file_comes_first(repos, tf_files):
    saved = _saved_model_files(tf_files["saved_model"], "export/1/")
    repos.repo("acme/both", {**saved, "model.onnx": _onnx(1.0)})
    model = add("hf://acme/both")
    assert model.format == "onnx" and model.meta["hub"]["other_models"] == ["export/1/"]
    for path in ("export/1", "export", "export/1/saved_model.pb"):
        pinned = add(f"hf://acme/both/{path}", name="both.saved")
        assert pinned.format == "saved_model" and pinned.meta["hub"]["path"] == "export/1/saved_model.pb"
        assert {a.filename for a in pinned.artifacts} == {n[len("export/1/"):] for n in saved}
    with pytest.raises(ModelFormatError, match="the repo's models: model.onnx, export/1/"):
        add("hf://acme/both/export/1/variables/variables.index")
    repos.repo("acme/hostile", {**saved, "export/1/variables/../../../../escape": b"x"})
    with pytest.raises(HubError, match="not a path inside it; zoo will not fetch it"):
        add("hf://acme/hostile/export/1")


def test_fetching_a_search_result_pins_it_first(repos):
    search("resnet")
    assert open_catalog().get("acme--resnet-18").artifacts == []
    zoo.fetch("acme--resnet-18", quiet=True)
    pinned = open_catalog().get("acme--resnet-18")
    assert pinned.is_local and pinned.revision == repos.repos["acme/resnet-18"].refs["main"]
    assert not pinned.meta["hub"].get("stub")


def test_a_file_that_is_not_what_its_name_says_is_found_out_after_the_download(repos):
    repos.repo("acme/fake", {"model.pt": b"PK\x03\x04 not a TorchScript archive" + bytes(64)})
    model = add("hf://acme/fake")
    assert model.format == "torchscript"  # from the name, until the bytes are here
    with pytest.raises(ModelFormatError, match="hf://acme/fake: model.pt is not a model zoo converts"):
        zoo.fetch(model.name, quiet=True)


def test_a_gated_repo_is_one_line_until_the_token_may_read_it(repos, monkeypatch):
    repos.repo("meta/gated-net", {"model.onnx": _onnx(1.0)}, gated=True)
    model = add("hf://meta/gated-net")  # its card and file list are public
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = CliRunner().invoke(cli, ["fetch", model.name])
    assert out.exit_code == 1
    (line,) = out.stderr.strip().splitlines()
    assert "hf://meta/gated-net is gated: accept its conditions at" in line and "HF_TOKEN" in line
    assert TOKEN not in out.output
    repos.tokens.add(TOKEN)  # conditions accepted
    assert CliRunner().invoke(cli, ["fetch", model.name]).exit_code == 0


def test_rate_limits_wait_a_short_retry_after_and_explain_a_long_one(repos):
    repos.fail("/api/models/acme/resnet-18", status=429, retry_after="1")
    assert add("hf://acme/resnet-18").revision  # waited a second, then asked again
    repos.fail("/api/models", status=429, retry_after="3600", times=4)
    out = CliRunner().invoke(cli, ["search", "resnet", "--hub"])
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [
        "error: searching the Hub for resnet: the Hugging Face Hub is limiting requests (HTTP 429) and asks to wait "
        "3600 s; try again then (logged-in users, HF_TOKEN, get higher limits)"]


def test_an_unreachable_hub_is_one_line_and_offline_uses_what_was_fetched(repos, monkeypatch):
    search("resnet")  # stored: acme--resnet-50-keras is known, not fetched
    model = add("hf://acme/resnet-18")
    zoo.fetch(model.name, quiet=True)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    out = CliRunner().invoke(cli, ["add", "hf://acme/resnet-50-keras"])
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [
        f"error: reading hf://acme/resnet-50-keras: cannot reach the Hugging Face Hub at http://127.0.0.1:{port} "
        "(connection refused); check the network or HF_ENDPOINT; models already fetched work with --offline"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo.fetch(model.name, quiet=True)[0].path  # already here: nothing asked
    with pytest.raises(OfflineError):
        zoo.fetch("acme--resnet-50-keras", quiet=True)


def test_a_new_commit_is_a_new_revision_after_a_sync(repos):
    model = add("hf://acme/resnet-18")
    zoo.fetch(model.name, quiet=True)
    repo = repos.repos["acme/resnet-18"]
    repos.publish(repo, {"onnx/model.onnx": _onnx(7.0)})
    (report,) = zoo.sync_sources("hf")
    assert report.stats.updated == ["acme--resnet-18"]
    cat = open_catalog()
    old, new = cat.revisions(model.name)
    assert (old.revision, new.revision) == (model.revision, repo.refs["main"]) and new.current
    x = np.ones((1, 4), np.float32)
    assert np.allclose(zoo.load_extractor(model.name, layer="fc")(x), 28.0)
    assert np.allclose(zoo.load_extractor(f"{model.name}@{old.revision[:8]}", layer="fc")(x), 4.0)
    # a hub source that follows an organisation lists its models on sync
    out = CliRunner().invoke(cli, ["source", "add", "hf", "--author", "acme", "--library", "onnx,keras", "--json"])
    assert out.exit_code == 0, out.output
    assert "acme--resnet-50-keras" in json.loads(out.stdout)["added"]


def test_without_huggingface_hub_the_error_gives_the_pip_command(repos, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'zoo\[hub\]'"):
        add("hf://acme/resnet-18")


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_one_line_that_never_shows_it(repos, monkeypatch, status):
    model = add("hf://acme/resnet-18")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    repos.fail("/acme/resnet-18/resolve/", status=status, retry_after=None, times=8)
    out = CliRunner().invoke(cli, ["fetch", model.name])
    assert out.exit_code == 1
    (line,) = out.stderr.strip().splitlines()
    assert f"the Hub refused (HTTP {status}): HF_TOKEN is missing, expired or may not read hf://acme/resnet-18" in line
    assert TOKEN not in out.output


def test_a_file_gone_from_the_pinned_commit_is_one_line(repos):
    model = add("hf://acme/resnet-18")
    repo = repos.repos["acme/resnet-18"]
    del repo.commits[model.revision]["onnx/model.onnx"]
    out = CliRunner().invoke(cli, ["fetch", model.name])
    assert out.exit_code == 1
    (line,) = out.stderr.strip().splitlines()
    assert "hf://acme/resnet-18 has no such file" in line


def test_a_hub_model_exported_to_an_index_is_fetched_by_plain_http(repos, tmp_path, monkeypatch):
    model = add("hf://acme/resnet-18")
    zoo.export_index([model.name], tmp_path / "team.json")
    entry = json.loads((tmp_path / "team.json").read_text())["models"][0]
    assert entry["meta"]["upstream"] == f"hf://acme/resnet-18@{model.revision}/onnx/model.onnx" and "hub" not in entry["meta"]
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "other.db"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "other-cache"))
    zoo.add_source("team", str(tmp_path / "team.json"))
    (fetched,) = zoo.fetch(model.name, quiet=True)  # resolve, then the redirect to the second host
    assert fetched.sha256 == model.artifacts[0].checksum.split(":")[1]
    assert open_catalog().get(model.name).revision == model.revision


def test_another_hub_is_one_more_module(fault_server, monkeypatch):
    from helpers import other_hub

    import zoo.hubs

    body = _onnx(6.0)
    monkeypatch.setitem(zoo.hubs.SCHEMES, "kg", "helpers.other_hub")
    monkeypatch.setattr(other_hub, "MODELS", {"acme/net": {
        "version": "3", "downloads": 10, "files": {"net.onnx": fault_server.url("/kg/net.onnx")},
        "bodies": {"net.onnx": body}}})
    fault_server.add("/kg/net.onnx", body)
    runner = CliRunner()
    out = runner.invoke(cli, ["add", "kg://acme/net"])
    assert out.exit_code == 0, out.output
    assert [m.name for m in search("net", scheme="kg")] == ["acme--net.kg"]
    assert runner.invoke(cli, ["fetch", "acme--net.kg"]).exit_code == 0
    model = open_catalog().get("acme--net.kg")
    assert model.is_local and model.revision == "v3" and model.source == "kg"
    assert fault_server.routes["/kg/net.onnx"].requests[0].headers["X-Hub"] == "kg"
    fault_server.add("/kg/net4.onnx", _onnx(7.0))  # a new version with other bytes: a sync follows it
    other_hub.MODELS["acme/net"].update(version="4", files={"net.onnx": fault_server.url("/kg/net4.onnx")},
                                        bodies={"net.onnx": _onnx(7.0)})
    zoo.sync_sources("kg")
    assert [r.revision for r in open_catalog().revisions("acme--net.kg")] == ["v3", "v4"]
    x = np.ones((1, 4), np.float32)
    assert np.allclose(zoo.load_extractor("acme--net.kg", layer="fc")(x), 28.0)
    assert np.allclose(zoo.load_extractor("acme--net.kg@v3", layer="fc")(x), 24.0)


def test_a_hub_source_with_an_author_narrows_a_search_started_before_the_catalog_opened(repos):
    runner = CliRunner()
    assert runner.invoke(cli, ["source", "add", "hf", "--author", "other", "--no-sync"]).exit_code == 0
    before = repos.hits("/api/models")
    out = runner.invoke(cli, ["search", "resnet", "--hub", "--library", "transformers", "--json"])
    assert out.exit_code == 0, out.output
    assert [m["name"] for m in json.loads(out.stdout)] == ["other--resnet-50-torch"]
    # asked before the catalog said "--author other", then again with it
    assert repos.hits("/api/models") - before == 2


def test_a_locked_hub_model_is_fetched_exactly_in_a_fresh_catalog(repos, tmp_path, monkeypatch):
    from zoo.lockfile import fetch_locked, lock

    model = add("hf://acme/resnet-18")
    lock_file = tmp_path / "zoo.lock"
    lock([model.name], output=lock_file)
    repos.publish(repos.repos["acme/resnet-18"], {"onnx/model.onnx": _onnx(7.0)})  # main moved on
    monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "other.db"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "other-cache"))
    fetch_locked(lock_file=lock_file, quiet=True)
    fetched = open_catalog().get(model.name)
    assert fetched.revision == model.revision and fetched.artifacts[0].sha256 == model.artifacts[0].checksum[7:]


# ---- `zoo search --hub` as a user runs it: a fresh process, the search in a forked child --------

# A fresh single-threaded process (the tests' own process runs the loopback Hub's threads, so a
# search here takes zoo.hubs._early's thread path): `zoo ARGS`, then what the parent imported and
# whether a child process is left.
_FRESH = """
import json, os, sys
{before}
from zoo.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
try:
    left = os.waitpid(-1, os.WNOHANG) is not None
except ChildProcessError:
    left = False
print("\\n" + json.dumps({{"code": code, "hub_imported": sys.modules.get("huggingface_hub") is not None,
                          "child_left": left}}))
"""


forked = pytest.mark.skipif(sys.platform != "linux", reason="zoo forks the search on Linux only")


def _fresh_zoo(*args: str, before: str = "") -> tuple[dict, str, str]:
    import subprocess

    done = subprocess.run([sys.executable, "-c", _FRESH.format(before=before), *args], capture_output=True,
                          text=True, timeout=120)
    *out, last = done.stdout.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(out).strip(), done.stderr


@forked
def test_a_fresh_search_asks_the_hub_from_a_child_and_never_imports_its_client(repos, zoo_env):
    facts, out, err = _fresh_zoo("search", "resnet", "--hub", "--json")
    assert facts == {"code": 0, "hub_imported": False, "child_left": False}, err
    # the catalog was closed before the shutdown (that skips the last garbage collections): SQLite's
    # log was checkpointed and removed
    assert (zoo_env / "catalog.db").exists() and not (zoo_env / "catalog.db-wal").exists()
    # the models came through the pipe as they are: what a search in this process finds and stores
    assert json.loads(out) == [m.to_dict() for m in search("resnet")]
    assert repos.hits("/api/models") == 2 * len(("onnx", "keras", "tflite", "tf"))
    assert open_catalog().get("acme--resnet-18").meta["hub"]["downloads"] == 5000


@forked
@pytest.mark.parametrize("case", ["rate limit", "no client", "catalog", "unexpected", "only in the child",
                                  "child killed"])
def test_what_goes_wrong_in_the_child_reaches_the_user_as_one_line(repos, monkeypatch, tmp_path, case):
    before = ""
    if case == "rate limit":  # a HubError, with its status, crosses the pipe
        repos.fail("/api/models", status=429, retry_after="3600", times=4)
        said = ("error: searching the Hub for resnet: the Hugging Face Hub is limiting requests (HTTP 429) and asks "
                "to wait 3600 s; try again then (logged-in users, HF_TOKEN, get higher limits)")
    elif case == "no client":  # so does a MissingDependencyError
        before = "sys.modules['huggingface_hub'] = None  # as if it were not installed"
        said = "error: huggingface_hub is needed for this and is not installed"
    elif case == "catalog":  # the parent fails before it reads the answer: the child is stopped and reaped
        monkeypatch.setenv("ZOO_CATALOG", str(tmp_path / "no-such-folder" / "catalog.db"))
        said = f"error: catalog {tmp_path / 'no-such-folder' / 'catalog.db'}: its folder"
    else:  # what cannot cross (an error zoo did not foresee, a dead child): the parent searches again itself
        only_child = case != "unexpected"
        fail = "os.kill(os.getpid(), 9)" if case == "child killed" else "raise ValueError('an answer nobody expected')"
        before = ("import os, zoo.hubs.huggingface as hf\n"
                  "parent, search = os.getpid(), hf.search\n"
                  "def failing(*args, **kwargs):\n"
                  f"    if {only_child} and os.getpid() == parent:\n"
                  "        return search(*args, **kwargs)\n"
                  f"    {fail}\n"
                  "hf.search = failing")
        said = None if only_child else "internal error: ValueError: an answer nobody expected; the traceback is in"
    facts, out, err = _fresh_zoo("search", "resnet", "--hub", before=before)
    if said is None:
        assert facts == {"code": 0, "hub_imported": True, "child_left": False}, err
        assert out.splitlines()[1].split()[0] == "acme--resnet-18"
        return
    assert facts["code"] == 1 and not facts["child_left"]
    (line,) = err.strip().splitlines()
    assert line.startswith(said), line


@forked
def test_ctrl_c_while_the_child_asks_stops_both(repos):
    import signal
    import subprocess

    from helpers.hub_server import wait_for

    repos.latency = 5.0  # the child waits on the Hub
    run = subprocess.Popen([sys.executable, "-c", _FRESH.format(before=""), "search", "resnet", "--hub"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: repos.hits("/api/models") > 0)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    facts = json.loads(out.rstrip("\n").split("\n")[-1])
    assert facts == {"code": 130, "hub_imported": False, "child_left": False}, err
    assert err.strip() == "interrupted"
