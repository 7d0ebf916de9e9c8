"""`zoo.convert` and `zoo convert`: dispatch, storage in the catalog and cache, reuse, refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.convert import local_model
from helpers.zoo_nets import caffe_net, onnx_light_models
from zoo.errors import ConversionError, ModelFormatError, UnknownModelError, VerificationError
from zoo.records import Artifact, Model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cat(zoo_env):
    from zoo.catalog import open_catalog

    return open_catalog(zoo_env / "catalog.db")


def _squeezenet(cat, tmp_path, name="squeeze.local"):
    cat.add_model(local_model(name, "onnx", onnx_light_models() / "light_squeezenet.onnx",
                              copy_to=tmp_path / "src"))
    return name


def test_onnx_model_is_stored_registered_and_reused(cat, tmp_path, zoo_env):
    import zoo

    name = _squeezenet(cat, tmp_path)
    artifact = zoo.convert(name, catalog=cat)
    expected = zoo_env / "cache" / "onnx" / name / f"{name}.onnx"
    assert artifact.path == str(expected) and expected.is_file()
    assert artifact.meta["reused"] is False
    stored = cat.get(name).artifact("onnx")
    assert stored.path == str(expected) and stored.sha256 and stored.size == expected.stat().st_size
    report = stored.meta["report"]
    assert report["verified"] is True and report["source_format"] == "onnx"
    assert stored.meta["layout"] == "NCHW"
    source = cat.get(name).artifact("model")
    assert stored.meta["source_sha256"] == {"model": source.sha256}
    import onnx

    from converters.onnx_model import graph_inputs

    assert graph_inputs(onnx.load(expected))[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(expected.parent.glob("*.part"))  # written atomically

    again = zoo.convert(name, catalog=cat)
    assert again.meta["reused"] is True and again.path == artifact.path
    # A new opset is a new conversion; the same options again are reused.
    upgraded = zoo.convert(name, opset=13, catalog=cat)
    assert upgraded.meta["reused"] is False and upgraded.meta["report"]["opset"] == 13
    assert zoo.convert(name, opset=13, catalog=cat).meta["reused"] is True
    assert len([a for a in cat.get(name).artifacts if a.role == "onnx"]) == 1


def test_changed_source_or_deleted_output_is_converted_again(cat, tmp_path):
    import zoo

    name = _squeezenet(cat, tmp_path)
    first = zoo.convert(name, catalog=cat)
    source = Path(cat.get(name).artifact("model").path)
    # Same bytes, new mtime: re-hashed, found unchanged, reused.
    os.utime(source, ns=(1, 1))
    assert zoo.convert(name, catalog=cat).meta["reused"] is True
    # Different bytes (another real model under the same name): converted again.
    source.write_bytes((onnx_light_models() / "light_shufflenet.onnx").read_bytes())
    second = zoo.convert(name, catalog=cat)
    assert second.meta["reused"] is False and second.sha256 != first.sha256
    Path(second.path).unlink()
    assert zoo.convert(name, catalog=cat).meta["reused"] is False


@pytest.mark.slow
def test_second_convert_does_not_import_tensorflow(cat, tf_models, zoo_env):
    """The reuse check happens before any heavy import: a fresh process stays TF-free."""
    import zoo

    cat.add_model(local_model("tiny.keras", "keras", tf_models["keras"], fmt="keras"))
    first = zoo.convert("tiny.keras", catalog=cat)
    assert first.meta["report"]["verified"] is True and first.meta["layout"] == "NHWC"
    code = textwrap.dedent(f"""
        import sys, time, zoo
        start = time.perf_counter()
        artifact = zoo.convert("tiny.keras", catalog={str(zoo_env / 'catalog.db')!r})
        print(artifact.meta["reused"], "tensorflow" in sys.modules, "onnxruntime" in sys.modules,
              time.perf_counter() - start)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ}, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    reused, tf_loaded, ort_loaded, _seconds = out.stdout.split()
    assert (reused, tf_loaded, ort_loaded) == ("True", "False", "False")


@pytest.mark.slow
def test_tensorflow_formats_through_the_catalog(cat, tf_models, tmp_path):
    import shutil

    import zoo

    unpacked = tmp_path / "mobilenet_v1_1.0_224"  # an unpacked archive, as `zoo fetch` leaves it
    unpacked.mkdir()
    shutil.copy(tf_models["tflite"], unpacked / "mobilenet_v1_1.0_224.tflite")
    (unpacked / "labels.txt").write_text("a\nb\nc\n")

    entries = [
        local_model("sm.custom", "tensorflow", tf_models["saved_model"], fmt="saved_model",
                    meta={"signature": "embed"}),
        local_model("frozen.local", "tensorflow", tf_models["frozen"], fmt="frozen_graph",
                    meta={"inputs": ["input"], "outputs": ["probabilities"]}),
        local_model("lite.local", "tflite", tf_models["tflite"], fmt="tflite"),
        Model(name="lite.archive", framework="tflite", format="tflite", artifacts=[Artifact(
            role="archive", filename="mobilenet_v1_1.0_224.tgz", extract="tar", path=str(unpacked),
            meta={"members": {"model": "mobilenet_v1_1.0_224.tflite"}})]),
        local_model("mobilenet.weights", "keras", tf_models["application_legacy"], role="weights",
                    fmt="h5_weights", meta={"keras_application": "MobileNet",
                                            **tf_models["application_options"]}),
    ]
    for model in entries:
        cat.add_model(model)
        artifact = zoo.convert(model.name, catalog=cat, nchw=model.name == "lite.local")
        report = artifact.meta["report"]
        assert report["verified"] is True, (model.name, report)
        assert Path(artifact.path).is_file()
    assert cat.get("lite.local").artifact("onnx").meta["layout"] == "NCHW"
    archived = cat.get("lite.archive").artifact("onnx").meta
    assert next(iter(archived["report"]["source_files"])).endswith("mobilenet_v1_1.0_224.tflite")
    assert set(archived["source_sha256"]) == {"model"}
    assert cat.get("frozen.local").artifact("onnx").meta["report"]["outputs"][0]["name"] == "probabilities"
    # The Keras 2 weights file was really loaded: the output is the one computed before saving.
    import numpy as np

    from converters.onnx_model import run

    folder = tf_models["application"].parent
    import onnx

    converted = onnx.load(cat.get("mobilenet.weights").artifact("onnx").path)
    (got,) = run(converted, {converted.graph.input[0].name: np.load(folder / "mobilenet_probe_in.npy")})[1]
    np.testing.assert_allclose(got, np.load(folder / "mobilenet_probe_out.npy"), atol=1e-5)


@pytest.mark.slow
def test_saved_model_without_the_signature_lists_the_ones_it_has(cat, tf_models):
    import zoo

    cat.add_model(local_model("sm.default", "tensorflow", tf_models["saved_model"], fmt="saved_model"))
    with pytest.raises(ModelFormatError, match="no signature 'serving_default'.*it has embed"):
        zoo.convert("sm.default", catalog=cat)


def test_caffe_models_share_the_path(cat, tmp_path):
    pytest.importorskip("cv2")
    import zoo
    from converters import caffe

    prototxt = caffe_net("lenet")
    weights = tmp_path / "lenet.caffemodel"
    caffe.make_random_caffemodel(prototxt, weights, seed=3)
    cat.add_model(Model(name="lenet.local", framework="caffe", source="local", artifacts=[
        Artifact(role="graph", filename="deploy.prototxt", path=str(prototxt)),
        Artifact(role="weights", filename="lenet.caffemodel", path=str(weights)),
    ]))
    artifact = zoo.convert("lenet.local", catalog=cat)
    report = artifact.meta["report"]
    assert report["source_format"] == "caffe" and report["verified"] is True
    assert report["reference"].startswith("opencv")
    assert set(artifact.meta["source_sha256"]) == {"graph", "weights"}
    assert zoo.convert("lenet.local", catalog=cat).meta["reused"] is True


def _nondeterministic_torchscript(path: Path) -> Path:
    """A real model whose outputs cannot match any other engine: it adds fresh noise each run."""
    import torch

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x * 2 + torch.rand_like(x)

    torch.jit.script(Noisy()).save(str(path))
    return path


@pytest.mark.slow
def test_outputs_beyond_tolerance_are_refused_unless_forced(cat, tmp_path):
    import zoo

    path = _nondeterministic_torchscript(tmp_path / "noisy.pt")
    cat.add_model(local_model("noisy", "pytorch", path, input=__import__("zoo").InputSpec(shape=[None, 8])))
    with pytest.raises(VerificationError, match=r"output: max abs diff .* x scale .*--force"):
        zoo.convert("noisy", catalog=cat)
    assert cat.get("noisy").artifact("onnx") is None
    kept = zoo.convert("noisy", force=True, catalog=cat)
    assert kept.meta["verified"] is False and kept.meta["report"]["verified"] is False
    assert any("unverified" in n for n in kept.meta["report"]["notes"])
    # Kept unverified: up to date afterwards, with or without --force (converting again would only
    # fail the same check again); it stays marked unverified.
    assert zoo.convert("noisy", force=True, catalog=cat).meta["reused"] is True
    again = zoo.convert("noisy", catalog=cat)
    assert again.meta["reused"] is True and again.meta["verified"] is False


def test_refusals_name_the_problem(cat, tmp_path, torch_models):
    import zoo

    cat.add_model(local_model("weights.only", "pytorch", torch_models["state_dict"]))
    with pytest.raises(ModelFormatError, match="is a state_dict"):
        zoo.convert("weights.only", catalog=cat)
    cat.add_model(Model(name="no.files", framework="onnx", source="local",
                        artifacts=[Artifact(role="labels", filename="l.txt", path=str(tmp_path / "l.txt"))]))
    (tmp_path / "l.txt").write_text("cat\n")
    with pytest.raises(ModelFormatError, match="has no local model file to convert"):
        zoo.convert("no.files", catalog=cat)
    with pytest.raises(UnknownModelError):
        zoo.convert("squeezenet.nope", catalog=cat)


def test_fetches_a_model_that_is_not_local(cat, fault_server):
    import zoo

    body = (onnx_light_models() / "light_squeezenet.onnx").read_bytes()
    fault_server.add("/squeezenet.onnx", body)
    cat.add_model(Model(name="remote.squeeze", framework="onnx", artifacts=[
        Artifact(role="model", filename="squeezenet.onnx", urls=[fault_server.url("/squeezenet.onnx")],
                 size=len(body))]))
    artifact = zoo.convert("remote.squeeze", catalog=cat)
    assert artifact.meta["report"]["verified"] is True
    fetched = Path(cat.get("remote.squeeze").artifact("model").path)
    assert fetched.is_file()
    # A fetched file deleted from the cache is fetched again; same bytes, so the ONNX is reused.
    fetched.unlink()
    again = zoo.convert("remote.squeeze", catalog=cat)
    assert fetched.is_file() and again.meta["reused"] is True


def test_cli_json_text_and_errors(cat, tmp_path, zoo_env):
    from zoo.cli import cli

    name = _squeezenet(cat, tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", name, "--json", "--catalog", str(zoo_env / "catalog.db")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["role"] == "onnx" and data["meta"]["report"]["verified"] is True
    assert data["meta"]["reused"] is False
    result = runner.invoke(cli, ["convert", name, "-q"])
    assert result.exit_code == 0 and "up to date" in result.stdout and "verified" in result.stdout
    result = runner.invoke(cli, ["convert", "nope.model"])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["convert", name, "--opset", "3"])
    assert result.exit_code == 2  # click's range check names the valid range
    assert "--help" in runner.invoke(cli, ["convert", "-h"]).output


@pytest.mark.slow
def test_cli_subprocess(cat, tmp_path, zoo_env, zoo_cmd, torch_models):
    cat.add_model(local_model("net.ts", "pytorch", torch_models["script"],
                              input=__import__("zoo").InputSpec(shape=[None, 3, 32, 32])))
    out = subprocess.run([*zoo_cmd, "convert", "net.ts", "--json", "--opset", "17"], capture_output=True,
                         text=True, env={**os.environ}, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["meta"]["report"]["verified"] is True and data["meta"]["layout"] == "NCHW"
    assert Path(data["path"]).is_file()
    import onnx

    dims = onnx.load(data["path"]).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 32, 32]
    bad = subprocess.run([*zoo_cmd, "convert", "missing.model"], capture_output=True, text=True,
                         env={**os.environ}, timeout=120, check=False)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1 and last.startswith("error: model 'missing.model'") and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_nan_outputs_beyond_tolerance_say_so(cat, tmp_path):
    """NaN differences used to give 'beyond tolerance ()': the message names the NaN values."""
    import torch

    import zoo

    class NaNs(torch.nn.Module):
        def forward(self, x):  # log of a negative number is NaN, at random places each run
            return torch.log(torch.rand_like(x) - 0.5) + x

    path = tmp_path / "nans.pt"
    torch.jit.script(NaNs()).save(str(path))
    cat.add_model(local_model("nans", "pytorch", path, input=zoo.InputSpec(shape=[None, 64])))
    with pytest.raises(VerificationError) as caught:
        zoo.convert("nans", catalog=cat)
    message = str(caught.value)
    assert "()" not in message and "NaN values" in message and "the converted output has" in message, message


# ---- TorchScript input specs, `zoo convert PATH` (issue 12) ------------------------------------


def test_inputs_and_args_given_once_are_recorded(cat, torch_models):
    import zoo

    cat.add_model(local_model("vad", "pytorch", torch_models["speech"], fmt="torchscript"))
    with pytest.raises(ConversionError, match=r"--input x=SHAPE --arg sr=VALUE"):
        zoo.convert("vad", catalog=cat)
    artifact = zoo.convert("vad", inputs={"x": "Nx512"}, args={"sr": 16000}, catalog=cat)
    assert artifact.meta["report"]["verified"] is True and artifact.meta["reused"] is False
    model = cat.get("vad")
    assert model.meta["input_specs"] == [{"name": "x", "shape": [None, 512], "dtype": "float32"}]
    assert model.meta["args"] == {"sr": 16000}
    assert (model.input.name, model.input.shape) == ("x", [None, 512])
    assert zoo.convert("vad", catalog=cat).meta["reused"] is True  # nothing to repeat
    # Other values are another conversion, and become the recorded ones.
    again = zoo.convert("vad", args=["sr=8000"], catalog=cat)
    assert again.meta["reused"] is False and "sr=8000" in " ".join(again.meta["report"]["notes"])
    assert cat.get("vad").meta["args"] == {"sr": 8000}


def test_cli_add_records_inputs_so_convert_needs_nothing(cat, torch_models, zoo_env):
    from zoo.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["add", str(torch_models["text"]), "--name", "encoder",
                                 "--input", "input_ids=Nx16:int64", "--input", "attention_mask=Nx16:int64"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", "encoder", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "encoder" and data["meta"]["report"]["verified"] is True
    import onnx

    inputs = onnx.load(data["path"]).graph.input
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    # --input on a model whose file describes its inputs is refused, not ignored.
    onnx_file = onnx_light_models() / "light_squeezenet.onnx"
    result = runner.invoke(cli, ["add", str(onnx_file), "--input", "x=1x3"])
    assert result.exit_code == 1 and "TorchScript" in result.output and "Traceback" not in result.output
    name = _squeezenet(cat, Path(data["path"]).parent / "src")
    result = runner.invoke(cli, ["convert", name, "--arg", "sr=1"])
    assert result.exit_code == 1 and "leave them out" in result.output


def test_convert_a_path_adds_it_first(cat, torch_models, tmp_path, zoo_env):
    import shutil

    import zoo
    from zoo.cli import cli

    path = tmp_path / "exports" / "vad.pt"
    path.parent.mkdir()
    shutil.copy(torch_models["speech"], path)
    runner = CliRunner()
    # A conversion that fails leaves the catalog as it was.
    result = runner.invoke(cli, ["convert", str(path)])
    assert result.exit_code == 1 and "--arg sr=VALUE" in result.output
    assert not cat.exists("vad")
    result = runner.invoke(cli, ["convert", str(path), "--input", "x=1x512", "--arg", "sr=16000"])
    assert result.exit_code == 0, result.output
    assert "added vad to the catalog" in result.stderr and result.stdout.startswith("vad: converted")
    model = cat.get("vad")
    assert model.source == "local" and model.artifact("model").path == str(path)
    assert model.artifact("onnx").meta["verified"] is True
    # The same path again is the same model (found by its path), already converted.
    assert zoo.convert(str(path), catalog=cat).meta["reused"] is True
    assert zoo.convert("vad", catalog=cat).meta["model"] == "vad"
    # Another file whose name is taken: say how to add it under another name.
    other = tmp_path / "vad.pt"
    shutil.copy(torch_models["text"], other)
    result = runner.invoke(cli, ["convert", str(other)])
    assert result.exit_code == 1 and "zoo add" in result.output and "--name NEW" in result.output
    with pytest.raises(UnknownModelError):
        zoo.convert(str(tmp_path / "missing.pt"), catalog=cat)
